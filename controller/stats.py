"""Taking the snapshot that the metrics and ``GET /v1/stats`` report.

Boundary: a service that reads, never writes: the state rows of networks,
leases and ready endpoints, plus one batch read per BPF map through
``Datapath.counters()``. The result is the pure :class:`~bpfnet.snapshot.MetricsSnapshot`.
"""

from __future__ import annotations

from collections import Counter

from .config import NetworkConfig
from .networks import pools
from .runtime import Runtime
from .snapshot import ClusterStats, EndpointRef, MetricsSnapshot, NetworkStats


def take_snapshot(rt: Runtime, requested_mode: str, cluster: ClusterStats | None = None) -> MetricsSnapshot:
    """What one scrape (or GET /v1/stats) exports; ``requested_mode`` is the configured --datapath."""
    store = rt.store
    leases = store.leases()
    endpoints = [e for e in store.endpoints() if e.state == "ready"]
    # One pass over leases and endpoints, not one per network.
    in_use = Counter((lease.network, lease.family) for lease in leases)
    attached = Counter(e.network for e in endpoints)
    networks = []
    for row in store.networks():
        cfg = NetworkConfig.from_json(row.config)
        p4, p6 = pools(cfg)
        networks.append(NetworkStats(
            name=row.name,
            ipv4_total=p4.capacity(),
            ipv4_in_use=in_use[(row.name, 4)],
            endpoints=attached[row.name],
            ipv6_total=float(p6.capacity()) if p6 else (0.0 if cfg.ipv6 else None),
            ipv6_in_use=in_use[(row.name, 6)] if cfg.ipv6 else None,
            driver=cfg.driver,
        ))
    return MetricsSnapshot(
        networks=tuple(networks),
        endpoints=tuple(EndpointRef(e.name, e.network, e.id) for e in endpoints),
        datapath_info=rt.datapath.info(),
        counters=rt.datapath.counters(),
        requested_mode=requested_mode,
        tunnel=rt.datapath.tunnel_counters() if cluster is not None else {},
        cluster=cluster,
    )
