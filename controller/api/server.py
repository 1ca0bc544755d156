"""The API's HTTP server: listeners, HTTP/1.1 framing, limits, timeouts, TLS, JSON errors.

Boundary: bytes on the wire <-> ``Request`` and ``(status, document, route)``.
Routing and the work are the app's (a plain synchronous callable handed in);
this module never looks inside a document and decides nothing about bpfnet.

Why aiohttp rather than the standard library's ``http.server``:
- a maintained HTTP/1.1 parser (llhttp in C) that frames every body exactly by
  its Content-Length or chunked encoding and rejects ambiguous framing
  (``Content-Length: abc``, ``-1``, Content-Length together with chunked), so a
  rejected body can never be read as the next request (request smuggling,
  issue 10 #4/#5/#9);
- asynchronous connections: a slow or idle client costs a coroutine and a
  socket, never a thread (#9), with idle, header and lingering deadlines built
  in and ours added for bodies and responses;
- TLS, Unix sockets and sockets bound by someone else (``create_server(sock=)``),
  which the daemon needs because it binds before it enters its namespace.
``http.server`` has none of these and would need a patch for each.

Threading model: one thread ("bpfnet-api") runs an asyncio loop that accepts,
reads, parses and writes for every listener. A request whose head and body
have arrived completely is handed to the app in a bounded ThreadPoolExecutor
(``workers`` threads, default 16): the app is synchronous (services hold a
lock and talk netlink). So the process has at most 1 + workers API threads
however many clients connect or how slowly they send; ``max_connections``
bounds the sockets. Both the loop thread and the workers are created by
``serve()``, i.e. after the daemon has entered its namespace, and inherit it.

Every response is ``Content-Type: application/json``; every error, including
those the server makes itself (malformed HTTP, unsupported method, body too
large, too slow), is the one line ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web, web_protocol, web_server

from ..config import Listener
from ..errors import BpfnetError
from ..tls import TlsConfig, server_context

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes; the largest request body the API accepts
BACKLOG = 1024  # listen() backlog: a burst of CLI calls queues instead of failing (#8)
WORKERS = 16  # threads running the (synchronous) app
MAX_CONNECTIONS = 512  # open API connections; beyond, new ones are closed at once
IDLE_TIMEOUT = 30.0  # s from connect or from the last response until a complete request head
BODY_TIMEOUT = 10.0  # s to receive a request body once its head has arrived
WRITE_TIMEOUT = 10.0  # s for a client to take a response
LINGER_TIMEOUT = 2.0  # s spent discarding an unread body after an error, so the client sees it
METHODS = ("DELETE", "GET", "POST")
SERVER_ROUTE = "server"  # route label of requests the server answered itself
APP_ERROR_ROUTE = "unmatched"  # route label when the app raised instead of answering
OTHER_METHOD = "OTHER"  # method label of anything outside METHODS (hostile clients pick any token)
_MAX_MESSAGE = 200  # characters of a parser's message quoted back

ListenerSpec = Listener


@dataclass(frozen=True)
class Request:
    """One request as the app sees it. ``path`` is raw (still percent-encoded,
    without the query); the app decodes segments after splitting on "/"."""

    method: str
    path: str
    query: str
    body: bytes | None  # None when the request had no body
    peer: str  # "unix" or "ip:port"


# (status, JSON document or None for 204, route label for metrics)
App = Callable[[Request], tuple[int, Any, str]]
OnRequest = Callable[[str, str, int], None]


class _Reject(Exception):
    """An answer the server gives itself; ``close`` ends the connection after it."""

    def __init__(self, status: int, message: str, *, close: bool = True,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}


def error_body(message: str) -> bytes:
    """The one-line JSON error document every error response carries."""
    return (json.dumps({"error": message}) + "\n").encode()


def _json_response(status: int, data: bytes, headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> web.Response:
    resp = web.Response(status=status, body=data, content_type=content_type, headers=headers)
    resp.headers["Server"] = "bpfnet"
    return resp


def method_label(method: str) -> str:
    """The metrics label of a method: bounded whatever a client sends."""
    return method if method in METHODS else OTHER_METHOD


# listeners ------------------------------------------------------------------

def resolve_group(group: str | None) -> int:
    """--group NAME or GID -> gid; the default (None) is root's group, as dockerd without -G."""
    if group is None:
        return 0
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise BpfnetError(f"--group {group}: no such group") from None


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file"), (stat.S_ISLNK, "a symbolic link"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _clear_stale_socket(path: str) -> None:
    """Remove a dead daemon's socket at path; refuse anything else that is there (#15)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "something that is not a socket")
        raise OSError(errno.EEXIST, f"{path} is {kind}, not a stale socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: the socket of a daemon that died
        log.info("removed the stale socket %s", path)
        return
    except BlockingIOError:
        pass  # its backlog is full: somebody is listening
    except OSError as exc:
        raise OSError(exc.errno, f"{path}: cannot tell whether the socket there is in use "
                      f"({exc.strerror or exc})") from None
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")


def _bind_unix(path: str, gid: int) -> socket.socket:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound = False
    try:
        sock.bind(path)
        bound = True
        # Mode and group before listen(): nobody can connect before they apply.
        os.chmod(path, 0o660)
        os.chown(path, -1, gid)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        if bound:
            os.unlink(path)
        raise
    return sock


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    addr = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0][4]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def unauthenticated_warning(address: str, host: str, tls: TlsConfig | None) -> str:
    """The warning for a TCP listener that does not authenticate its clients (#17)."""
    who = "any local user has" if _is_loopback(host) else "anyone who can reach it has"
    what = "is encrypted (--tls) but not authenticated" if tls else "is not authenticated"
    return (f"API listener {address} {what}: {who} full control of bpfnet, including moving "
            "interfaces into any namespace; use --tlsverify")


# the HTTP protocol ------------------------------------------------------------

class _Protocol(web_protocol.RequestHandler):
    """aiohttp's connection handler with JSON errors, quiet disconnects and a connection cap."""

    owner: ApiServer
    head_seen = False  # a first request head has arrived (or failed to parse)
    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        owner = self.owner
        # aiohttp arms its keep-alive timer at connect only since late 3.x releases:
        # our own deadline for the first request head, whatever the version.
        self.head_timer = self._loop.call_later(owner.idle_timeout, self._head_deadline)
        owner.connections += 1
        if owner.connections > owner.max_connections:
            if not owner.over_cap:  # once per episode: a flood must not flood the log too
                log.warning("API: %d connections open, closing new ones until some end", owner.max_connections)
                owner.over_cap = True
            self.force_close()
        elif owner.connections < owner.max_connections:
            owner.over_cap = False

    def _head_deadline(self) -> None:
        self.head_timer = None
        if not self.head_seen and self.transport is not None:
            log.debug("API: no request within %g s of connecting, closing", self.owner.idle_timeout)
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        if self._manager is not None:  # aiohttp calls this once per connection with a manager
            self.owner.connections -= 1
        super().connection_lost(exc)

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        """Errors aiohttp meets itself (a request it could not parse, a handler that
        raised): a JSON line instead of aiohttp's text or HTML, and a disconnect is
        not an error of ours."""
        self.head_seen = True
        if isinstance(exc, ConnectionError):
            log.debug("API client went away: %s", exc)
            raise ConnectionResetError("client disconnected")
        if status >= 500:
            log.error("API: error handling a request", exc_info=exc)
            text = f"internal error: {exc}" if exc else HTTPStatus(status).phrase
        else:
            detail = (message or (str(exc) if exc else "") or HTTPStatus(status).phrase).strip()
            # llhttp's messages go on with the offending bytes on further lines
            detail = detail.splitlines()[0][:_MAX_MESSAGE].rstrip(":. ") if detail else ""
            text = f"malformed HTTP request: {detail}"
            log.debug("API: malformed request: %s", detail)
        if request.writer.output_size > 0:  # a response was under way: nothing can be said
            raise ConnectionResetError("response already started")
        self.owner.count(SERVER_ROUTE, OTHER_METHOD, status)
        resp = _json_response(status, error_body(text))
        resp.force_close()
        return resp


class _Server(web_server.Server):
    def __init__(self, owner: ApiServer, **kwargs: Any) -> None:
        super().__init__(owner.handle, **kwargs)
        self.owner = owner

    def __call__(self) -> _Protocol:
        proto = _Protocol(self, loop=self._loop, **self._kwargs)
        proto.owner = self.owner
        return proto


# the server -----------------------------------------------------------------

class ApiServer:
    """Every listener, bound at construction (before the daemon enters its
    namespace); serve() starts the loop thread; close() stops and unlinks."""

    def __init__(self, listeners: list[ListenerSpec], app: App, on_request: OnRequest, *,
                 tls: TlsConfig | None = None, group: str | None = None,
                 allow: Callable[[str], Iterable[str]] | None = None,
                 max_body: int = MAX_BODY, workers: int = WORKERS,
                 max_connections: int = MAX_CONNECTIONS, idle_timeout: float = IDLE_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 linger_timeout: float = LINGER_TIMEOUT, content_type: str = "application/json") -> None:
        """``allow(path)`` names the methods a path supports, for the Allow header
        of a 405; without it the server's METHODS are named. CONTENT_TYPE is the app's
        answers' (a JSON media type: Docker's plugin protocol has its own)."""
        self.app = app
        self.content_type = content_type
        self.on_request = on_request
        self.allow = allow
        self.max_body = max_body
        self.workers = workers
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        self.write_timeout = write_timeout
        self.linger_timeout = linger_timeout
        self.connections = 0
        self.over_cap = False
        self.warnings: list[str] = []
        self.addresses: list[str] = []  # as bound: tcp://127.0.0.1:0 shows its real port
        self._socks: list[tuple[socket.socket, Listener]] = []
        self._unix: list[tuple[str, int, int]] = []  # (path, st_dev, st_ino) of sockets we bound
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._proto_server: _Server | None = None
        gid = resolve_group(group)
        self.ssl = server_context(tls) if tls else None
        listener = None
        try:
            for listener in listeners:
                if listener.kind == "unix":
                    sock = _bind_unix(listener.path, gid)
                    st = os.stat(listener.path)
                    self._unix.append((listener.path, st.st_dev, st.st_ino))
                    address = str(listener)
                else:
                    sock = _bind_tcp(listener.host, listener.port)
                    port = sock.getsockname()[1]
                    address = str(Listener("tcp", host=listener.host, port=port))
                    if tls is None or not tls.verify:
                        self.warnings.append(unauthenticated_warning(address, listener.host, tls))
                self._socks.append((sock, listener))
                self.addresses.append(address)
        except (OSError, UnicodeError) as exc:
            self.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise BpfnetError(f"cannot listen on {listener}: {reason}") from None

    # metrics ------------------------------------------------------------------
    def count(self, route: str, method: str, status: int) -> None:
        try:
            self.on_request(route, method, status)
        except Exception:  # a metrics bug must not turn an answer into a dropped connection
            log.exception("API: the request hook failed")

    # life cycle ---------------------------------------------------------------
    def serve(self) -> None:
        """Start the loop thread and every listener; returns once they accept."""
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="bpfnet-api-worker")
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="bpfnet-api",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.close()
            raise BpfnetError(f"cannot start the API server: {failure[0]}")
        for address in self.addresses:
            log.info("API listening on %s", address)

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_loop_exception)
        self._loop = loop
        try:
            loop.run_until_complete(self._start())
        except BaseException as exc:  # noqa: BLE001 - handed to serve(), raised in the caller's thread
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._proto_server = _Server(
            self, loop=loop, keepalive_timeout=self.idle_timeout, lingering_time=self.linger_timeout,
            access_log=None, logger=log, tcp_keepalive=True, handler_cancellation=False,
            auto_decompress=False)
        for sock, listener in self._socks:
            ssl_ctx = self.ssl if listener.kind == "tcp" else None
            extra: dict[str, Any] = {}
            if ssl_ctx is not None:  # a client that never completes its handshake is dropped too
                extra = {"ssl_handshake_timeout": self.idle_timeout, "ssl_shutdown_timeout": self.write_timeout}
            server = await loop.create_server(self._proto_server, sock=sock, ssl=ssl_ctx,
                                              backlog=BACKLOG, **extra)
            self._servers.append(server)

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._proto_server is not None:
            await self._proto_server.shutdown(timeout=2.0)

    def close(self) -> None:
        """Stop serving, close every socket, unlink the Unix sockets this server bound."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._stop(), loop).result(timeout=5.0)
            except (TimeoutError, OSError, RuntimeError) as exc:  # never keep the daemon from exiting
                log.warning("API: shutdown incomplete: %s", exc)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5.0)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        for sock, _ in self._socks:
            sock.close()
        self._socks = []
        for path, dev, ino in self._unix:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):  # still ours, not a successor's
                os.unlink(path)
        self._unix = []
        self._servers = []
        self._thread = None
        self._loop = None

    # one request ----------------------------------------------------------------
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if isinstance(request.protocol, _Protocol):
            request.protocol.head_seen = True  # from now on aiohttp's keep-alive timer applies
        method = request.method
        route, label = SERVER_ROUTE, method_label(method)
        try:
            if method not in METHODS:  # before the target: CONNECT's is host:port
                path = request.raw_path.partition("?")[0][:_MAX_MESSAGE]
                raise _Reject(405, f"{method} {path}: method not allowed", close=False,
                              headers={"Allow": self._allowed(path)})
            if request.version[0] != 1:  # llhttp takes "GET /path" as HTTP/0.9
                raise _Reject(505, f"HTTP/{request.version[0]}.{request.version[1]} is not supported; "
                              "use HTTP/1.1")
            path, query = _split_target(request.raw_path)
            body = await self._read_body(request)
            req = Request(method=method, path=path, query=query, body=body, peer=_peer(request))
            loop = asyncio.get_running_loop()
            status, data, route = await loop.run_in_executor(self._executor, self._call_app, req)
            headers = {"Allow": self._allowed(path)} if status == 405 else None
            resp = _json_response(status, data, headers, self.content_type)
        except _Reject as rej:
            self.count(route, label, rej.status)
            log.debug("API %s %s: %d %s", method, request.raw_path[:_MAX_MESSAGE], rej.status, rej.message)
            resp = _json_response(rej.status, error_body(rej.message), rej.headers)
            if rej.close:
                resp.force_close()
        return await self._send(request, resp)

    def _allowed(self, path: str) -> str:
        methods = self.allow(path) if self.allow is not None else METHODS
        return ", ".join(sorted(methods))

    async def _read_body(self, request: web.BaseRequest) -> bytes | None:
        """The whole body within max_body and body_timeout; the parser has already
        refused malformed framing, so what is not read here is never taken as a request."""
        try:
            length = request.content_length
        except ValueError:  # the parser refuses these; kept for a parser that would not
            raise _Reject(400, "invalid Content-Length") from None
        if length is not None and length > self.max_body:
            raise _Reject(413, f"request body too large ({length} bytes; the limit is {self.max_body})")
        if not request.body_exists:
            return None
        encoding = request.headers.get("Content-Encoding", "identity")
        if encoding.lower() != "identity":  # the parser does not inflate (no zip bombs): refuse
            raise _Reject(415, f"Content-Encoding {encoding[:_MAX_MESSAGE]} is not supported")
        expect = request.headers.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise _Reject(417, f"Expect: {expect[:_MAX_MESSAGE]} is not supported")
            if request.version >= (1, 1):  # the client waits for this before sending the body
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout):
                while chunk := await request.content.readany():
                    size += len(chunk)
                    if size > self.max_body:
                        raise _Reject(413, f"request body too large (over {self.max_body} bytes)")
                    chunks.append(chunk)
        except TimeoutError:
            raise _Reject(408, f"request body not received within {self.body_timeout:g} s") from None
        except web_protocol.RequestPayloadError as exc:
            raise _Reject(400, f"malformed request body: {str(exc)[:_MAX_MESSAGE]}") from None
        return b"".join(chunks) or None

    def _call_app(self, req: Request) -> tuple[int, bytes, str]:
        """In a worker thread: the app, its errors mapped, the document serialised, counted."""
        route = APP_ERROR_ROUTE
        try:
            status, doc, route = self.app(req)
            data = b"" if status == HTTPStatus.NO_CONTENT or doc is None else (json.dumps(doc) + "\n").encode()
        except BpfnetError as exc:
            status, data = exc.status, error_body(exc.message)
        except Exception as exc:
            log.exception("%s %s failed", req.method, req.path)
            status, data = HTTPStatus.INTERNAL_SERVER_ERROR, error_body(f"internal error: {exc}")
        self.count(route, req.method, int(status))
        return int(status), data, route

    async def _send(self, request: web.BaseRequest, resp: web.Response) -> web.Response:
        """Write the response within write_timeout (aiohttp would wait forever on a
        client that does not read); a client that left is not an error."""
        try:
            async with asyncio.timeout(self.write_timeout):
                await resp.prepare(request)
                await resp.write_eof()
        except TimeoutError:
            log.debug("API: client did not take its response within %g s", self.write_timeout)
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("client did not read its response") from None
        return resp


def _split_target(target: str) -> tuple[str, str]:
    """The raw request target -> (path, query); only origin-form ("/...") is served."""
    if target.startswith(("http://", "https://")):  # absolute-form: keep the path and query
        rest = target.split("//", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not target.startswith("/"):
        raise _Reject(400, f"request target {target[:_MAX_MESSAGE]!r} is not a path")
    path, _, query = target.partition("?")
    return path, query


def _peer(request: web.BaseRequest) -> str:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family == socket.AF_UNIX:
        return "unix"
    peername = transport.get_extra_info("peername") if transport is not None else None
    if not peername:
        return "unknown"
    host, port = peername[0], peername[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Connection-level failures (resets, failed TLS handshakes) are the client's: one
    debug line. Anything else is a bug and keeps its traceback."""
    exc = context.get("exception")
    if isinstance(exc, OSError):
        log.debug("API connection: %s: %s", context.get("message"), exc)
        return
    loop.default_exception_handler(context)
