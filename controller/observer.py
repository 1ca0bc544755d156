"""What the services report as they work: a typed observer interface.

Boundary: services call an ``Observer`` (held by ``Runtime.observer``); the
controller metrics implement it. ``NullObserver`` is the default (tests,
tools); ``MetricsObserver`` adapts ``metrics.ControllerMetrics``, whose method
names predate this interface. No I/O here.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

log = logging.getLogger(__name__)


class Observer(Protocol):
    def endpoint_added(self, seconds: float, ok: bool) -> None:
        """An endpoint add finished (OK False: it failed and was rolled back)."""

    def endpoint_removed(self, seconds: float, ok: bool) -> None:
        """An endpoint removal finished (OK False: some step failed)."""

    def teardown_failed(self, step: str) -> None:
        """A step of an endpoint's removal failed (STEP: "datapath", "proxy", "veth", "netns")."""

    def reconcile_error(self) -> None:
        """Reconcile could not bring an object in step (it retries at the next start)."""

    def reconcile_repair(self, kind: str) -> None:
        """Reconcile found a difference of KIND (e.g. "address", "master") and repaired it."""


class NullObserver:
    """Observes nothing."""

    def endpoint_added(self, seconds: float, ok: bool) -> None:
        return None

    def endpoint_removed(self, seconds: float, ok: bool) -> None:
        return None

    def teardown_failed(self, step: str) -> None:
        return None

    def reconcile_error(self) -> None:
        return None

    def reconcile_repair(self, kind: str) -> None:
        return None


class ControllerMetricsLike(Protocol):
    """The part of metrics.ControllerMetrics that MetricsObserver forwards to."""

    def observe_endpoint_add(self, seconds: float, ok: bool = True) -> None: ...
    def observe_endpoint_remove(self, seconds: float, ok: bool = True) -> None: ...
    def reconcile_error(self) -> None: ...


class MetricsObserver:
    """Observer forwarding to the controller metrics.

    Repairs and failed removal steps are counted here by kind (``repairs``,
    ``teardown_failures``) and forwarded to the metrics'
    ``reconcile_repair(kind)`` and ``teardown_failed(step)`` once they have them.
    """

    def __init__(self, metrics: ControllerMetricsLike) -> None:
        self.metrics = metrics
        self.repairs: Counter[str] = Counter()
        self.teardown_failures: Counter[str] = Counter()

    def endpoint_added(self, seconds: float, ok: bool) -> None:
        self.metrics.observe_endpoint_add(seconds, ok)

    def endpoint_removed(self, seconds: float, ok: bool) -> None:
        self.metrics.observe_endpoint_remove(seconds, ok)

    def teardown_failed(self, step: str) -> None:
        self.teardown_failures[step] += 1
        forward = getattr(self.metrics, "teardown_failed", None)
        if forward is not None:
            forward(step)

    def reconcile_error(self) -> None:
        self.metrics.reconcile_error()

    def reconcile_repair(self, kind: str) -> None:
        self.repairs[kind] += 1
        forward = getattr(self.metrics, "reconcile_repair", None)
        if forward is not None:
            forward(kind)
