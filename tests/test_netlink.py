"""bpfnet.netlink.IPRoute: a long-lived netlink socket keeps nothing per request.

pyroute2 0.9 queues the kernel's late acknowledgement of every finished request where
nothing reads it; the daemon's RSS grew ~6 KiB per endpoint add and remove until
bpfnet.netlink drained that queue (bench/hardening.py soak).
"""

from __future__ import annotations

import threading

import pytest
from bpfnet.netlink import IPRoute

pytestmark = pytest.mark.kernel


def stray(ipr: IPRoute) -> int:
    queue = getattr(ipr.asyncore.local, "msg_queue", None)
    return 0 if queue is None else int(queue.root.qsize())


def test_requests_leave_no_messages_behind() -> None:
    with IPRoute() as ipr:
        for _ in range(200):
            assert ipr.link("get", index=1)[0]["index"] == 1
        assert stray(ipr) == 0
        left: list[int] = []

        def other_thread() -> None:  # pyroute2 keeps one queue per thread
            for _ in range(50):
                ipr.link("get", index=1)
            left.append(stray(ipr))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert left == [0]
        assert len(ipr.link("dump")) >= 1 and stray(ipr) == 0  # dumps still work
