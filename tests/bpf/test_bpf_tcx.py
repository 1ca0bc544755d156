"""tcx attachment: links pinned under pin_dir/links (ep_ingress and
bridge_egress; ep_egress stays a cls_bpf filter, see ebpf.TC_IN_TCX_MODE), swapped atomically on
restart, removed with their endpoint, as stale pins and by cleanup; the upgrade
from cls_bpf filters; the probe and the fallback to clsact + cls_bpf.

What the kernel has attached is read with BPF_PROG_QUERY and `tc filter show`,
never from our own pins."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator

import pytest
from bpf_env import inside, make_links, netns, pin_dir
from bpf_packets import ETH_IP, eth, ipv4, udp
from bpfnet.datapath import abi, bpfsys, make_datapath, probe, tcx
from bpfnet.datapath.ebpf import EbpfDatapath
from dp_helpers import TC_ACT_REDIRECT, run

pytestmark = pytest.mark.kernel

HOOK = {"ingress": bpfsys.BPF_TCX_INGRESS, "egress": bpfsys.BPF_TCX_EGRESS}
# tcx needs Linux 6.6+: on older kernels (make vm-test KERNEL=6.1) only the fallback tests run.
needs_tcx = pytest.mark.skipif("not probe.tcx_available()", reason="this kernel has no tcx (Linux 6.6+)")


def kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int(re.match(r"\d+", minor).group())  # type: ignore[union-attr]


@pytest.fixture
def ns_links() -> Iterator[tuple[str, str, dict, dict]]:
    with netns() as ns, pin_dir() as pins, inside(ns):
        nets, eps = make_links([("brA", "10.1", True)], [("a1", "brA", 2), ("a2", "brA", 3)])
        yield ns, pins, nets, eps


def tcx_on(ifindex: int, direction: str) -> list[tuple[int, int]]:
    """(prog id, link id) on the device's tcx hook, as the kernel reports them."""
    try:
        return bpfsys.tcx_query(ifindex, HOOK[direction])
    except OSError:
        return []  # device gone


def filters_on(ns: str, dev: str, direction: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev,
                          direction], capture_output=True, text=True, check=False).stdout
    return [int(x) for x in re.findall(r" id (\d+)", out)]


def a1_to_a2(eps: dict) -> bytes:
    a1, a2 = eps["a1"], eps["a2"]
    return eth(a2.mac, a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(a2.ipv4), payload=udp()))


def prog_ids(dp: EbpfDatapath) -> dict[str, int]:
    return {p["name"]: p["id"] for p in dp.info()["programs"]}


@needs_tcx
def test_probe_finds_tcx_and_auto_picks_it() -> None:
    assert probe.tcx_available()  # this machine's kernel (6.18) has tcx
    assert probe.probe_attach() == abi.ATTACH_TCX
    dp = make_datapath("redirect", pin_dir="/sys/fs/bpf/bpfnet-test-unused")
    assert isinstance(dp, EbpfDatapath) and dp.attach == "tcx" and dp.info()["attach"] == "tcx"


def test_probe_matches_the_kernel_version() -> None:
    assert probe.tcx_available() == (kernel_version() >= (6, 6))
    assert probe.probe_attach() == ("tcx" if kernel_version() >= (6, 6) else "tc")


def test_auto_falls_back_to_tc_without_tcx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "tcx_available", lambda: False)
    dp = make_datapath("redirect", pin_dir="/sys/fs/bpf/bpfnet-test-unused")
    assert isinstance(dp, EbpfDatapath) and dp.attach == "tc"
    forced = make_datapath("redirect", pin_dir="/x", attach="tcx")
    assert isinstance(forced, EbpfDatapath) and forced.attach == "tcx"
    with pytest.raises(ValueError):
        EbpfDatapath(mode="redirect", pin_dir="/x", attach="xdp")


@needs_tcx
def test_links_are_pinned_attached_and_replaced_atomically(ns_links) -> None:
    ns, pins, nets, eps = ns_links
    a1, br = eps["a1"], nets["brA"]
    dp1 = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tcx")
    dp2 = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tcx")
    try:
        dp1.start(list(nets.values()), list(eps.values()))
        ids1 = prog_ids(dp1)
        assert sorted(os.listdir(os.path.join(pins, "links"))) == sorted(
            [f"{e.host_ifindex}-ingress" for e in eps.values()] + [f"{br.bridge_ifindex}-egress"])
        ingress = tcx_on(a1.host_ifindex, "ingress")
        assert [p for p, _ in ingress] == [ids1["ep_ingress"]]
        # ep_egress: a filter (one grace period per endpoint add instead of two)
        assert tcx_on(a1.host_ifindex, "egress") == [] and filters_on(ns, "h-a1", "egress") == [ids1["ep_egress"]]
        assert {p["name"]: p["via"] for p in dp1.info()["programs"]} == {
            "ep_ingress": "tcx", "ep_egress": "tc", "bridge_egress": "tcx"}
        assert [p for p, _ in tcx_on(br.bridge_ifindex, "egress")] == [ids1["bridge_egress"]]
        assert tcx_on(br.bridge_ifindex, "ingress") == []
        assert filters_on(ns, "h-a1", "ingress") == []  # no cls_bpf on the ingress hook
        assert dp1.check_endpoint(a1) == []
        dp1.close()  # the daemon stops: the pins keep the links attached
        assert tcx_on(a1.host_ifindex, "ingress") == ingress

        dp2.start(list(nets.values()), list(eps.values()))  # restart
        ids2 = prog_ids(dp2)
        assert ids2["ep_ingress"] != ids1["ep_ingress"]
        after = tcx_on(a1.host_ifindex, "ingress")
        # BPF_LINK_UPDATE: the same link now runs the new program (never two, never none)
        assert after == [(ids2["ep_ingress"], ingress[0][1])]
        assert run(dp2, "ep_ingress", a1_to_a2(eps), a1.host_ifindex).verdict == TC_ACT_REDIRECT
    finally:
        dp1.close()
        dp2.cleanup()
    assert not os.path.exists(pins)
    assert tcx_on(a1.host_ifindex, "ingress") == [] and tcx_on(br.bridge_ifindex, "egress") == []


@needs_tcx
def test_remove_and_check_endpoint(ns_links) -> None:
    ns, pins, nets, eps = ns_links
    a1, a2 = eps["a1"], eps["a2"]
    dp = EbpfDatapath(mode="redirect", pin_dir=pins, attach="tcx")
    try:
        dp.start(list(nets.values()), list(eps.values()))
        dp.remove_endpoint(a2)
        assert tcx_on(a2.host_ifindex, "ingress") == [] and filters_on(ns, "h-a2", "egress") == []
        assert not os.path.exists(tcx.link_path(pins, a2.host_ifindex, "ingress"))
        dp.remove_endpoint(a2)  # idempotent
        # a link or filter removed behind our back: the controller's check sees it, re-adding fixes it
        tcx.detach(pins, a1.host_ifindex, "ingress")
        assert dp.check_endpoint(a1) == ["filters"]
        dp.add_endpoint(a1)
        assert dp.check_endpoint(a1) == []
        subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "del", "dev", "h-a1", "egress"], check=True)
        assert dp.check_endpoint(a1) == ["filters"]
        dp.add_endpoint(a1)
        assert dp.check_endpoint(a1) == []
        dp.detach_network(nets["brA"])
        assert tcx_on(nets["brA"].bridge_ifindex, "egress") == []
    finally:
        dp.cleanup()


@needs_tcx
def test_stale_link_pins_are_removed(ns_links) -> None:
    """A device deleted while the daemon was down: the kernel detached its links,
    their pins stayed; the ifindex may come back as another device."""
    from pyroute2 import IPRoute

    _ns, pins, nets, eps = ns_links
    a1, a2 = eps["a1"], eps["a2"]
    dp = EbpfDatapath(mode="redirect", pin_dir=pins, attach="tcx")
    try:
        dp.start(list(nets.values()), list(eps.values()))
        dp.close()
        with IPRoute() as ipr:
            ipr.link("del", index=a2.host_ifindex)
        stale = tcx.link_path(pins, a2.host_ifindex, "ingress")
        fd = bpfsys.obj_get(stale)
        try:
            assert bpfsys.link_info(fd).ifindex == 0  # auto-detached, pin still there
        finally:
            os.close(fd)
        # as after an ifindex reuse, a dead link pinned under a live device's name:
        # it must be replaced (a new link), not updated
        a1_in = tcx.link_path(pins, a1.host_ifindex, "ingress")
        tcx.detach(pins, a1.host_ifindex, "ingress")
        os.rename(stale, a1_in)
        assert tcx_on(a1.host_ifindex, "ingress") == []
        dp = EbpfDatapath(mode="redirect", pin_dir=pins, attach="tcx")
        dp.start(list(nets.values()), [a1])
        assert tcx.pinned(pins) == sorted(
            [(a1.host_ifindex, "ingress"), (nets["brA"].bridge_ifindex, "egress")])
        assert [p for p, _ in tcx_on(a1.host_ifindex, "ingress")] == [prog_ids(dp)["ep_ingress"]]
        assert dp.check_endpoint(a1) == []
    finally:
        dp.cleanup()
    assert not os.path.exists(pins)


@needs_tcx
def test_upgrade_from_cls_bpf_filters(ns_links) -> None:
    ns, pins, nets, eps = ns_links
    a1 = eps["a1"]
    old = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tc")
    new = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tcx")
    try:
        old.start(list(nets.values()), list(eps.values()))
        assert len(filters_on(ns, "h-a1", "ingress")) == 1 and tcx_on(a1.host_ifindex, "ingress") == []
        run(old, "ep_ingress", a1_to_a2(eps), a1.host_ifindex)
        before = old.counters()
        old.close()
        new.start(list(nets.values()), list(eps.values()))
        assert new.counters() == before
        for dev in ("h-a1", "h-a2", "brA"):
            assert filters_on(ns, dev, "ingress") == []
        # ep_egress stays a filter (replaced in place), the bridge's moved to its link
        assert filters_on(ns, "h-a1", "egress") == [prog_ids(new)["ep_egress"]]
        assert filters_on(ns, "brA", "egress") == []
        out = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", "brA"],
                             capture_output=True, text=True, check=True).stdout
        assert "clsact" not in out
        assert [p for p, _ in tcx_on(a1.host_ifindex, "ingress")] == [prog_ids(new)["ep_ingress"]]
        assert new.check_endpoint(a1) == []
        new.close()
        # and a daemon forced back to tc drops the links, so one program runs per hook
        old = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tc")
        old.start(list(nets.values()), list(eps.values()))
        assert tcx_on(a1.host_ifindex, "ingress") == [] and tcx.pinned(pins) == []
        assert len(filters_on(ns, "h-a1", "ingress")) == 1
    finally:
        old.close()
        new.close()
        EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tc").cleanup()
    assert tcx_on(a1.host_ifindex, "ingress") == [] and filters_on(ns, "h-a1", "ingress") == []


@needs_tcx
def test_cleanup_from_a_fresh_process_removes_links(ns_links) -> None:
    _ns, pins, nets, eps = ns_links
    dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach="tcx")
    dp.start(list(nets.values()), list(eps.values()))
    dp.close()
    # --cleanup never probes: a datapath set to tc still removes tcx links
    EbpfDatapath(mode="redirect", pin_dir=pins, attach="tc").cleanup()
    assert not os.path.exists(pins)
    for e in eps.values():
        assert tcx_on(e.host_ifindex, "ingress") == [] and tcx_on(e.host_ifindex, "egress") == []
    assert tcx_on(nets["brA"].bridge_ifindex, "egress") == []
