"""bpfnet.links.create_veth on the real kernel, with and without the echoed RTM_NEWLINK.

Kernels up to 6.1 ignore NLM_F_ECHO on RTM_NEWLINK; the no-echo case is made
here by withholding the echoed messages from create_veth, so 6.18 exercises
the path 6.1 takes.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bpfnet import links, netns
from pyroute2 import IPRoute

pytestmark = pytest.mark.kernel


class _NoEcho:
    """An IPRoute whose link() calls return no messages for requests with NLM_F_ECHO."""

    def __init__(self, ipr: IPRoute) -> None:
        self._ipr = ipr
        self.lookups = 0

    def link(self, command: Any, **kwargs: Any) -> Any:
        result = list(self._ipr.link(command, **kwargs))
        if isinstance(command, tuple):  # (RTM_NEWLINK, flags): the echoed create
            return []
        self.lookups += command == "get"
        return result


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    names = (f"bpfnet-tl{uuid.uuid4().hex[:8]}-h", f"bpfnet-tl{uuid.uuid4().hex[:8]}-e")
    try:
        for n in names:
            netns.create(n)
        yield names
    finally:
        for n in names:
            netns.remove(n)


@pytest.mark.parametrize("echo", [True, False], ids=["echo", "no-echo"])
def test_create_veth_returns_both_ifindexes(two_namespaces: tuple[str, str], echo: bool) -> None:
    host_ns, ep_ns = two_namespaces
    with IPRoute(netns=host_ns) as ipr:
        bridge, _ = links.ensure_bridge(ipr, "bnvt0", "02:42:ac:11:00:99", 1500)
        api: Any = ipr if echo else _NoEcho(ipr)
        index, eth0 = links.create_veth(api, "vetht0", ep_ns, "02:42:ac:11:00:02", 1500, bridge, up=True)
        if not echo:
            assert api.lookups == 1  # the fallback: one RTM_GETLINK of the host end
        link = ipr.get_links(index)[0]
        assert link.get_attr("IFLA_IFNAME") == "vetht0"
        assert link.get_attr("IFLA_MASTER") == bridge
    with IPRoute(netns=ep_ns) as inner:
        peer = inner.get_links(eth0)[0]
        assert peer.get_attr("IFLA_IFNAME") == "eth0"
        assert peer.get_attr("IFLA_ADDRESS") == "02:42:ac:11:00:02"
