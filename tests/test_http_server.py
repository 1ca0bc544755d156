"""The API's HTTP server (controller/api/server.py) against hostile and careless clients.

Each test runs a real ApiServer in this process on a tmp Unix socket and
127.0.0.1:0 and talks raw bytes to it (issue 10: defects #4, #5, #8, #9, #15, #18).
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from bpfnet.api import server as http_server
from bpfnet.api.server import ApiServer, Request
from bpfnet.client import Client, ClientError, connect_unix
from bpfnet.config import Listener
from bpfnet.errors import BpfnetError, NotFound
from httptest import (
    Recorder,
    assert_json_error,
    connect,
    listen_backlog,
    parse_responses,
    read_until_closed,
    running,
    tcp_port,
    thread_count,
)

FAST = {"idle_timeout": 1.0, "body_timeout": 0.5, "linger_timeout": 0.3, "write_timeout": 1.0}
HOST = b"Host: bpfnet\r\n"


def get(path: str) -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST + b"\r\n"


def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\n" + HOST + extra
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def exchange(server: ApiServer, data: bytes, timeout: float = 5.0, kind: str = "unix") -> tuple[bytes, bool]:
    with connect(server, kind) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


# --- the API's behaviour is unchanged ----------------------------------------------

def test_answers_keep_status_json_shape_content_length_and_empty_204(tmp_path: Path) -> None:
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        client = Client(server.addresses[0])
        assert client.get("/v1/info?x=1")["query"] == "x=1"
        assert client.post("/v1/networks", {"name": "n1"}) == {"created": {"name": "n1"}}
        assert client.delete("/v1/endpoints/e%20x") is None
        data, _ = exchange(server, get("/v1/info") + b"DELETE /v1/endpoints/a HTTP/1.1\r\n" + HOST
                           + b"Connection: close\r\n\r\n")
    ok, empty = parse_responses(data)
    assert ok.status == 200 and ok.headers["content-type"] == "application/json"
    assert int(ok.headers["content-length"]) == len(ok.body) and ok.body.endswith(b"}\n")
    assert empty.status == 204 and empty.body == b"" and "content-length" not in empty.headers
    assert rec.seen[2].path == "/v1/endpoints/e%20x"  # raw: the app decodes segments
    assert ("/networks", "POST", 201) in rec.hooks and ("/endpoints/{name}", "DELETE", 204) in rec.hooks


def test_app_errors_map_to_status_and_one_line_json(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def app(req: Request) -> tuple[int, Any, str]:
        if req.path == "/v1/missing":
            raise NotFound("network 'x' not found")
        raise RuntimeError("boom\nsecond line")

    hooks: list[tuple[str, str, int]] = []
    server = ApiServer([Listener("unix", path=str(tmp_path / "api.sock"))], app,
                       lambda r, m, s: hooks.append((r, m, s)), **FAST)
    server.serve()
    try:
        with caplog.at_level(logging.ERROR, logger="bpfnet.api.server"):
            missing, _ = exchange(server, get("/v1/missing") + get("/v1/crash"), timeout=2)
    finally:
        server.close()
    not_found, crash = parse_responses(missing)
    assert assert_json_error(not_found, 404) == "network 'x' not found"
    assert assert_json_error(crash, 500).startswith("internal error: boom")
    assert any(r.exc_info for r in caplog.records)  # a bug keeps its traceback in the log
    assert hooks == [("unmatched", "GET", 404), ("unmatched", "GET", 500)]


def test_requests_see_raw_path_query_and_peer(tmp_path: Path) -> None:
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        exchange(server, get("/v1/info?a=%2F") + get("http://bpfnet/v1/info?b"), timeout=1.5)
        exchange(server, get("/v1/info"), timeout=1.5, kind="tcp")
    assert [(r.path, r.query) for r in rec.seen] == [("/v1/info", "a=%2F"), ("/v1/info", "b"), ("/v1/info", "")]
    assert rec.seen[0].peer == "unix" and rec.seen[2].peer.startswith("127.0.0.1:")
    assert rec.seen[0].body is None


# --- every error is JSON ----------------------------------------------------------

MALFORMED = {
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),
    "no version (HTTP/0.9)": (b"GET /v1/info\r\n\r\n", 505),
    "bad version": (b"GET /v1/info HTTP/9.1\r\n" + HOST + b"\r\n", 400),
    "missing Host": (b"GET /v1/info HTTP/1.1\r\n\r\n", 400),
    "header without colon": (b"GET /v1/info HTTP/1.1\r\n" + HOST + b"Oops\r\n\r\n", 400),
    "header line too long": (b"GET /v1/info HTTP/1.1\r\n" + HOST + b"X: " + b"a" * 20000 + b"\r\n\r\n", 400),
    "unknown method token": (b"FROB /v1/info HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "Content-Length abc (#5)": (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Content-Length: abc\r\n\r\n", 400),
    "Content-Length -1 (#9)": (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n", 400),
    "two Content-Lengths": (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                            400),
    "Content-Length and chunked": (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad chunk size": (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    "target not a path": (b"GET v1/info HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "Expect other than 100-continue": (post("/v1/echo", b"{}", b"Expect: magic\r\n"), 417),
    "compressed body": (post("/v1/echo", b"\x1f\x8b\x08\x00", b"Content-Encoding: gzip\r\n"), 415),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_server_made_errors_are_one_line_json_never_html(tmp_path: Path, name: str) -> None:
    data, status = MALFORMED[name]
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        out, closed = exchange(server, data)
    (resp,) = parse_responses(out)
    assert_json_error(resp, status)
    assert b"<html" not in out.lower()
    assert closed
    assert rec.seen == []  # never reached the app


@pytest.mark.parametrize("method", ["PUT", "PATCH", "TRACE", "OPTIONS", "HEAD", "CONNECT"])
def test_unsupported_methods_get_405_with_allow(tmp_path: Path, method: str) -> None:
    rec = Recorder()
    target = b"bpfnet:80" if method == "CONNECT" else b"/v1/info"
    with running(tmp_path, rec, **FAST) as server:
        out, _ = exchange(server, method.encode() + b" " + target + b" HTTP/1.1\r\n" + HOST
                          + b"Connection: close\r\n\r\n")
    (resp,) = parse_responses(out, head=method == "HEAD")
    assert resp.status == 405 and resp.headers["allow"] == "DELETE, GET, POST"
    if method != "HEAD":  # a response to HEAD has no body by definition
        assert_json_error(resp, 405)
    assert rec.seen == [] and rec.hooks == [("server", "OTHER", 405)]


def test_app_405_names_the_allowed_methods_of_the_path(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), allow=lambda path: ["GET"] if path == "/v1/info" else [], **FAST) as server:
        out, _ = exchange(server, post("/v1/info", b"{}"), timeout=1.5)
    (resp,) = parse_responses(out)
    assert_json_error(resp, 405)
    assert resp.headers["allow"] == "GET"


# --- body limit and smuggling (#4) ----------------------------------------------------

INNER = b"POST /v1/networks HTTP/1.1\r\n" + HOST + b"Content-Length: 17\r\n\r\n{\"name\": \"evil\"}\n"


def test_oversized_body_hiding_a_request_never_reaches_the_app(tmp_path: Path) -> None:
    """#4: the body of a request refused for its size was parsed as the next request."""
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        # the declared body is over the limit; what follows the head is a complete request
        outer = (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % (2 << 20)) + INNER
        t0 = time.monotonic()
        out, closed = exchange(server, outer, timeout=5)
        took = time.monotonic() - t0
        # the same with the whole oversized body sent: the inner request is its first bytes
        out2, closed2 = exchange(server, outer + b"x" * ((2 << 20) - len(INNER)), timeout=5)
        # and chunked, where only the reader sees the size
        chunked = (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n" % len(INNER) + INNER + b"\r\n"
                   + (b"%x\r\n" % (1 << 19) + b"y" * (1 << 19) + b"\r\n") * 3 + b"0\r\n\r\n" + INNER)
        out3, closed3 = exchange(server, chunked, timeout=5)
    for data, was_closed in ((out, closed), (out2, closed2), (out3, closed3)):
        (resp,) = parse_responses(data)  # exactly one answer: nothing after it
        assert "too large" in assert_json_error(resp, 413)
        assert resp.headers.get("connection") == "close" and was_closed
    assert took < FAST["linger_timeout"] + 2
    assert rec.seen == []


def test_body_at_the_limit_is_accepted_one_byte_more_is_not(tmp_path: Path) -> None:
    assert http_server.MAX_BODY == 1 << 20
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        client = Client(server.addresses[0])
        padding = "x" * (http_server.MAX_BODY - len('{"p": ""}'))
        assert client.post("/v1/echo", {"p": padding}) == {"size": http_server.MAX_BODY}
        with pytest.raises(ClientError, match="too large") as err:
            client.post("/v1/echo", {"p": padding + "x"})
    assert err.value.status == 413 and len(rec.seen) == 1


def test_chunked_body_within_the_limit_and_expect_continue(tmp_path: Path) -> None:
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        chunked = (b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                   b"3\r\n{}\n\r\n0\r\n\r\n")
        with connect(server) as sock:
            sock.sendall(chunked)
            sock.sendall(b"POST /v1/echo HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            first = sock.recv(65536)
            while b"100 Continue" not in first:  # the client may send the body only now
                first += sock.recv(65536)
            sock.sendall(b"{}" + b"GET /v1/info HTTP/1.1\r\n" + HOST + b"Connection: close\r\n\r\n")
            rest, closed = read_until_closed(sock, 3)
    answers = parse_responses(first + rest)
    assert [r.status for r in answers] == [200, 200, 200] and closed
    assert answers[0].json() == {"size": 3} and answers[1].json() == {"size": 2}


# --- keep-alive and pipelining ------------------------------------------------------

def test_pipelined_requests_get_answers_in_order_on_one_connection(tmp_path: Path) -> None:
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server, connect(server, "tcp") as sock:
        sock.sendall(post("/v1/networks", b'{"name": "a"}') + get("/v1/nope")
                     + post("/v1/networks", b'{"name": "b"}'))
        data = b""
        while data.count(b"HTTP/1.1 ") < 3:
            data += sock.recv(65536)
        sock.sendall(get("/v1/info"))  # still open: keep-alive
        more = sock.recv(65536)
    first, missing, second = parse_responses(data)
    assert first.json() == {"created": {"name": "a"}} and second.json() == {"created": {"name": "b"}}
    assert_json_error(missing, 404)
    assert parse_responses(more)[0].status == 200
    assert [r.method for r in rec.seen] == ["POST", "GET", "POST", "GET"]


# --- timeouts (#9) -------------------------------------------------------------------

def test_body_shorter_than_its_content_length_times_out(tmp_path: Path) -> None:
    rec = Recorder()
    with running(tmp_path, rec, **FAST) as server:
        t0 = time.monotonic()
        out, closed = exchange(server, post("/v1/echo", b"{}")[:-1], timeout=5)
        took = time.monotonic() - t0
    (resp,) = parse_responses(out)
    assert "not received" in assert_json_error(resp, 408)
    assert closed and FAST["body_timeout"] <= took < FAST["body_timeout"] + FAST["linger_timeout"] + 1.5
    assert rec.seen == []


@pytest.mark.parametrize("sent", [b"", b"GET /v1/info HTTP/1.1\r\n", get("/v1/info")])
def test_idle_and_half_sent_connections_are_closed(tmp_path: Path, sent: bytes) -> None:
    """Nothing sent, a head never finished, or idle after a keep-alive answer."""
    with running(tmp_path, Recorder(), **FAST) as server:
        t0 = time.monotonic()
        out, closed = exchange(server, sent, timeout=5)
        took = time.monotonic() - t0
    assert closed and took < FAST["idle_timeout"] + 1.5
    assert len(parse_responses(out)) == (1 if sent.endswith(b"\r\n\r\n") else 0)


def test_header_dribble_does_not_extend_the_deadline(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), **FAST) as server, connect(server) as sock:
        t0 = time.monotonic()
        closed_after = None
        for i in range(40):
            try:
                sock.sendall(b"X-%d: y\r\n" % i if i else b"GET /v1/info HTTP/1.1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.1)
    assert closed_after is not None and closed_after < FAST["idle_timeout"] + 1.0


def test_slow_clients_cost_no_threads(tmp_path: Path) -> None:
    """#9: 30 slow clients held 30 threads. Now the loop holds them; a normal client
    is served meanwhile and the thread count does not follow the client count."""
    slow = {"idle_timeout": 10.0, "body_timeout": 10.0}
    with running(tmp_path, Recorder(), **slow) as server:
        Client(server.addresses[0]).get("/v1/info")  # worker thread made
        before = thread_count()
        socks = []
        try:
            for i in range(30):
                sock = connect(server, "tcp" if i % 2 else "unix")
                # half a head, or a head whose body never comes
                sock.sendall(b"GET /v1/info HTTP/1.1\r\n" if i % 3 else post("/v1/echo", b"{}")[:-1])
                socks.append(sock)
            time.sleep(0.5)
            during = thread_count()
            assert Client(server.addresses[0], timeout=5).get("/v1/info")["ok"]
        finally:
            for sock in socks:
                sock.close()
    assert during - before <= 2, (before, during)


def test_client_that_does_not_read_its_answer_is_dropped(tmp_path: Path) -> None:
    """A response the client never reads must not hold its connection forever."""
    def big(req: Request) -> tuple[int, Any, str]:
        return 200, {"blob": "z" * (8 << 20)}, "/big"

    with running(tmp_path, big, tcp=False, **FAST) as server, connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get("/v1/big"))
        deadline = time.monotonic() + FAST["write_timeout"] + 5
        while server.connections and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.connections == 0


# --- backlog and many clients (#8) ----------------------------------------------------

def test_listeners_have_a_backlog_of_at_least_128(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), **FAST) as server:
        for address in server.addresses:
            assert listen_backlog(address) >= 128, address


def test_200_parallel_clients_all_succeed(tmp_path: Path) -> None:
    """#8: 50 parallel CLI calls lost 4 to EAGAIN. 200 against a slow-ish app: all answered."""
    rec = Recorder(delay=0.01)
    with running(tmp_path, rec) as server:
        def call(i: int) -> Any:
            return Client(server.addresses[i % 2], timeout=60).post("/v1/networks", {"name": f"n{i}"})

        with ThreadPoolExecutor(max_workers=200) as pool:
            results = list(pool.map(call, range(200)))
    assert [r["created"]["name"] for r in results] == [f"n{i}" for i in range(200)]


def test_unix_connect_waits_for_a_full_backlog_instead_of_failing(tmp_path: Path) -> None:
    """The client's half of #8: EAGAIN on a full backlog is retried within the timeout."""
    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    queued = []
    try:
        while True:  # fill the backlog
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        with pytest.raises(TimeoutError):
            connect_unix(path, 0.3)
        threading.Timer(0.3, lambda: listener.accept()[0].close()).start()
        connect_unix(path, 5.0).close()
    finally:
        for s in queued:
            s.close()
        listener.close()


# --- disconnects (#18) -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_clients_leaving_early_leave_no_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  kind: str) -> None:
    """#18: a BrokenPipeError traceback per client that left. Unix peers close (EPIPE);
    TCP peers reset (SO_LINGER 0: ECONNRESET)."""
    rec = Recorder(delay=0.3)
    with caplog.at_level(logging.DEBUG), running(tmp_path, rec, **FAST) as server:
        for data in (post("/v1/networks", b'{"name": "gone"}'),  # gone while the app runs
                     post("/v1/echo", b"{}" * 10)[:-5],  # gone mid-body
                     b"GET /v1/inf"):  # gone mid-head
            with connect(server, kind) as sock:
                if kind == "tcp":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.sendall(data)
            time.sleep(0.1)
        time.sleep(0.6)
        assert Client(server.addresses[0]).get("/v1/info")["ok"]
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]
    if kind == "unix":  # (a reset may discard what the server had not read yet)
        assert len(rec.seen) == 2  # the request whose client left was still carried out


def test_connection_cap(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), max_connections=3, **FAST) as server:
        socks = [connect(server) for _ in range(3)]
        try:
            time.sleep(0.2)
            with connect(server) as extra:
                assert read_until_closed(extra, 2) == (b"", True)
            socks.pop().close()
            time.sleep(0.2)
            assert Client(server.addresses[0]).get("/v1/info")["ok"]
        finally:
            for s in socks:
                s.close()


# --- the Unix socket (#15) ---------------------------------------------------------

def _listen(tmp_path: Path, **kw: Any) -> ApiServer:
    return ApiServer([Listener("unix", path=str(tmp_path / "api.sock"))], Recorder(), lambda r, m, s: None, **kw)


@pytest.mark.parametrize("kind", ["file", "directory", "symlink", "live socket"])
def test_refuses_to_bind_over_anything_but_a_stale_socket(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "api.sock"
    live = None
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (tmp_path / "target").write_text("precious\n")
        path.symlink_to(tmp_path / "target")
    else:
        live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        live.bind(str(path))
        live.listen(1)
    try:
        with pytest.raises(BpfnetError) as err:
            _listen(tmp_path)
    finally:
        if live is not None:
            live.close()
    message = err.value.message
    assert str(path) in message and "\n" not in message
    words = {"file": "regular file", "directory": "directory", "symlink": "symbolic link",
             "live socket": "listening"}
    assert words[kind] in message
    if kind == "file":
        assert path.read_text() == "precious\n"
    if kind == "symlink":
        assert path.is_symlink() and (tmp_path / "target").read_text() == "precious\n"


def test_stale_socket_is_replaced_and_mode_is_0660(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a socket file nobody listens on: a daemon that died
    server = _listen(tmp_path)
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 0
        server.serve()
        assert Client(f"unix://{path}").get("/v1/info")["ok"]
    finally:
        server.close()
    assert not path.exists()


def test_group_owns_the_socket_and_an_unknown_group_is_refused(tmp_path: Path) -> None:
    group = next(g for g in grp.getgrall() if g.gr_gid != 0)
    server = _listen(tmp_path, group=group.gr_name)
    try:
        assert os.stat(tmp_path / "api.sock").st_gid == group.gr_gid
    finally:
        server.close()
    with pytest.raises(BpfnetError, match="--group no-such-group-xyz: no such group"):
        _listen(tmp_path, group="no-such-group-xyz")
    assert not (tmp_path / "api.sock").exists()


def test_close_unlinks_only_the_socket_it_bound(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    server = _listen(tmp_path)
    server.serve()
    path.unlink()
    path.write_text("someone else's\n")  # replaced after we bound it
    server.close()
    assert path.read_text() == "someone else's\n"


def test_a_failed_bind_closes_what_was_bound(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(BpfnetError, match=r"cannot listen on tcp://127\.0\.0\.1:\d+: .*in use"):
            ApiServer([Listener("unix", path=str(tmp_path / "api.sock")),
                       Listener("tcp", host="127.0.0.1", port=taken.getsockname()[1])],
                      Recorder(), lambda r, m, s: None)
    finally:
        taken.close()
    assert not (tmp_path / "api.sock").exists()


def test_unauthenticated_tcp_listener_warns(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), **FAST) as server:
        port = tcp_port(server)
        assert server.warnings == [
            (f"API listener tcp://127.0.0.1:{port} is not authenticated: any local user has full control "
            "of bpfnet, including moving interfaces into any namespace; use --tlsverify")]
    with running(tmp_path, Recorder(), tcp=False, **FAST) as server:
        assert server.warnings == []
