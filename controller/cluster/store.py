"""The cluster store on etcd: this node's registration, the overlay networks, address leases
and endpoints of every node, and a watch that keeps a ``ClusterView`` of them up to date.

Boundary: etcd I/O only, through ``etcd3gw`` (etcd's JSON gateway, /v3/): no kernel, no local
state. Every change that must not race is one etcd transaction (``txn``): a network is created
only if its name, its VNI and the networks' version counter are what was read (two hosts never
create overlapping networks or reuse a VNI); an endpoint's addresses are leased only if no
lease key exists for any of them (two hosts never hand out one address). What the key layout
is and how changes fold into the view is ``model.py``.

Threads: a keepalive thread refreshes this node's lease every TTL/3 and registers again when
the lease was lost (etcd was away longer than the TTL); a watch thread reads the whole prefix
(a resync), then watches from the next revision, and tells the listener after every batch
of events. When etcd is unreachable both retry every second; the view keeps what it had, so
traffic to known endpoints goes on, and calls that need etcd raise ``StoreUnavailable``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import requests
from etcd3gw import exceptions as etcd_errors
from etcd3gw.client import Etcd3Client

from ..errors import Conflict, NotFound, StoreUnavailable
from .model import (
    DEFAULT_TTL,
    ENDPOINTS,
    NETWORKS,
    NETWORKS_VERSION,
    PREFIX,
    ROUTED,
    ULA_PREFIX,
    VNIS,
    ClusterEndpoint,
    ClusterView,
    leases_prefix,
    network_key,
    node_key,
    vni_key,
)

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 2.0  # seconds: an API call waits at most this long for etcd
RETRY_INTERVAL = 1.0
RESTART_GRACE = 30  # seconds a stopped daemon's node stays registered (see EtcdStore.stop)
WATCH_IDLE = 30.0  # seconds without a byte before the watch is re-opened (from where it was)
TXN_OPS = 100  # operations per transaction (etcd refuses more than --max-txn-ops, default 128)

Listener = Callable[[ClusterView], None]


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


def _put(key: str, value: str, lease: int | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        op["lease"] = lease
    return {"request_put": op}


def _delete(key: str, prefix: bool = False) -> dict[str, Any]:
    op: dict[str, Any] = {"key": _b64(key)}
    if prefix:
        op["range_end"] = _range_end(key)
    return {"request_delete_range": op}


def _absent(key: str) -> dict[str, Any]:
    return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}


def _version_is(key: str, version: int) -> dict[str, Any]:
    return {"key": _b64(key), "result": "EQUAL", "target": "VERSION", "version": str(version)}


def _lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Newline-separated messages out of a stream's chunks, each as soon as it is complete
    (requests' iter_lines waits for a whole chunk_size)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
    if buf:
        yield buf


class EtcdStore:
    """One node's connection to the cluster store (see the module docstring)."""

    def __init__(self, endpoints: list[tuple[str, int]], node: str, address: str,
                 ttl: int = DEFAULT_TTL, timeout: float = REQUEST_TIMEOUT) -> None:
        self.endpoints = endpoints
        self.node = node
        self.address = address
        self.ttl = ttl
        self.timeout = timeout
        self._which = 0
        self._client = self._make_client()
        self.view = ClusterView()
        self.revision = 0
        self.requests = 0  # every request sent to etcd: the bench's etcd load
        self.keepalives = 0  # of which lease keepalives (a steady 3 per TTL)
        self.resyncs = 0  # whole-prefix reads (start, and after every lost watch)
        self.connected = False
        self._lease: int | None = None
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()  # the view and the revision
        self._watch_response: requests.Response | None = None

    # -- plumbing ----------------------------------------------------------------------------
    def _make_client(self) -> Etcd3Client:
        host, port = self.endpoints[self._which % len(self.endpoints)]
        return Etcd3Client(host=host, port=port, timeout=self.timeout, api_path="/v3/")

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{h}:{p}" for h, p in self.endpoints)

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        """One request; on a connection failure the next endpoint is tried once each."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            self.requests += 1
            try:
                return self._client.post(self._client.get_url(path), json=body)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as exc:
                last = exc
                self._which += 1
                self._client = self._make_client()
            except etcd_errors.Etcd3Exception as exc:
                raise StoreUnavailable(f"the cluster store {self.url} answered with an error: {exc}") from None
        self.connected = False
        raise StoreUnavailable(f"the cluster store {self.url} cannot be reached ({type(last).__name__}); "
                               "bridge networks and traffic between existing endpoints are not affected")

    def _range(self, prefix: str) -> tuple[list[tuple[str, bytes]], int]:
        out = self._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        kvs = [(_unb64(kv["key"]).decode(), _unb64(kv.get("value", ""))) for kv in out.get("kvs", [])]
        return kvs, int(out["header"]["revision"])

    def _get(self, key: str) -> tuple[bytes | None, int]:
        """(value, version) of KEY; (None, 0) when absent."""
        value, version, _ = self._get_kv(key)
        return value, version

    def _get_kv(self, key: str) -> tuple[bytes | None, int, int]:
        """(value, version, lease id) of KEY; (None, 0, 0) when absent."""
        out = self._post("/kv/range", {"key": _b64(key)})
        kvs = out.get("kvs", [])
        if not kvs:
            return None, 0, 0
        kv = kvs[0]
        return _unb64(kv.get("value", "")), int(kv.get("version", 0)), int(kv.get("lease", 0))

    def _txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> bool:
        out = self._post("/kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(out.get("succeeded", False))

    # -- lifecycle ---------------------------------------------------------------------------
    def connect(self) -> None:
        """Reach etcd and register this node (StoreUnavailable if it cannot be reached).
        A node name held by a live lease of another address is refused: two daemons with one
        name would remove each other's endpoints."""
        self._post("/maintenance/status", {})
        raw, _, lease = self._get_kv(node_key(self.node))
        if raw is not None:
            other = json.loads(raw)
            if other.get("address") != self.address:
                raise Conflict(f"node name {self.node!r} is registered by {other.get('address')} and its lease is "
                               "alive; pick another --node-name, or wait for its lease to expire "
                               f"({self.ttl} s)")
        # A restart: the node key is replaced (a put, never a delete: the other nodes keep this
        # node's endpoints in their tables without a blink), then the previous daemon's lease,
        # which holds nothing any more, is dropped.
        self._register()
        if raw is not None and lease:
            self._post("/kv/lease/revoke", {"ID": lease})
        self.resync()
        self.connected = True
        # Keep the lease alive from now on: compiling the datapath may take longer than the TTL.
        self._start_thread("etcd-keepalive", self._keepalive_loop)

    def _keepalive(self, lease: int) -> int:
        """Refresh LEASE; its remaining TTL (<= 0: it expired)."""
        self.keepalives += 1
        out = self._post("/lease/keepalive", {"ID": lease})
        return int(out.get("result", {}).get("TTL", -1))

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _register(self) -> None:
        out = self._post("/lease/grant", {"TTL": self.ttl})
        lease = int(out["ID"])
        value = json.dumps({"name": self.node, "address": self.address, "started": time.time()})
        self._post("/kv/put", _put(node_key(self.node), value, lease)["request_put"])
        self._lease = lease
        log.info("cluster: node %s (%s) registered in %s, lease %x, TTL %d s", self.node, self.address,
                 self.url, lease, self.ttl)

    def start(self, listener: Listener | None = None) -> None:
        """Start the watch thread (the keepalive runs since connect); LISTENER hears every change of
        the view."""
        if listener is not None:
            self._listeners.append(listener)
        self._start_thread("etcd-watch", self._watch_loop)

    def stop(self, revoke: bool = False) -> None:
        """Stop the threads. REVOKE: drop this node's lease at once (the others remove its
        endpoints now, not after the TTL). Otherwise (a daemon stopping, maybe to restart) the
        node stays registered for RESTART_GRACE seconds under a lease nobody keeps alive: a
        restart within it is seamless for the other nodes (the next daemon replaces the key);
        a daemon that does not come back leaves the cluster when it runs out."""
        self._stop.set()
        # The registration first, and nothing waited for: the threads are daemon threads (closing
        # a streaming response under its reader can block for seconds), and a slow stop would let
        # the lease run out before the next daemon takes it over.
        if self._lease is None:
            return
        try:
            if revoke:
                self._post("/kv/lease/revoke", {"ID": self._lease})
                return
            grace = int(self._post("/lease/grant", {"TTL": max(self.ttl, RESTART_GRACE)})["ID"])
            value = json.dumps({"name": self.node, "address": self.address, "started": time.time()})
            self._post("/kv/put", _put(node_key(self.node), value, grace)["request_put"])
            self._post("/kv/lease/revoke", {"ID": self._lease})
        except StoreUnavailable:
            pass  # the lease runs out by itself

    def _keepalive_loop(self) -> None:
        interval = max(self.ttl / 3, 0.5)
        while not self._stop.wait(interval):
            try:
                if self._lease is None:
                    self._register()
                    continue
                if self._keepalive(self._lease) <= 0:
                    log.warning("cluster: this node's lease expired (etcd was away for more than %d s): "
                                "registering again", self.ttl)
                    self._register()
                if not self.connected:
                    log.info("cluster: the store %s is reachable again", self.url)
                    self.connected = True
            except StoreUnavailable as exc:
                if self.connected:
                    log.warning("cluster: %s", exc.message)
                self.connected = False

    def resync(self) -> None:
        """Read the whole prefix into a new view (after a start or a lost watch)."""
        kvs, revision = self._range(PREFIX)
        view = ClusterView()
        for key, value in kvs:
            view.apply(key, value)
        with self._lock:
            self.view, self.revision = view, revision
            self.resyncs += 1
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self.view)
            except Exception:
                log.exception("cluster: a listener failed")

    def _watch_loop(self) -> None:
        need_resync = False
        while not self._stop.is_set():
            try:
                if need_resync:
                    self.resync()
                    need_resync = False
                for batch in self._watch_batches(self.revision + 1):
                    with self._lock:
                        for key, value, revision in batch:
                            self.view.apply(key, value)
                            self.revision = max(self.revision, revision)
                    self._notify()
            except (StoreUnavailable, requests.RequestException, OSError, ValueError, KeyError,
                    AttributeError) as exc:  # AttributeError: the stream closed under it (stop)
                if self._stop.is_set():
                    return
                log.debug("cluster: watch ended (%s); resyncing", exc)
                need_resync = True
                self._stop.wait(RETRY_INTERVAL)

    def _watch_batches(self, start: int) -> Iterator[list[tuple[str, bytes | None, int]]]:
        """Batches of (key, value or None, revision) from START on; returns when the stream ends
        or is idle for WATCH_IDLE seconds (the caller re-opens it from where it was)."""
        body = {"create_request": {"key": _b64(PREFIX), "range_end": _range_end(PREFIX),
                                   "start_revision": str(start)}}
        self.requests += 1
        resp = self._client.session.post(self._client.get_url("/watch"), json=body, stream=True,
                                         timeout=(self.timeout, WATCH_IDLE))
        self._watch_response = resp
        try:
            for line in _lines(resp.iter_content(chunk_size=None)):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("compact_revision") and int(result["compact_revision"]) > 0:
                    raise ValueError("watch compacted")
                if result.get("canceled"):
                    raise ValueError("watch canceled")
                batch = []
                for ev in result.get("events", []):
                    kv = ev["kv"]
                    key = _unb64(kv["key"]).decode()
                    value = None if ev.get("type") == "DELETE" else _unb64(kv.get("value", ""))
                    batch.append((key, value, int(kv.get("mod_revision", 0))))
                if batch:
                    yield batch
        except requests.exceptions.ConnectionError as exc:
            if "timed out" in str(exc).lower():
                return  # idle: re-open from the last revision
            raise
        finally:
            resp.close()

    # -- queries -----------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Every node registered now, from etcd (StoreUnavailable when unreachable)."""
        kvs, _ = self._range(PREFIX + "nodes/")
        out = []
        for _, value in kvs:
            d = json.loads(value)
            out.append({"name": d["name"], "address": d["address"], "started": d.get("started"),
                        "state": "alive", "self": d["name"] == self.node})
        return sorted(out, key=lambda n: n["name"])

    def leased(self, network: str) -> set[str]:
        """The addresses of NETWORK leased anywhere in the cluster, read now."""
        kvs, _ = self._range(leases_prefix(network))
        return {key.rpartition("/")[2] for key, _ in kvs}

    def networks(self) -> dict[str, dict[str, Any]]:
        kvs, _ = self._range(NETWORKS)
        return {key[len(NETWORKS):]: json.loads(value) for key, value in kvs}

    # -- changes -----------------------------------------------------------------------------
    def create_network(self, name: str, config: dict[str, Any], vni: int,
                       check: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """Store an overlay network. CHECK(the networks now) raises when CONFIG clashes with one
        (overlapping subnet); the transaction then makes sure nothing changed in between."""
        _, version = self._get(NETWORKS_VERSION)
        check(self.networks())
        owner, _ = self._get(vni_key(vni))
        if owner is not None:
            raise Conflict(f"VNI {vni} is in use by network {owner.decode()!r}")
        ok = self._txn(
            [_version_is(NETWORKS_VERSION, version), _absent(network_key(name)), _absent(vni_key(vni))],
            [_put(network_key(name), json.dumps(config, sort_keys=True)), _put(vni_key(vni), name),
             _put(NETWORKS_VERSION, str(version + 1))],
        )
        if not ok:
            raise Conflict(f"network {name!r}: another node created or removed a network meanwhile; retry")

    def claim_ula_prefix(self, mine: str) -> str:
        """The cluster's IPv6 ULA prefix: the one stored, else MINE, stored unless another node's
        won the race (then that one)."""
        raw, _ = self._get(ULA_PREFIX)
        if raw is None:
            self._txn([_absent(ULA_PREFIX)], [_put(ULA_PREFIX, mine)])
            raw, _ = self._get(ULA_PREFIX)
        return raw.decode() if raw is not None else mine

    def taken_vnis(self) -> set[int]:
        kvs, _ = self._range(VNIS)
        return {int(key[len(VNIS):]) for key, _ in kvs}

    def delete_network(self, name: str, vni: int) -> None:
        """Remove an overlay network and its leases; refused while any node has endpoints on it."""
        kvs, _ = self._range(f"{PREFIX}endpoints/{name}/")
        if kvs:
            nodes = sorted({key.split("/")[-2] for key, _ in kvs})
            raise Conflict(f"network {name!r} has {len(kvs)} endpoint(s) on node(s) {', '.join(nodes)}; "
                           "remove them first")
        _, version = self._get(NETWORKS_VERSION)
        self._txn([], [_delete(network_key(name)), _delete(vni_key(vni)),
                       _delete(leases_prefix(name), prefix=True), _put(NETWORKS_VERSION, str(version + 1))])

    def claim_endpoint(self, ep: ClusterEndpoint) -> bool:
        """Lease EP's addresses and store it, in one transaction; False when an address is taken."""
        owner = json.dumps({"node": ep.node, "endpoint": ep.name})
        keys = [f"{leases_prefix(ep.network)}{a}" for a in ep.addresses]
        return self._txn([_absent(k) for k in keys],
                         [*(_put(k, owner) for k in keys), _put(ep.key, ep.to_json())])

    def put_endpoint(self, ep: ClusterEndpoint) -> None:
        """Store EP again (a restarted node whose record is gone but whose leases are its own)."""
        self._post("/kv/put", _put(ep.key, ep.to_json())["request_put"])

    def release_endpoint(self, ep: ClusterEndpoint) -> None:
        """Delete EP and the leases of its addresses that are its own."""
        ops = [_delete(ep.key)]
        for a in ep.addresses:
            raw, _ = self._get(f"{leases_prefix(ep.network)}{a}")
            if raw is not None and json.loads(raw) == {"node": ep.node, "endpoint": ep.name}:
                ops.append(_delete(f"{leases_prefix(ep.network)}{a}"))
        self._txn([], ops)

    def owns_leases(self, ep: ClusterEndpoint) -> bool:
        """Every address of EP is leased to EP itself (read now)."""
        owner = {"node": ep.node, "endpoint": ep.name}
        for a in ep.addresses:
            raw, _ = self._get(f"{leases_prefix(ep.network)}{a}")
            if raw is None or json.loads(raw) != owner:
                return False
        return True

    def remove_node(self, node: str) -> dict[str, int]:
        """Forget a node that is gone for good: its endpoints' records, the address leases they
        hold and its routed networks' blocks, in transactions that each hold only while the node
        is not registered (a node that comes back meanwhile keeps the rest). Refused for a live
        node. How many endpoints and blocks were removed."""
        if self._get(node_key(node))[0] is not None:
            raise Conflict(f"node {node!r} is alive (its lease is held): stop its daemon and wait for the lease "
                           "to expire first")
        endpoints, _ = self._range(ENDPOINTS)
        ops: list[dict[str, Any]] = []
        n_endpoints = n_blocks = 0
        for key, value in endpoints:
            record = ClusterEndpoint.from_json(value)
            if record.node != node:
                continue
            n_endpoints += 1
            ops.append(_delete(key))
            owner = {"node": node, "endpoint": record.name}
            for a in record.addresses:
                lease = f"{leases_prefix(record.network)}{a}"
                raw, _ = self._get(lease)
                if raw is not None and json.loads(raw) == owner:
                    ops.append(_delete(lease))
        blocks, _ = self._range(ROUTED)
        for key, value in blocks:
            if "/blocks/" in key and json.loads(value).get("node") == node:
                n_blocks += 1
                ops.append(_delete(key))
        if not ops:
            raise NotFound(f"no node {node!r} in the cluster: no endpoint record or block names it")
        for i in range(0, len(ops), TXN_OPS):
            if not self._txn([_absent(node_key(node))], ops[i:i + TXN_OPS]):
                raise Conflict(f"node {node!r} registered again while it was being removed; nothing more removed")
        log.info("cluster: node %s removed: %d endpoint record(s), %d block(s)", node, n_endpoints, n_blocks)
        return {"endpoints": n_endpoints, "blocks": n_blocks}

    def remove_endpoints(self, eps: Iterable[ClusterEndpoint]) -> None:
        for ep in eps:
            self.release_endpoint(ep)
