"""Errors the controller reports to users, and what each HTTP status means.

Boundary: every error a user can cause is a ``BpfnetError`` carrying an HTTP
status; the API turns it into ``{"error": message}`` and the CLI prints the
message on one line. Anything else is a bug and is logged with its traceback
(HTTP 500).

One meaning per status code:

===  ===================  ==========================================================
400  InvalidArgument      the request itself is invalid (bad name, CIDR, field, type)
403  Forbidden            never allowed on this object (removing the default network,
                          as Docker answers for its predefined networks)
404  NotFound             a named object does not exist (network, endpoint, --netns,
                          --ndp-proxy-iface), or no route has this path
405  MethodNotAllowed     a route has this path, but not this method
408, 413, 415             the HTTP server's own answers: body too slow, too large, compressed
409  Conflict             conflicts with existing state: name, address, MAC, bridge or
                          namespace taken, subnet overlap, network still has endpoints
507  Exhausted            a capacity is used up: a pool's addresses, endpoint slots
                          (the datapath's MAX_ENDPOINTS), networks (its MAX_NETWORKS),
                          ports of a bridge (BR_MAX_PORTS), the disk holding the state
                          (StorageFull: nothing was changed)
503  StoreUnavailable     the cluster store (etcd) cannot be reached: the request needs it
                          and nothing was changed
500  (any other)          a bug (logged with its traceback), a removal that could not
                          finish (Incomplete: the endpoint stays 'removing'), or a
                          state database that became unusable (StateError)
===  ===================  ==========================================================
"""

from __future__ import annotations


class BpfnetError(Exception):
    """A user-facing error with a clear message."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(BpfnetError):
    status = 400


class Forbidden(BpfnetError):
    status = 403


class NotFound(BpfnetError):
    status = 404


class MethodNotAllowed(BpfnetError):
    status = 405


class Conflict(BpfnetError):
    status = 409


class Exhausted(BpfnetError):
    status = 507


class Incomplete(BpfnetError):
    """A removal could not remove every kernel object; the row stays in state
    'removing' and the next start (or removal) retries."""

    status = 500


class StoreUnavailable(BpfnetError):
    """The cluster store (etcd) cannot be reached; nothing was changed."""

    status = 503
