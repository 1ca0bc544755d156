"""A small client for the daemon's API (what the CLI uses).

Boundary: HTTP over a unix socket or TCP (optionally TLS, with the docker
CLI's options), JSON in and out; API errors become ``ClientError`` with the
daemon's one-line message. Every failure to talk to the daemon is a
``ClientError`` too, never a traceback. Names go into URLs only through
:func:`object_path`: checked as the daemon checks them, then percent-encoded,
so a name can never add a query (``a?force``) or a segment.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from .config import DEFAULT_SOCKET, check_name, parse_host
from .errors import BpfnetError
from .tls import client_cert_files, client_context

HOST_ENV = "BPFNET_HOST"
CERT_PATH_ENV = "BPFNET_CERT_PATH"  # as DOCKER_CERT_PATH: a directory with ca.pem, cert.pem, key.pem
TLS_VERIFY_ENV = "BPFNET_TLS_VERIFY"  # as DOCKER_TLS_VERIFY: any non-empty value turns --tlsverify on


class ClientError(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


#: Collections of named objects in the API -> what the daemon calls their names in errors.
_COLLECTIONS = {"networks": "network name", "endpoints": "endpoint name", "nodes": "node name"}


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


def connect_unix(path: str, timeout: float) -> socket.socket:
    """Connect within timeout. A socket with a timeout connects non-blocking, and a
    Unix socket whose listen backlog is momentarily full then fails at once with
    EAGAIN (issue 10 #8): retry that with a short backoff until the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() + delay >= deadline:
                raise TimeoutError(f"the daemon's socket {path} stayed busy for {timeout:g} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except BaseException:
            sock.close()
            raise


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = connect_unix(self.unix_path, self.timeout or 60.0)


class Client:
    """``tls`` encrypts TCP connections (https); ``tlsverify`` also checks the daemon's
    certificate against ``cacert``. ``cert``/``key`` are sent when the daemon asks
    (its --tlsverify). Unix sockets never use TLS."""

    def __init__(self, host: str = DEFAULT_SOCKET, timeout: float = 60.0, *, tls: bool = False,
                 tlsverify: bool = False, cacert: str | None = None, cert: str | None = None,
                 key: str | None = None) -> None:
        self.host = host
        try:
            self.listener = parse_host(host, allow_public=True)
        except BpfnetError as exc:
            raise ClientError(exc.message) from None
        self.timeout = timeout
        self.tls = tls or tlsverify
        self.ssl: ssl.SSLContext | None = None
        if self.tls and self.listener.kind == "tcp":
            try:
                self.ssl = client_context(verify=tlsverify, ca=cacert, cert=cert, key=key)
            except BpfnetError as exc:
                raise ClientError(exc.message) from None

    def _conn(self) -> http.client.HTTPConnection:
        if self.listener.kind == "unix":
            return _UnixConnection(self.listener.path, self.timeout)
        if self.ssl is not None:
            return http.client.HTTPSConnection(self.listener.host, self.listener.port,
                                               timeout=self.timeout, context=self.ssl)
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
        except ssl.SSLCertVerificationError as exc:
            raise ClientError(f"TLS: the daemon's certificate at {self.host} is not trusted: "
                              f"{exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            hint = "; is the daemon listening without TLS?" if exc.reason == "WRONG_VERSION_NUMBER" else ""
            raise ClientError(f"TLS with the daemon at {self.host} failed: {exc.reason or exc}{hint}") from None
        except (OSError, http.client.HTTPException) as exc:
            hint = ""
            if self.listener.kind == "tcp" and isinstance(
                    exc, (ConnectionResetError, http.client.RemoteDisconnected)):
                # Both show up only as a closed connection (TLS 1.3 refuses a client
                # certificate after the client has sent its request).
                hint = (" (if the daemon uses TLS, pass --tls or --tlsverify)" if self.ssl is None else
                        " (the daemon may have refused the client certificate: its --tlsverify needs "
                        "--tlscert and --tlskey signed by its --tlscacert)")
            raise ClientError(f"talking to the daemon at {self.host} failed: {exc}{hint}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(f"the daemon at {self.host} answered HTTP {resp.status} "
                              "with a body that is not JSON", resp.status) from None
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


def client_from_env_and_args(host: str | None = None, *, tls: bool = False, tlsverify: bool = False,
                             tlscacert: str | None = None, tlscert: str | None = None,
                             tlskey: str | None = None, timeout: float = 60.0,
                             env: Mapping[str, str] | None = None) -> Client:
    """The CLI's client, as the docker CLI resolves its own: flags first, then
    $BPFNET_HOST, $BPFNET_TLS_VERIFY (non-empty = --tlsverify) and $BPFNET_CERT_PATH
    (default ~/.bpfnet) for ca.pem, cert.pem and key.pem."""
    env = os.environ if env is None else env
    verify = tlsverify or bool(env.get(TLS_VERIFY_ENV))
    use_tls = tls or verify
    ca = cert = key = None
    if use_tls:
        ca, cert, key = client_cert_files(env.get(CERT_PATH_ENV) or None, tlscacert, tlscert, tlskey)
        if (cert is None) != (key is None):
            raise ClientError("--tlscert and --tlskey go together")
        if verify and ca is None:
            raise ClientError("--tlsverify needs the daemon's CA: pass --tlscacert or put ca.pem "
                              f"in ${CERT_PATH_ENV} (default ~/.bpfnet)")
    return Client(host or env.get(HOST_ENV) or DEFAULT_SOCKET, timeout, tls=use_tls, tlsverify=verify,
                  cacert=ca, cert=cert, key=key)
