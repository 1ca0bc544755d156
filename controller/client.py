"""A small client for the daemon's API (what the CLI uses).

Boundary: HTTP over a unix socket or TCP, JSON in and out; API errors become
``ClientError`` with the daemon's one-line message. Names go into URLs only
through :func:`object_path`: checked as the daemon checks them, then
percent-encoded, so a name can never add a query (``a?force``) or a segment.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote

from .config import DEFAULT_SOCKET, check_name, parse_host
from .errors import BpfnetError


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


#: Collections of named objects in the API -> what the daemon calls their names in errors.
_COLLECTIONS = {"networks": "network name", "endpoints": "endpoint name"}


def object_path(collection: str, name: str) -> str:
    """``/v1/<collection>/<name>`` for one named object, e.g. ``object_path("endpoints", "web")``.

    The name is validated with the daemon's own rule (``config.check_name``)
    before anything is sent, then percent-encoded as one path segment.
    """
    try:
        check_name(name, _COLLECTIONS[collection])
    except BpfnetError as exc:
        raise ClientError(exc.message, 400) from None
    return f"/v1/{collection}/{quote(name, safe='')}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class Client:
    def __init__(self, host: str = DEFAULT_SOCKET, timeout: float = 60.0) -> None:
        self.host = host
        try:
            self.listener = parse_host(host, allow_public=True)
        except BpfnetError as exc:
            raise ClientError(exc.message) from None
        self.timeout = timeout

    def _conn(self) -> http.client.HTTPConnection:
        if self.listener.kind == "unix":
            return _UnixConnection(self.listener.path, self.timeout)
        return http.client.HTTPConnection(self.listener.host, self.listener.port, timeout=self.timeout)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn = self._conn()
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError):
            raise ClientError(f"cannot connect to the bpfnet daemon at {self.host}: is it running?") from None
        except PermissionError:
            raise ClientError(f"permission denied on {self.host}: run as root or in the socket's group") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"talking to the daemon at {self.host} failed: {exc}") from None
        finally:
            conn.close()
        payload = json.loads(raw) if raw else None
        if resp.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            raise ClientError(message or f"HTTP {resp.status}", resp.status)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)
