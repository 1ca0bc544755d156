"""The embedded resolver: a process of its own, so that it keeps answering while the daemon restarts.

Boundary: ``python -m bpfnet.dns.server --dir DIR`` runs in the managed namespace (the daemon
spawns it there, or adopts the one a previous daemon left: see ``supervisor``). It reads its
state (``DIR/state.json``, written by the daemon; re-read on SIGHUP and when the file
changes), listens on port 53 (UDP and TCP) of every network's gateway addresses, and
identifies the asking network by the address a query arrived on, so each network sees only
its own names. Names it knows are answered from prepared records; single-label names and
``*.NETWORK`` names it does not know are NXDOMAIN here (never sent upstream); the rest goes to
the upstreams over UDP, again over TCP when the answer was truncated. It writes its counters
to ``DIR/stats.json`` (what the daemon's metrics read, and the daemon's proof that a new
state was loaded), and exits when the namespace it serves is deleted or its directory goes.
It imports only the pure ``wire`` and ``records`` modules: no store, no netlink.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

from . import records, wire

log = logging.getLogger("bpfnet.dns.server")
PORT = 53
IP_FREEBIND = 15
IPV6_FREEBIND = 78
UPSTREAM_TIMEOUT = 1.5  # per upstream, then the next one; all failed: SERVFAIL
TCP_IDLE = 5.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
STATE = "state.json"
STATS = "stats.json"
PIDFILE = "resolver.pid"
LOCK = "resolver.lock"
MODULE = "bpfnet.dns.server"
# Reverse names: those of a network's own subnets are the resolver's to answer, never the upstream's.
REVERSE_SUFFIXES = (wire.encode_name("in-addr.arpa"), wire.encode_name("ip6.arpa"))


@dataclass
class Net:
    name: str
    answers: records.Answers
    subnets: tuple[IPv4Network | IPv6Network, ...]  # who may ask
    seen: dict[str, bool] = field(default_factory=dict)  # client address -> member? (bounded cache)

    def member(self, client: str) -> bool:
        known = self.seen.get(client)
        if known is None:
            try:
                address = ip_address(client.split("%", 1)[0])
            except ValueError:
                return False
            known = any(address in s for s in self.subnets)
            if len(self.seen) >= 65536:
                self.seen.clear()
            self.seen[client] = known
        return known


@dataclass
class Pending:
    sock: socket.socket
    client: Any
    qid: int
    query: bytes
    q: wire.Question
    net: str
    upstreams: list[str]
    index: int
    started: float


class Stats:
    """Counters by (network, type, result) and the forwarded queries' latency histogram."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queries: dict[tuple[str, str, str], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.upstream_failures: dict[str, int] = {}
        self.tcp_retries = 0
        self.dirty = True

    def count(self, net: str, qtype: str, result: str) -> None:
        key = (net, qtype, result)
        with self.lock:
            self.queries[key] = self.queries.get(key, 0) + 1
            self.dirty = True

    def forwarded(self, seconds: float) -> None:
        i = 0
        while i < len(LATENCY_BUCKETS) and seconds > LATENCY_BUCKETS[i]:
            i += 1
        with self.lock:
            self.buckets[i] += 1
            self.latency_sum += seconds

    def upstream_failed(self, server: str) -> None:
        with self.lock:
            self.upstream_failures[server] = self.upstream_failures.get(server, 0) + 1
            self.dirty = True

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            return {"queries": [[*k, v] for k, v in sorted(self.queries.items())],
                    "forward_latency": {"le": list(LATENCY_BUCKETS), "counts": list(self.buckets),
                                        "sum": self.latency_sum},
                    "upstream_failures": dict(self.upstream_failures), "tcp_retries": self.tcp_retries}


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _listen(address: str, kind: int) -> socket.socket:
    family = _family(address)
    s = socket.socket(family, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # FREEBIND: bind before the address is usable (a bridge just made, IPv6 DAD).
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        s.bind((address, PORT))
        if kind == socket.SOCK_STREAM:
            s.listen(128)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def _read_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def tcp_exchange(server: str, query: bytes, timeout: float = UPSTREAM_TIMEOUT) -> bytes:
    """One query over TCP (RFC 7766): length-prefixed, one answer."""
    with socket.create_connection((server, PORT), timeout=timeout) as conn:
        conn.sendall(struct.pack("!H", len(query)) + query)
        head = _read_exact(conn, 2)
        if head is None:
            raise OSError(errno.ECONNRESET, f"{server} closed the connection")
        body = _read_exact(conn, struct.unpack("!H", head)[0])
        if body is None:
            raise OSError(errno.ECONNRESET, f"{server} closed the connection")
        return body


class Resolver:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.state_path = directory / STATE
        self.stats_path = directory / STATS
        self.sel = selectors.DefaultSelector()
        self.nets: dict[str, Net] = {}
        self.sockets: dict[tuple[str, int], socket.socket] = {}  # (address, kind) -> listener
        self.net_of: dict[int, str] = {}  # listener fileno -> network name
        self.suffixes: tuple[bytes, ...] = ()
        self.upstreams: list[str] = []
        self.clients: dict[str, list[str]] = {}
        self.generation = -1
        self.state_mtime = 0
        self.netns: str | None = None
        self.stats = Stats()
        self.pending: dict[int, Pending] = {}
        self.timeouts: list[tuple[float, int, int]] = []  # (deadline, txid, upstream index)
        self.up: dict[int, socket.socket] = {}
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns-tcp")
        self.stop = False
        self.reload_wanted = True
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.own_netns = os.stat("/proc/self/ns/net").st_ino

    # --- state ---------------------------------------------------------------------------
    def load(self) -> None:
        try:
            st = self.state_path.stat()
            doc = json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", self.state_path, exc)
            return
        self.state_mtime = st.st_mtime_ns
        nets = {}
        wanted: dict[tuple[str, int], str] = {}
        for net in doc.get("networks", []):
            nets[net["name"]] = Net(net["name"], records.compile_network(net),
                                    tuple(ip_network(x) for x in net.get("subnets", ())))
            for address in net.get("listen", []):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    wanted[(address, kind)] = net["name"]
        for key in list(self.sockets):
            if key not in wanted:
                s = self.sockets.pop(key)
                self.sel.unregister(s)
                self.net_of.pop(s.fileno(), None)
                s.close()
        for key, name in wanted.items():
            have = self.sockets.get(key)
            if have is not None:
                self.net_of[have.fileno()] = name
                continue
            try:
                s = _listen(*key)
            except OSError as exc:
                log.warning("cannot listen on %s port %d (%s): %s", key[0], PORT,
                            "udp" if key[1] == socket.SOCK_DGRAM else "tcp", exc)
                continue
            self.sockets[key] = s
            self.sel.register(s, selectors.EVENT_READ, ("udp" if key[1] == socket.SOCK_DGRAM else "tcp", None))
            self.net_of[s.fileno()] = name
        self.nets = nets
        self.suffixes = records.local_suffixes(doc.get("networks", []))
        self.upstreams = list(doc.get("upstreams", []))
        self.clients = {k: list(v) for k, v in doc.get("clients", {}).items()}
        self.netns = doc.get("netns")
        self.generation = int(doc.get("generation", 0))
        log.info("state %d: %d network(s), %d listener(s), upstreams %s", self.generation, len(nets),
                 len(self.sockets), " ".join(self.upstreams) or "none")
        self.write_stats()

    def write_stats(self) -> None:
        doc = {"pid": os.getpid(), "generation": self.generation, **self.stats.to_json()}
        tmp = self.stats_path.with_name(f".{STATS}.{os.getpid()}")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.stats_path)
        self.stats.dirty = False

    def gone(self) -> bool:
        """The namespace this resolver serves was deleted (ip netns del), or its directory."""
        if not self.dir.is_dir():
            return True
        if self.netns:
            try:
                return os.stat(f"/run/netns/{self.netns}").st_ino != self.own_netns
            except OSError:
                return True
        return False

    # --- answering -----------------------------------------------------------------------
    def answer_local(self, net: Net, query: bytes, q: wire.Question, client: str) -> tuple[bytes | None, str]:
        """(answer, result) when the query is ours to answer; (None, "") to forward it."""
        if not net.member(client):
            return wire.response(query, q, wire.RCODE_REFUSED, authoritative=False), "refused"
        entry = net.answers.get(q.key)
        if entry is not None:
            count, rrs = entry.get(q.qtype, (0, b""))
            return wire.response(query, q, wire.RCODE_NOERROR, rrs, count), "local"
        if wire.label_count(q.key) == 1 or any(q.key.endswith(s) for s in self.suffixes):
            return wire.response(query, q, wire.RCODE_NXDOMAIN), "nxdomain"
        if q.key.endswith(REVERSE_SUFFIXES):
            address = records.reverse_address(q.key)
            if address is not None and any(address in s for s in net.subnets):
                return wire.response(query, q, wire.RCODE_NXDOMAIN), "nxdomain"  # ours, and unused
        return None, ""

    def upstreams_for(self, client: str) -> list[str]:
        return self.clients.get(client, self.upstreams)

    def on_udp(self, s: socket.socket) -> None:
        net = self.nets.get(self.net_of.get(s.fileno(), ""))
        for _ in range(64):  # drain a burst per wake-up
            try:
                query, client = s.recvfrom(4096)
            except BlockingIOError:
                return
            except OSError:
                return
            if net is None:
                continue
            q = wire.parse_question(query)
            if q is None:
                reply = wire.error_response(query, wire.RCODE_FORMERR)
                if reply is not None:
                    self.stats.count(net.name, "other", "formerr")
                    self._send(s, reply, client)
                continue
            reply, result = self.answer_local(net, query, q, client[0])
            if reply is not None:
                if len(reply) > wire.udp_limit(query, q):
                    reply = wire.truncate(reply, q)
                self.stats.count(net.name, q.type_name, result)
                self._send(s, reply, client)
            else:
                self.forward(s, client, query, q, net.name)

    @staticmethod
    def _send(s: socket.socket, data: bytes, client: Any) -> None:
        try:
            s.sendto(data, client)
        except OSError as exc:
            log.debug("cannot answer %s: %s", client, exc)

    def forward(self, s: socket.socket, client: Any, query: bytes, q: wire.Question, net: str) -> None:
        upstreams = self.upstreams_for(client[0])
        if not upstreams:
            self.stats.count(net, q.type_name, "servfail")
            self._send(s, wire.response(query, q, wire.RCODE_SERVFAIL, authoritative=False), client)
            return
        txid = secrets.randbits(16)
        while txid in self.pending:
            txid = secrets.randbits(16)
        p = Pending(s, client, wire.message_id(query), query, q, net, upstreams, 0, time.monotonic())
        self.pending[txid] = p
        self._send_upstream(txid, p)

    def _upstream_socket(self, family: int) -> socket.socket:
        s = self.up.get(family)
        if s is None:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("upstream", None))
            self.up[family] = s
        return s

    def _send_upstream(self, txid: int, p: Pending) -> None:
        server = p.upstreams[p.index]
        try:
            self._upstream_socket(_family(server)).sendto(wire.with_id(p.query, txid), (server, PORT))
        except OSError as exc:
            log.debug("cannot send to upstream %s: %s", server, exc)
        heapq.heappush(self.timeouts, (time.monotonic() + UPSTREAM_TIMEOUT, txid, p.index))

    def on_upstream(self, s: socket.socket) -> None:
        for _ in range(64):
            try:
                reply, source = s.recvfrom(65535)
            except (BlockingIOError, OSError):
                return
            if len(reply) < 12:
                continue
            txid = wire.message_id(reply)
            p = self.pending.get(txid)
            if p is None or source[0] != p.upstreams[p.index] or source[1] != PORT:
                continue  # late, or not from the server asked: never trusted
            del self.pending[txid]
            if wire.is_truncated(reply):
                self.pool.submit(self._tcp_retry, p)
                continue
            self._deliver(p, reply)

    def _deliver(self, p: Pending, reply: bytes) -> None:
        self.stats.forwarded(time.monotonic() - p.started)
        self.stats.count(p.net, p.q.type_name, "forwarded")
        reply = wire.with_id(reply, p.qid)
        if len(reply) > wire.udp_limit(p.query, p.q):
            reply = wire.truncate(reply, p.q)  # the asker comes back over TCP
        self._send(p.sock, reply, p.client)

    def _tcp_retry(self, p: Pending) -> None:
        """A truncated UDP answer: the same question to the same upstream over TCP."""
        server = p.upstreams[p.index]
        with self.stats.lock:
            self.stats.tcp_retries += 1
            self.stats.dirty = True
        try:
            reply = tcp_exchange(server, p.query)
        except OSError as exc:
            log.info("upstream %s over TCP: %s", server, exc)
            self.stats.upstream_failed(server)
            self.stats.count(p.net, p.q.type_name, "servfail")
            self._send(p.sock, wire.response(p.query, p.q, wire.RCODE_SERVFAIL, authoritative=False), p.client)
            return
        self._deliver(p, reply)

    def expire(self) -> None:
        now = time.monotonic()
        while self.timeouts and self.timeouts[0][0] <= now:
            _, txid, index = heapq.heappop(self.timeouts)
            p = self.pending.get(txid)
            if p is None or p.index != index:
                continue
            self.stats.upstream_failed(p.upstreams[index])
            if index + 1 < len(p.upstreams):
                p.index += 1
                self._send_upstream(txid, p)
                continue
            del self.pending[txid]
            self.stats.count(p.net, p.q.type_name, "servfail")
            self._send(p.sock, wire.response(p.query, p.q, wire.RCODE_SERVFAIL, authoritative=False), p.client)

    # --- TCP -----------------------------------------------------------------------------
    def on_tcp(self, s: socket.socket) -> None:
        try:
            conn, client = s.accept()
        except OSError:
            return
        net = self.net_of.get(s.fileno(), "")
        self.pool.submit(self._serve_tcp, conn, client, net)

    def _serve_tcp(self, conn: socket.socket, client: Any, net_name: str) -> None:
        conn.setblocking(True)
        conn.settimeout(TCP_IDLE)
        with conn:
            while True:
                try:
                    head = _read_exact(conn, 2)
                    if head is None:
                        return
                    query = _read_exact(conn, struct.unpack("!H", head)[0])
                    if query is None:
                        return
                except OSError:
                    return
                reply = self._answer_tcp(query, client, net_name)
                if reply is None:
                    return
                try:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    def _answer_tcp(self, query: bytes, client: Any, net_name: str) -> bytes | None:
        net = self.nets.get(net_name)
        q = wire.parse_question(query)
        if net is None or q is None:
            return wire.error_response(query, wire.RCODE_FORMERR)
        reply, result = self.answer_local(net, query, q, client[0])
        if reply is not None:
            self.stats.count(net.name, q.type_name, result)
            return reply
        started = time.monotonic()
        for server in self.upstreams_for(client[0]):
            try:
                answer = tcp_exchange(server, query)
            except OSError as exc:
                log.debug("upstream %s over TCP: %s", server, exc)
                self.stats.upstream_failed(server)
                continue
            self.stats.forwarded(time.monotonic() - started)
            self.stats.count(net.name, q.type_name, "forwarded")
            return answer
        self.stats.count(net.name, q.type_name, "servfail")
        return wire.response(query, q, wire.RCODE_SERVFAIL, authoritative=False)

    # --- loop ----------------------------------------------------------------------------
    def wake(self) -> None:
        try:
            self.wake_w.send(b"x")
        except OSError:
            pass

    def run(self) -> None:
        last_check = 0.0
        while not self.stop:
            if self.reload_wanted:
                self.reload_wanted = False
                self.load()
            timeout = 0.5
            if self.timeouts:
                timeout = max(0.0, min(timeout, self.timeouts[0][0] - time.monotonic()))
            for key, _ in self.sel.select(timeout):
                kind = key.data[0]
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if kind == "udp":
                    self.on_udp(sock)
                elif kind == "upstream":
                    self.on_upstream(sock)
                elif kind == "tcp":
                    self.on_tcp(sock)
                else:
                    try:
                        while sock.recv(64):
                            pass
                    except BlockingIOError:
                        pass
            self.expire()
            now = time.monotonic()
            if now - last_check >= 0.5:
                last_check = now
                if self.gone():
                    log.info("the namespace or directory this resolver serves is gone: exiting")
                    return
                try:
                    if self.state_path.stat().st_mtime_ns != self.state_mtime:
                        self.reload_wanted = True
                except OSError:
                    pass
                if self.stats.dirty:
                    self.write_stats()
        log.info("stopping")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        for s in list(self.sockets.values()) + list(self.up.values()):
            s.close()
        self.sel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description="bpfnet's embedded DNS resolver")
    parser.add_argument("--dir", required=True, help="the daemon's DNS directory (state.json, stats.json)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s resolver[%(process)d]: %(message)s")
    directory = Path(args.dir)
    lock = open(directory / LOCK, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log.error("another resolver serves %s", directory)
        return 1
    tmp = directory / f".{PIDFILE}.{os.getpid()}"
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, directory / PIDFILE)
    resolver = Resolver(directory)

    def on_hup(*_: Any) -> None:
        resolver.reload_wanted = True
        resolver.wake()

    def on_term(*_: Any) -> None:
        resolver.stop = True
        resolver.wake()

    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        resolver.run()
    finally:
        resolver.close()
        try:
            if (directory / PIDFILE).read_text().strip() == str(os.getpid()):
                (directory / PIDFILE).unlink()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
