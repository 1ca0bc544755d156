"""The controller's own instrumentation: API requests, endpoint add/remove times, reconcile.

Boundary: ordinary prometheus_client metrics in a registry handed in, updated
by the daemon as it works (not at scrape time). :class:`ControllerMetrics` is
what the services report to (it implements ``bpfnet.observer.Observer``) and what the
API server reports each request to (``api_request``); it decides nothing.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import CollectorRegistry

# Buckets for endpoint add/remove: netlink, veth creation and BPF attach take
# milliseconds; a slow kernel or a loaded host may take seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics:
    """Direct instrumentation of the controller's work, in a given registry.

    ``route`` must be the route *template* (``/v1/networks/{name}``), never the
    raw path, to keep label cardinality bounded.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.api_requests = Counter(
            "bpfnet_api_requests",
            "API requests handled, by route template, method and HTTP status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.endpoint_add_duration = Histogram(
            "bpfnet_endpoint_add_duration_seconds",
            "Time to add an endpoint (links, addresses, datapath), by result.",
            ("result",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.endpoint_remove_duration = Histogram(
            "bpfnet_endpoint_remove_duration_seconds",
            "Time to remove an endpoint, by result.",
            ("result",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "bpfnet_reconcile_errors",
            "Errors while bringing kernel state in step with the daemon's state.",
            registry=registry,
        )
        self.reconcile_repairs = Counter(
            "bpfnet_reconcile_repairs",
            "Differences between kernel and state that reconcile repaired, by kind.",
            ("kind",),
            registry=registry,
        )
        self.teardown_failures = Counter(
            "bpfnet_endpoint_teardown_failures",
            "Steps of endpoint removals that failed (the endpoint stays 'removing' until retried), by step.",
            ("step",),
            registry=registry,
        )
        self.network_overlap_count = Gauge(
            "bpfnet_network_overlaps",
            "Routes and addresses of the host that overlap a network's subnets, found by the start-up CHECK "
            "(they appeared after the network was made).",
            ("network",),
            registry=registry,
        )
        # Pre-create the label sets that always exist so that rate() works
        # from the first increment.
        for hist in (self.endpoint_add_duration, self.endpoint_remove_duration):
            for result in ("success", "error"):
                hist.labels(result)

    def api_request(self, route: str, method: str, status: int | str) -> None:
        """Count one handled API request."""
        self.api_requests.labels(route, method.upper(), str(status)).inc()

    # The services' observer --------------------------------------------
    def endpoint_added(self, seconds: float, ok: bool = True) -> None:
        """One endpoint add took ``seconds``; ``ok`` False if it failed (and was rolled back)."""
        self.endpoint_add_duration.labels("success" if ok else "error").observe(seconds)

    def endpoint_removed(self, seconds: float, ok: bool = True) -> None:
        """One endpoint removal took ``seconds``; ``ok`` False if a step failed."""
        self.endpoint_remove_duration.labels("success" if ok else "error").observe(seconds)

    def teardown_failed(self, step: str) -> None:
        """One step of an endpoint's removal failed (``datapath``, ``proxy``, ``veth``, ``netns``)."""
        self.teardown_failures.labels(step).inc()

    def reconcile_error(self) -> None:
        """Reconcile met a difference it could not repair (logged by the service)."""
        self.reconcile_errors.inc()

    def reconcile_repair(self, kind: str) -> None:
        """Reconcile repaired one difference of this kind (a short fixed word, e.g. ``veth``)."""
        self.reconcile_repairs.labels(kind).inc()

    def network_overlaps(self, network: str, count: int) -> None:
        """NETWORK overlaps COUNT host routes/addresses; 0 drops its series (no overlap, or removed)."""
        if count:
            self.network_overlap_count.labels(network).set(count)
        else:
            try:
                self.network_overlap_count.remove(network)
            except KeyError:
                pass  # never had one
