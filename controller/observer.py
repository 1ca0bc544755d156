"""What the services report as they work: a typed observer interface.

Boundary: services call an ``Observer`` (held by ``Runtime.observer``); the
controller metrics (``metrics.controller_metrics.ControllerMetrics``) implement
it. ``NullObserver`` is the default (tests, tools). No I/O here.
"""

from __future__ import annotations

from typing import Protocol


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

    def network_overlaps(self, network: str, count: int) -> None:
        """The CHECK found COUNT host routes/addresses overlapping NETWORK's subnets (0: none, or removed)."""


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

    def network_overlaps(self, network: str, count: int) -> None:
        return None
