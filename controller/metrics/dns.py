"""The embedded resolver's counters as Prometheus series, read at scrape time.

Boundary: like the other collectors it talks to nothing itself: the daemon hands in a callable
(``DnsService.stats``) returning what the resolver process last wrote (``stats.json``: it
writes at most twice a second, so a scrape may lag the queries by up to half a second). The
counters belong to the resolver process: they start at zero when it starts, which Prometheus'
rate() treats as a counter reset; a daemon restart does not reset them (the resolver stays).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

DnsStatsFn = Callable[[], dict[str, Any]]


class DnsCollector(Collector):
    def __init__(self, stats: DnsStatsFn, restarts: Callable[[], int]) -> None:
        self.stats = stats
        self.restarts = restarts

    def collect(self) -> Iterable[Metric]:
        doc = self.stats()
        up = GaugeMetricFamily("bpfnet_dns_resolver_up", "1 when the embedded DNS resolver process runs "
                               "(it outlives daemon restarts), else 0.")
        up.add_metric([], 1.0 if doc.get("running") else 0.0)
        yield up
        restarts = CounterMetricFamily("bpfnet_dns_resolver_restarts", "Times the daemon found the resolver "
                                       "dead and started it again.")
        restarts.add_metric([], float(self.restarts()))
        yield restarts
        queries = CounterMetricFamily(
            "bpfnet_dns_queries", "DNS queries to the embedded resolver by network, query type and result: "
            "datapath (answered by the eBPF program on the endpoint's veth), local (answered by the resolver "
            "process from the endpoints' names), nxdomain (a name of the network's own that does not "
            "exist, or a single label), forwarded (answered by an upstream), servfail (no upstream answered), "
            "formerr (not a query).", labels=["network", "type", "result"])
        for network, qtype, result, count in doc.get("queries", []):
            queries.add_metric([str(network), str(qtype), str(result)], float(count))
        yield queries
        failures = CounterMetricFamily("bpfnet_dns_upstream_failures", "Queries an upstream nameserver did not "
                                       "answer in time (or over TCP at all).", labels=["upstream"])
        for server, count in sorted(doc.get("upstream_failures", {}).items()):
            failures.add_metric([str(server)], float(count))
        yield failures
        latency = doc.get("forward_latency")
        hist = HistogramMetricFamily("bpfnet_dns_forward_duration_seconds", "Time from a query's arrival to "
                                     "the upstream's answer, for forwarded queries.")
        if latency:
            cumulative, buckets = 0, []
            for bound, count in zip([*latency["le"], float("inf")], latency["counts"], strict=True):
                cumulative += int(count)
                buckets.append(("+Inf" if bound == float("inf") else str(bound), float(cumulative)))
            hist.add_metric([], buckets, float(latency["sum"]))
        yield hist
