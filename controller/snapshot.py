"""What one scrape (or ``GET /v1/stats``) reports: the snapshot types and the stats document.

Boundary: pure data. :mod:`bpfnet.stats` takes a :class:`MetricsSnapshot`
from the store and the datapath; the metrics collector (:mod:`bpfnet.metrics`)
turns it into Prometheus families and :func:`stats_document` into the JSON
the API serves to ``bpfnet stats`` and ``bpfnet top``. Counter key names come
from :mod:`bpfnet.datapath.counters`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .datapath.counters import COUNTER_KEYS, DIRECTIONS


@dataclass(frozen=True)
class NetworkStats:
    """IPAM and endpoint count of one network at scrape time.

    ``ipv6_total`` may be astronomically large (a /64 holds 2**64 addresses),
    so it is exported as a float; ``None`` means the network has no IPv6.
    """

    name: str
    ipv4_total: int
    ipv4_in_use: int
    endpoints: int
    ipv6_total: float | None = None
    ipv6_in_use: int | None = None
    driver: str = "bridge"  # bpfnet.drivers: the network's kind (network create --driver)


@dataclass(frozen=True)
class EndpointRef:
    """The names of one endpoint and its slot id in the datapath counters."""

    name: str
    network: str
    id: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape exports, taken from the daemon's state.

    ``counters`` is ``Datapath.counters()`` verbatim (keyed by endpoint id) and
    ``datapath_info`` is ``Datapath.info()``. Counters of ids that no endpoint
    in ``endpoints`` owns are ignored; endpoints without counters (bridge mode)
    get no traffic series. ``requested_mode`` is the datapath mode the operator
    configured; when it differs from ``datapath_info["mode"]`` the datapath
    fell back (exported as a label of ``bpfnet_datapath_info``).
    """

    networks: tuple[NetworkStats, ...] = ()
    endpoints: tuple[EndpointRef, ...] = ()
    datapath_info: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    requested_mode: str | None = None
    # overlay networks: what arrived through the tunnel (Datapath.tunnel_counters; empty without
    # an overlay) and the cluster as this node sees it (None: not in a cluster)
    tunnel: Mapping[str, int] = field(default_factory=dict)
    cluster: ClusterStats | None = None


@dataclass(frozen=True)
class ClusterStats:
    """This node's view of the cluster at scrape time."""

    store_up: bool
    nodes_alive: int
    nodes_down: int
    remote_endpoints: int
    store_requests: int  # requests sent to etcd since the start


SnapshotFn = Callable[[], MetricsSnapshot]


def stats_document(snap: MetricsSnapshot) -> dict[str, Any]:
    """``GET /v1/stats`` (JSON-safe): ``{"mode", "endpoints": [{"name", "network", "counters"}]}``.

    Endpoints with counters come first, by network and name; endpoints without
    counters (bridge mode) follow with ``"counters": null``.
    """
    out: list[dict[str, Any]] = []
    for ep in sorted(snap.endpoints, key=lambda e: (e.network, e.name)):
        c = snap.counters.get(ep.id)
        if c is None:
            continue
        counters: dict[str, Any] = {k: int(c.get(k, 0)) for k in COUNTER_KEYS}
        drops = c.get("drops") or {}
        counters["drops"] = {
            d: {str(r): int(v) for r, v in (drops.get(d) or {}).items()} for d in DIRECTIONS
        }
        out.append({"name": ep.name, "network": ep.network, "counters": counters})
    listed = {(e["network"], e["name"]) for e in out}
    out += [{"name": e.name, "network": e.network, "counters": None}
            for e in snap.endpoints if (e.network, e.name) not in listed]
    doc: dict[str, Any] = {"mode": snap.datapath_info.get("mode"), "endpoints": out}
    if snap.tunnel:
        doc["tunnel"] = {k: int(v) for k, v in snap.tunnel.items()}
    return doc
