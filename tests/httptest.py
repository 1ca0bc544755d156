"""Helpers for the API server's tests: a real ApiServer in this process, raw
sockets to send hostile bytes, a strict response reader, throwaway TLS certificates.

No namespaces and no daemon: the server binds only a tmp Unix socket and 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfnet.api.server import ApiServer, App, Request
from bpfnet.config import Listener


@dataclass
class Recorder:
    """An app that records what reached it and answers like the API's routes."""

    delay: float = 0.0
    seen: list[Request] = field(default_factory=list)
    hooks: list[tuple[str, str, int]] = field(default_factory=list)

    def __call__(self, req: Request) -> tuple[int, Any, str]:
        self.seen.append(req)
        if self.delay:
            time.sleep(self.delay)
        if req.path == "/v1/info" and req.method == "GET":
            return 200, {"ok": True, "query": req.query, "peer": req.peer}, "/info"
        if req.path == "/v1/networks" and req.method == "POST":
            return 201, {"created": json.loads(req.body or b"null")}, "/networks"
        if req.path == "/v1/echo" and req.method == "POST":
            return 200, {"size": len(req.body or b"")}, "/echo"
        if req.path.startswith("/v1/endpoints/") and req.method == "DELETE":
            return 204, None, "/endpoints/{name}"
        if req.path in ("/v1/info", "/v1/networks", "/v1/echo"):
            return 405, {"error": f"{req.method} {req.path}: method not allowed"}, "unmatched"
        return 404, {"error": f"{req.method} {req.path}: no such route"}, "unmatched"

    def hook(self, route: str, method: str, status: int) -> None:
        self.hooks.append((route, method, status))


@contextmanager
def running(tmp_path: Path, app: App | None = None, *, tcp: bool = True, **kw: Any) -> Iterator[ApiServer]:
    """An ApiServer on tmp_path/api.sock (+ 127.0.0.1:0), served, closed afterwards."""
    rec = app if app is not None else Recorder()
    listeners = [Listener("unix", path=str(tmp_path / "api.sock"))]
    if tcp:
        listeners.append(Listener("tcp", host="127.0.0.1", port=0))
    hook = rec.hook if isinstance(rec, Recorder) else (lambda r, m, s: None)
    server = ApiServer(listeners, rec, hook, **kw)
    try:
        server.serve()
        yield server
    finally:
        server.close()


def tcp_port(server: ApiServer) -> int:
    return int(next(a for a in server.addresses if a.startswith("tcp://")).rsplit(":", 1)[1])


def connect(server: ApiServer, kind: str = "unix") -> socket.socket:
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(server.addresses[0][len("unix://"):])
    else:
        sock = socket.create_connection(("127.0.0.1", tcp_port(server)))
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends within timeout; closed is True when it closed."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def parse_responses(data: bytes, head: bool = False) -> list[Response]:
    """Split a byte stream into HTTP/1.x responses framed by Content-Length
    (no body for 1xx, 204 and answers to HEAD); raises on anything not framed exactly."""
    out: list[Response] = []
    while data:
        top, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"unterminated response head: {data[:200]!r}"
        lines = top.decode("latin-1").split("\r\n")
        version, status_text = lines[0].split(" ", 2)[:2]
        assert version in ("HTTP/1.1", "HTTP/1.0", "HTTP/0.9"), lines[0]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_text)
        if status < 200:
            data = rest
            continue
        length = 0 if status == 204 or head else int(headers["content-length"])
        assert len(rest) >= length, f"short body: {rest!r}"
        out.append(Response(status, headers, rest[:length]))
        data = rest[length:]
    return out


def assert_json_error(resp: Response, status: int) -> str:
    """resp is the one-line JSON error the API promises; returns its message."""
    assert resp.status == status, (resp.status, resp.body)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    assert resp.body.endswith(b"\n") and resp.body.count(b"\n") == 1, resp.body
    doc = json.loads(resp.body)
    assert set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"], doc
    return str(doc["error"])


def thread_count() -> int:
    """OS threads of this process (what a slow client used to cost in the old server)."""
    return len(os.listdir("/proc/self/task"))


def listen_backlog(address: str) -> int:
    """The backlog of a listening socket as the kernel reports it (ss's Send-Q)."""
    if address.startswith("unix://"):
        cmd = ["ss", "-xlnH", "src", address[len("unix://"):]]
    else:
        cmd = ["ss", "-tlnH", "sport", "=", ":" + address.rsplit(":", 1)[1]]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    # unix: Netid State Recv-Q Send-Q ...; tcp (one netid, not shown): State Recv-Q Send-Q ...
    return int(out[3] if address.startswith("unix://") else out[2])


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path  # signed by a CA the server does not trust
    other_client_key: Path
    dir: Path  # ca.pem, cert.pem, key.pem as in $BPFNET_CERT_PATH


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}-key.pem", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
             "-days", "2", "-subj", f"/CN={name}")
    return cert, key


def _signed(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = d / f"{name}-key.pem", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", extfile)
    return cert, key


def make_certs(d: Path) -> Certs:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a
    client certificate from a second, untrusted CA (all throwaway, in d)."""
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    server = _signed(d, "server", ca, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth")
    client = _signed(d, "client", ca, "extendedKeyUsage=clientAuth")
    stranger = _signed(d, "stranger", other, "extendedKeyUsage=clientAuth")
    certdir = d / "certdir"
    certdir.mkdir()
    (certdir / "ca.pem").write_bytes(ca[0].read_bytes())
    (certdir / "cert.pem").write_bytes(client[0].read_bytes())
    (certdir / "key.pem").write_bytes(client[1].read_bytes())
    return Certs(ca[0], server[0], server[1], client[0], client[1], stranger[0], stranger[1], certdir)
