"""HTTP framing of the API on every -H listener (the standard library's http.server).

Boundary: reading requests, writing JSON answers and mapping errors to one-line
``{"error": ...}`` documents; which route answers and what it does is the
:class:`~bpfnet.api.routes.Router`'s business, so this module can be replaced
by another HTTP server without touching a route. Listener sockets are bound
when the server objects are built, which the daemon does *before* it enters the
namespace it manages, so a tcp://127.0.0.1 listener lives on the loopback of
the namespace the daemon was started in.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..config import Listener
from ..errors import BpfnetError
from .routes import Router

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20


def make_handler(router: Router, on_request: Callable[[str, str, int], None]) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "bpfnet"
        protocol_version = "HTTP/1.1"

        def address_string(self) -> str:  # unix sockets have no (host, port)
            return self.client_address[0] if isinstance(self.client_address, tuple) else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _dispatch(self, method: str) -> None:
            # Still percent-encoded: the router splits segments, then decodes them.
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            route, handler, params, known = router.match(method, path)
            status: int
            body: Any
            try:
                if handler is None:
                    status = HTTPStatus.METHOD_NOT_ALLOWED if known else HTTPStatus.NOT_FOUND
                    body = {"error": f"{method} {path}: " + ("method not allowed" if known else "no such route")}
                else:
                    status, body = handler(params, self._read_json())
            except BpfnetError as exc:
                status, body = exc.status, {"error": exc.message}
            except Exception as exc:
                log.exception("%s %s failed", method, path)
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {exc}"}
            on_request(route, method, int(status))
            self._send(int(status), body)

        def _read_json(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise BpfnetError(f"request body too large ({length} bytes)")
            if not length:
                return None
            raw = self.rfile.read(length)
            try:
                return json.loads(raw)
            except ValueError:
                raise BpfnetError("request body is not valid JSON") from None

        def _send(self, status: int, body: Any) -> None:
            data = b"" if status == HTTPStatus.NO_CONTENT else (json.dumps(body) + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

    return RequestHandler


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def server_bind(self) -> None:
        path = Path(str(self.server_address))
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale socket of a dead daemon
            else:
                raise OSError(errno.EADDRINUSE, f"another daemon is listening on {path}")
            finally:
                probe.close()
        super().server_bind()
        os.chmod(path, 0o660)


class DualStackServer(ThreadingHTTPServer):
    daemon_threads = True


class V6Server(DualStackServer):
    address_family = socket.AF_INET6


class ApiServers:
    """Every listener, bound at construction; serve() starts one thread per listener."""

    def __init__(self, listeners: list[Listener], router: Router,
                 on_request: Callable[[str, str, int], None]) -> None:
        handler = make_handler(router, on_request)
        self.servers: list[socketserver.BaseServer] = []
        self.listeners = listeners
        try:
            for listener in listeners:
                if listener.kind == "unix":
                    self.servers.append(UnixHTTPServer(listener.path, handler))
                else:
                    server_cls = V6Server if ":" in listener.host else DualStackServer
                    self.servers.append(server_cls((listener.host, listener.port), handler))
        except OSError as exc:
            self.close()
            raise BpfnetError(f"cannot listen on {listener}: {exc.strerror or exc}") from None
        self.threads: list[threading.Thread] = []

    def serve(self) -> None:
        for server, listener in zip(self.servers, self.listeners):
            t = threading.Thread(target=server.serve_forever, name=f"api {listener}", daemon=True)
            t.start()
            self.threads.append(t)
            log.info("API listening on %s", listener)

    def close(self) -> None:
        for server in self.servers:
            if self.threads:
                server.shutdown()
            server.server_close()
            if isinstance(server, UnixHTTPServer):  # only sockets this daemon bound
                Path(str(server.server_address)).unlink(missing_ok=True)
        self.servers = []
