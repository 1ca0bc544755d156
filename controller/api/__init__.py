"""The daemon's JSON-over-HTTP API.

Boundary: ``routes`` is the route table, pure functions of (path parameters,
JSON body) -> (status, JSON document) over the services, with no knowledge of
HTTP; ``server`` is the HTTP framing on every -H listener, which looks routes
up in a :class:`routes.Router` and knows nothing of what they do. Replacing
the server (another HTTP library, TLS) leaves the routes untouched.
"""
