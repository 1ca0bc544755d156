"""The API's route table and the documents it answers with.

Boundary: a route is a pure function of (path parameters, raw request body)
returning (HTTP status, JSON-able document); it calls the services and never
sees sockets, headers or the HTTP library serving it (``api.server``). Bodies
are parsed by the route with the declared schema of its body
(``bpfnet.schemas``), straight from the raw bytes (depth-limited, strict);
path parameters arrive percent-decoded and are checked with the same name
rule. Errors are raised as ``BpfnetError`` (each carries its status); the
server turns them into ``{"error": ...}``.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from .. import __version__, schemas
from ..config import DaemonConfig, check_name
from ..endpoints import EndpointService
from ..errors import InvalidArgument, MethodNotAllowed, NotFound
from ..networks import NetworkService
from ..runtime import Runtime
from ..snapshot import SnapshotFn, stats_document

#: (path parameters, raw body or None) -> (HTTP status, JSON document or None for no content).
Handler = Callable[[dict[str, str], bytes | None], tuple[int, Any]]

#: The route label of requests no route matches (metrics keep a bounded label set).
UNMATCHED = "unmatched"


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # e.g. /v1/networks/{name}: also the route label of the request metrics
    handler: Handler
    regex: re.Pattern[str]


class Router:
    """(method, path template) -> handler; ``{name}`` in a template is one path segment."""

    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")
        self.routes.append(Route(method, template, handler, regex))

    def match(self, method: str, path: str) -> tuple[str, Handler | None, dict[str, str], bool]:
        """(template or UNMATCHED, handler or None, parameters, whether the path exists at all).

        ``path`` is the raw, still percent-encoded path without the query: it
        is split into segments first and each parameter decoded after, so an
        encoded ``/`` or ``?`` stays inside the name it belongs to.
        """
        path_known = False
        for route in self.routes:
            found = route.regex.match(path)
            if found:
                path_known = True
                if route.method == method:
                    params = {k: unquote(v) for k, v in found.groupdict().items()}
                    return route.template, route.handler, params, True
        return UNMATCHED, None, {}, path_known

    def allowed(self, path: str) -> list[str]:
        """The methods some route serves on PATH (the Allow header of a 405)."""
        return sorted({r.method for r in self.routes if r.regex.match(path.rstrip("/") or "/")})

    def dispatch(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, str]:
        """One request -> (status, document, route label); errors are raised as BpfnetError."""
        path = path.rstrip("/") or "/"
        route, handler, params, known = self.match(method, path)
        if handler is None:
            if known:
                raise MethodNotAllowed(f"{method} {path}: method not allowed")
            raise NotFound(f"{method} {path}: no such route")
        status, doc = handler(params, body)
        return status, doc, route


def install(router: Router, *, networks: NetworkService, endpoints: EndpointService,
            info: Callable[[], dict[str, Any]], snapshot: SnapshotFn,
            nodes: Callable[[], list[dict[str, Any]]] | None = None,
            remove_node: Callable[[str], None] | None = None) -> None:
    """Add every /v1 route to ``router``."""
    ok, created = HTTPStatus.OK, HTTPStatus.CREATED
    document = schemas.openapi()
    r = router
    r.add("GET", "/v1/info", lambda p, b: (ok, info()))
    r.add("GET", "/v1/stats", lambda p, b: (ok, stats_document(snapshot())))
    r.add("GET", "/v1/openapi.json", lambda p, b: (ok, document))
    r.add("GET", "/v1/nodes", lambda p, b: (ok, _nodes(nodes)))
    r.add("DELETE", "/v1/nodes/{name}", lambda p, b: _no_content(_clustered(remove_node), _name(p, "node")))
    r.add("GET", "/v1/networks", lambda p, b: (ok, networks.list_all()))
    r.add("POST", "/v1/networks", lambda p, b: (
        created, networks.create(schemas.parse_body(schemas.NetworkCreate, b).to_json())))
    r.add("GET", "/v1/networks/{name}", lambda p, b: (
        ok, networks.describe(networks.config(_name(p, "network"))[0])))
    r.add("DELETE", "/v1/networks/{name}", lambda p, b: _no_content(networks.remove, _name(p, "network")))
    r.add("GET", "/v1/endpoints", lambda p, b: (ok, endpoints.list_all()))
    r.add("POST", "/v1/endpoints", lambda p, b: (
        created, endpoints.add(schemas.parse_body(schemas.EndpointCreate, b).to_json())))
    r.add("GET", "/v1/endpoints/{name}", lambda p, b: (ok, endpoints.inspect(_name(p, "endpoint"))))
    r.add("DELETE", "/v1/endpoints/{name}", lambda p, b: _no_content(endpoints.remove, _name(p, "endpoint")))
    r.add("GET", "/v1/endpoints/{name}/check", lambda p, b: (ok, endpoints.check(_name(p, "endpoint"))))


def info_document(cfg: DaemonConfig, rt: Runtime, metrics_url: str | None,
                  warnings: list[str] | None = None) -> dict[str, Any]:
    """``GET /v1/info``: version, host, listeners, what the datapath runs, and security warnings."""
    u = platform.uname()
    return {
        "version": __version__,
        "kernel": u.release,
        "hostname": u.node,
        "host_netns": cfg.netns,
        "state_dir": cfg.state_dir,
        "listeners": [str(listener) for listener in cfg.listeners()],
        "metrics_url": metrics_url,
        "datapath": rt.datapath.info(),
        "default_bridge": cfg.bridge if cfg.has_default_network else None,
        "address_pools": [str(pool) for pool in rt.address_pools],
        "networks": len(rt.store.networks()),
        # where each subnet came from: "given", "bridge" (a bridge bpfnet did not make), "pool BASE",
        # "ula PREFIX"; null for networks stored before bpfnet recorded it
        "subnets": [{"network": row.name, "subnet4": row.config.get("subnet4"),
                     "subnet_source": row.config.get("subnet_source"), "subnet6": row.config.get("subnet6"),
                     "subnet6_source": row.config.get("subnet6_source")} for row in rt.store.networks()],
        "endpoints": len(rt.store.endpoints()),
        "warnings": list(warnings or []),
    }


NOT_CLUSTERED = ("this daemon is not part of a cluster (start it with --cluster-store etcd://HOST:PORT "
                 "--advertise-addr IP)")


def _nodes(nodes: Callable[[], list[dict[str, Any]]] | None) -> list[dict[str, Any]]:
    if nodes is None:
        raise InvalidArgument(NOT_CLUSTERED)
    return nodes()


def _clustered(action: Callable[[str], None] | None) -> Callable[[str], None]:
    if action is None:
        raise InvalidArgument(NOT_CLUSTERED)
    return action


def _no_content(action: Callable[[str], None], name: str) -> tuple[int, None]:
    action(name)
    return HTTPStatus.NO_CONTENT, None


def _name(params: dict[str, str], what: str) -> str:
    """The {name} of a path, checked with the rule names are created with (400 otherwise)."""
    return check_name(params["name"], f"{what} name")
