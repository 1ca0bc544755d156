"""Published ports and masquerading as Prometheus series, read at scrape time.

Boundary: like the other collectors it never talks to the kernel or the state: the daemon
hands in a callable (``OutsideService.counters``) that reads bpfnet's nftables counters
when Prometheus scrapes. A port or network that is gone has no series in the next scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
OutsideCountersFn = Callable[[], dict[str, Any]]
PORT_LABELS = ["network", "endpoint", "proto", "host_ip", "host_port", "endpoint_port"]


def _families() -> dict[str, CounterMetricFamily]:
    return {
        "packets": CounterMetricFamily(
            "bpfnet_published_port_packets", "Packets through a published port; direction = in "
            "(to the endpoint) | out (its replies). Counted in netfilter's forward/input/output hooks and, "
            "for established flows the fast path carries, by its programs.",
            labels=[*PORT_LABELS, "direction"]),
        "bytes": CounterMetricFamily(
            "bpfnet_published_port_bytes", "Bytes (IP packet lengths) through a published port, by direction.",
            labels=[*PORT_LABELS, "direction"]),
        "fast": CounterMetricFamily(
            "bpfnet_published_port_fastpath_packets", "Of bpfnet_published_port_packets, those the BPF fast "
            "path translated (uplink_ingress, ep_ingress) instead of conntrack; by direction.",
            labels=[*PORT_LABELS, "direction"]),
        "conns": CounterMetricFamily(
            "bpfnet_published_port_connections", "Connections (UDP: flows) DNATed to a published port.",
            labels=PORT_LABELS),
        "masq_bytes": CounterMetricFamily(
            "bpfnet_masquerade_bytes", "Bytes of a network's masqueraded traffic; direction = out (leaving "
            "the host) | in (replies).", labels=["network", "direction"]),
        "masq_packets": CounterMetricFamily(
            "bpfnet_masquerade_packets", "Packets of a network's masqueraded traffic, by direction.",
            labels=["network", "direction"]),
    }


class OutsideCollector(Collector):
    def __init__(self, counters: OutsideCountersFn) -> None:
        self._counters = counters

    def describe(self) -> Iterable[Metric]:
        return list(_families().values())

    def collect(self) -> Iterable[Metric]:
        fam = _families()
        try:
            data = self._counters()
        except Exception:  # a scrape never fails for this; the cause is logged
            log.exception("could not read bpfnet's nftables counters")
            data = {"ports": [], "masquerade": []}
        for p in data["ports"]:
            labels = [p["network"], p["endpoint"], p["proto"], p["host_ip"] or "", str(p["host_port"]),
                      str(p["endpoint_port"])]
            for d in ("in", "out"):
                fam["packets"].add_metric([*labels, d], p[f"{d}_packets"])
                fam["bytes"].add_metric([*labels, d], p[f"{d}_bytes"])
                fam["fast"].add_metric([*labels, d], p.get(f"fast_{d}_packets", 0))
            fam["conns"].add_metric(labels, p["connections"])
        for m in data["masquerade"]:
            for d in ("out", "in"):
                fam["masq_bytes"].add_metric([m["network"], d], m[f"{d}_bytes"])
                fam["masq_packets"].add_metric([m["network"], d], m[f"{d}_packets"])
        return list(fam.values())
