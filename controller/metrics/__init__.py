"""Prometheus metrics of bpfnet, read at scrape time.

Boundary: never talks to the kernel or the state; the daemon hands in a
snapshot callable (:mod:`bpfnet.stats`) and reports its work to
:class:`~bpfnet.metrics.controller_metrics.ControllerMetrics`. Modules:
``collector`` (bpfnet's families from one snapshot per scrape, and their
direct text renderer), ``exposition`` (the served body: format negotiation,
text writer, gzip), ``controller_metrics`` (API requests, endpoint timings,
reconcile) and ``server`` (the loopback ``/metrics`` HTTP server).
:func:`build_registry` puts a daemon's registry together.
"""

from __future__ import annotations

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.registry import CollectorRegistry

from ..snapshot import SnapshotFn
from .collector import BpfnetCollector
from .controller_metrics import ControllerMetrics


def build_registry(
    snapshot: SnapshotFn, *, process: bool = True
) -> tuple[CollectorRegistry, ControllerMetrics]:
    """A private registry with the bpfnet collector, the controller metrics and
    (if ``process``) the standard process/platform/GC collectors."""
    registry = CollectorRegistry()
    registry.register(BpfnetCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry, ControllerMetrics(registry)
