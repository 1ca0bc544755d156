"""The ``/metrics`` HTTP server: binding its socket, loopback policy, the WSGI app.

Boundary: serves any prometheus_client registry (the body is made by
:mod:`bpfnet.metrics.exposition`); knows nothing of bpfnet's series. It listens
on loopback unless explicitly allowed otherwise (``--allow-public-metrics``):
the metrics name every endpoint and network. Addresses are parsed by
``config.parse_address``, like the API's ``-H tcp://`` listeners.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from .. import config
from ..errors import InvalidArgument
from . import exposition

log = logging.getLogger(__name__)

#: Default TCP port of the metrics endpoint. Not allocated to any exporter on
#: https://github.com/prometheus/prometheus/wiki/Default-port-allocations at the
#: time of writing (9100 node, 9090 prometheus, 9093 alertmanager are taken).
DEFAULT_PORT = 9523
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"


def parse_address(addr: str) -> tuple[str, int]:
    """Parse ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) with
    ``config.parse_address``, the parser of every TCP address bpfnet takes.

    Raises ValueError on anything else. Port 0 means "any free port".
    """
    try:
        host, port = config.parse_address(addr, "bad metrics address")
    except InvalidArgument as exc:
        raise ValueError(exc.message) from None
    return host or "0.0.0.0", port


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """First address of ``host`` and its family (hostnames are resolved)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise ValueError(f"cannot resolve metrics host {host!r}") from None
        fam, _, _, _, sockaddr = infos[0]
        return fam, str(sockaddr[0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def _check_loopback(host: str, allow_public: bool, what: str) -> None:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.is_loopback:
        return
    if not allow_public:
        raise ValueError(
            f"refusing to serve metrics on non-loopback address {what}; "
            "pass --allow-public-metrics to expose them"
        )
    log.warning(
        "serving metrics on non-loopback address %s: anyone who can reach it can read them", what
    )


def bind_metrics_socket(
    addr: str = DEFAULT_ADDRESS, *, allow_public: bool = False
) -> socket.socket:
    """Create, bind and listen on a TCP socket for :func:`serve_metrics`.

    Useful when the socket must be made before the daemon enters another
    network namespace. Refuses non-loopback addresses unless ``allow_public``.
    """
    host, port = parse_address(addr)
    family, ip = _resolve(host, port)
    _check_loopback(ip, allow_public, addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and ip == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((ip, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """A running ``/metrics`` server; :meth:`close` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        name = self._server.socket.getsockname()
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _app(registry: Collector) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            # GET is rendered here; the rest (OPTIONS, 405, ?name[]= filtering)
            # is rare and left to prometheus_client's app.
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            if environ.get("REQUEST_METHOD") == "GET" and "name[]" not in query:
                headers, body = exposition.render(
                    registry, environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
                )
                start_response("200 OK", headers)
                return [body]
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b'<html><body><a href="/metrics">bpfnet metrics</a></body></html>\n']
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


def serve_metrics(
    addr: str | None,
    registry: Collector,
    *,
    allow_public: bool = False,
    sock: socket.socket | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``http://addr/metrics`` from a daemon thread.

    Text format 0.0.4 by default, OpenMetrics when the Accept header asks for
    it, gzip when accepted. ``addr`` is ``host:port`` / ``[v6]:port``
    (default port :data:`DEFAULT_PORT` if ``None``); non-loopback addresses
    raise ValueError unless ``allow_public`` (then a warning is logged).
    Alternatively pass an already bound (and possibly listening) ``sock``
    with ``addr=None``; the server takes ownership of it.
    """
    if sock is not None:
        if addr is not None:
            raise ValueError("pass either addr or sock, not both")
        bound = sock.getsockname()
        _check_loopback(str(bound[0]), allow_public, f"{bound[0]}:{bound[1]}")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(64)
    else:
        sock = bind_metrics_socket(addr or DEFAULT_ADDRESS, allow_public=allow_public)

    family = sock.family

    class _Server(ThreadingWSGIServer):
        address_family = family

    try:
        server = _Server(sock.getsockname()[:2], _QuietHandler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        host, port = sock.getsockname()[:2]
        server.server_name = str(host)  # no reverse DNS lookup
        server.server_port = port
        server.setup_environ()
        server.set_app(_app(registry))
    except BaseException:
        sock.close()
        raise
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="bpfnet-metrics",
        daemon=True,
    )
    thread.start()
    log.info("serving metrics on %s", sock.getsockname()[:2])
    return MetricsServer(server, thread)
