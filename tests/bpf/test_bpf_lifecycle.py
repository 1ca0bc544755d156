"""Lifecycle of EbpfDatapath: restart on pinned maps, close, remove, cleanup,
mode probing and the cost of counters(). Every test on ns_links runs with
both attach mechanisms (tcx links and the clsact + cls_bpf fallback)."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from bpf_env import inside, make_links, netns, pin_dir
from bpf_packets import ETH_IP, eth, ipv4, udp
from bpfnet.datapath import BridgeDatapath, bpfsys, make_datapath, probe
from bpfnet.datapath.ebpf import EbpfDatapath
from bpfnet.datapath.probe import probe_mode
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, run

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["tcx", "tc"])
def attach(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The mechanism "auto" resolves to: forced, as on a kernel with or without tcx."""
    monkeypatch.setattr(probe, "probe_attach", lambda: request.param)
    return str(request.param)


@pytest.fixture
def ns_links(attach: str) -> Iterator[tuple[str, str, dict, dict]]:
    with netns() as ns, pin_dir() as pins, inside(ns):
        nets, eps = make_links([("brA", "10.1", True)], [("a1", "brA", 2), ("a2", "brA", 3)])
        yield ns, pins, nets, eps


def tc_progs(ns: str, dev: str, direction: str) -> list[int]:
    """Ids of the programs on dev's hook: cls_bpf filters and tcx links alike
    (the kernel's view; the calling thread must be inside ns)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev,
                          direction], capture_output=True, text=True, check=False).stdout
    ids = [int(x) for x in re.findall(r" id (\d+)", out)]
    try:
        ifindex = socket.if_nametoindex(dev)
    except OSError:
        return ids  # device gone
    hook = bpfsys.BPF_TCX_INGRESS if direction == "ingress" else bpfsys.BPF_TCX_EGRESS
    return ids + [prog for prog, _link in bpfsys.tcx_query(ifindex, hook)]


def a1_to_a2(eps: dict) -> bytes:
    a1, a2 = eps["a1"], eps["a2"]
    return eth(a2.mac, a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(a2.ipv4), payload=udp()))


def test_restart_keeps_counters_and_replaces_programs(ns_links, attach) -> None:
    ns, pins, nets, eps = ns_links
    a1, a2 = eps["a1"], eps["a2"]
    dp1 = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    dp2 = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    try:
        dp1.start(list(nets.values()), list(eps.values()))
        for _ in range(3):
            assert run(dp1, "ep_ingress", a1_to_a2(eps), a1.host_ifindex).verdict == \
                TC_ACT_REDIRECT
        old_ids = tc_progs(ns, "h-a1", "ingress")
        before = dp1.counters()
        assert before[a1.id]["tx_fast_packets"] == 3
        dp1.close()  # daemon stops: programs stay attached, maps pinned
        assert tc_progs(ns, "h-a1", "ingress") == old_ids
        assert sorted(os.listdir(pins)) == sorted(
            ["endpoint_by_ifindex", "endpoint_id_by_ipv4", "endpoint_id_by_ipv6",
             "endpoint_by_id", "endpoint_counters", "network_by_bridge_ifindex", "network_by_id",
             "remote_by_ipv4", "remote_by_ipv6", "network_by_vni", "tunnel_config", "tunnel_counters",
             "published_ports", "published_flows", "published_port_counters",
             "dns_names", "dns_counters", "routed_networks", *(["links"] if attach == "tcx" else [])])

        dp2.start(list(nets.values()), list(eps.values()))  # daemon restarts
        assert dp2.counters() == before  # no reset
        new_ids = tc_progs(ns, "h-a1", "ingress")
        assert len(new_ids) == 1 and new_ids != old_ids  # replaced in place, not added
        assert len(tc_progs(ns, "h-a1", "egress")) == 1
        assert len(tc_progs(ns, "brA", "egress")) == 1
        r = run(dp2, "ep_ingress", a1_to_a2(eps), a1.host_ifindex)
        assert r.counts == {a1.id: {"tx_fast_packets": 1, "tx_fast_bytes": len(a1_to_a2(eps))},
                            a2.id: {"rx_fast_packets": 1, "rx_fast_bytes": len(a1_to_a2(eps))}}
    finally:
        dp1.close()
        dp2.cleanup()
    assert not os.path.exists(pins)
    assert tc_progs(ns, "h-a1", "ingress") == [] and tc_progs(ns, "brA", "egress") == []


def test_restart_drops_what_went_away(ns_links) -> None:
    ns, pins, nets, eps = ns_links
    a1, a2 = eps["a1"], eps["a2"]
    dp = EbpfDatapath(mode="redirect", pin_dir=pins)
    try:
        dp.start(list(nets.values()), list(eps.values()))
        run(dp, "ep_ingress", a1_to_a2(eps), a1.host_ifindex)
        assert dp.counters()[a2.id]["rx_fast_packets"] == 1
        dp.close()
        dp = EbpfDatapath(mode="redirect", pin_dir=pins)
        dp.start(list(nets.values()), [a1])  # a2 was removed while the daemon was down
        c = dp.counters()
        assert a2.id not in c and c[a1.id]["tx_fast_packets"] == 1
        assert tc_progs(ns, "h-a2", "ingress") == [] and tc_progs(ns, "h-a2", "egress") == []
        # a2's addresses are gone from the maps: a1 -> a2 is kernel path now
        assert run(dp, "ep_ingress", a1_to_a2(eps), a1.host_ifindex).verdict == TC_ACT_OK
    finally:
        dp.cleanup()


def test_remove_endpoint_zeroes_and_is_idempotent(ns_links) -> None:
    from pyroute2 import IPRoute

    ns, pins, nets, eps = ns_links
    a1, a2 = eps["a1"], eps["a2"]
    dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    try:
        dp.start(list(nets.values()), list(eps.values()))
        run(dp, "ep_ingress", a1_to_a2(eps), a1.host_ifindex)
        dp.remove_endpoint(a2)
        c = dp.counters()
        assert a2.id not in c
        assert tc_progs(ns, "h-a2", "ingress") == []
        assert run(dp, "ep_ingress", a1_to_a2(eps), a1.host_ifindex).verdict == TC_ACT_OK
        dp.remove_endpoint(a2)  # again: fine
        with IPRoute() as ipr:
            ipr.link("del", index=a1.host_ifindex)
        dp.remove_endpoint(a1)  # device already gone: fine
        assert dp.counters() == {}
        # re-adding works and is idempotent
        dp.add_endpoint(a2)
        dp.add_endpoint(a2)
        assert len(tc_progs(ns, "h-a2", "ingress")) == 1
        dp.detach_network(nets["brA"])
        dp.detach_network(nets["brA"])
        assert tc_progs(ns, "brA", "egress") == []
    finally:
        dp.cleanup()


def test_changed_map_shape_replaces_pins(ns_links, caplog) -> None:
    _ns, pins, nets, eps = ns_links
    dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins, max_endpoints=4096)
    try:
        dp.start(list(nets.values()), list(eps.values()))
        dp.close()
        dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins, max_endpoints=128)
        with caplog.at_level(logging.WARNING):
            dp.start(list(nets.values()), list(eps.values()))
        assert "replacing it" in caplog.text
        assert set(dp.counters()) == {e.id for e in eps.values()}
    finally:
        dp.cleanup()


def test_probe_and_factory(tmp_path) -> None:
    assert probe_mode() == "redirect-peer"  # kernel 6.18 has bpf_redirect_peer
    assert isinstance(make_datapath("bridge", pin_dir=str(tmp_path)), BridgeDatapath)
    dp = make_datapath("auto", pin_dir="/sys/fs/bpf/bpfnet-test-unused")
    assert isinstance(dp, EbpfDatapath) and dp.mode == "redirect-peer"
    assert make_datapath("redirect", pin_dir="/x").mode == "redirect"
    with pytest.raises(ValueError):
        make_datapath("turbo", pin_dir="/x")


def test_counters_is_fast_with_1000_endpoints(ns_links) -> None:
    """counters() runs at every Prometheus scrape: one batch read per map."""
    from bpfnet.datapath import maps as m
    from bpfnet.datapath.bpfsys import possible_cpus
    from bpfnet.model import EndpointSpec

    _ns, pins, nets, eps = ns_links
    dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    try:
        dp.start(list(nets.values()), list(eps.values()))
        pm = dp._maps
        assert pm is not None
        one = bytes(range(1, m.COUNTERS_SIZE + 1)) * possible_cpus()
        for i in range(1000):
            fake = EndpointSpec(name=f"x{i}", id=1000 + i, network="brA", network_id=1,
                                host_ifname=f"x{i}", host_ifindex=100000 + i,
                                mac="02:42:00:00:00:01", ipv4=eps["a1"].ipv4)
            pm.put("endpoint_by_ifindex", m.u32(fake.host_ifindex), m.pack_endpoint(fake))
            pm.put("endpoint_counters", m.u32(fake.id), one)
        dp.counters()
        t0 = time.perf_counter()
        for _ in range(5):
            c = dp.counters()
        per_call = (time.perf_counter() - t0) / 5
        assert len(c) == 1002
        logging.getLogger(__name__).warning("counters() with 1000 endpoints: %.1f ms",
                                            per_call * 1e3)
        assert per_call < 0.25
    finally:
        dp.cleanup()


def test_cleanup_from_a_fresh_process(ns_links) -> None:
    """`bpfnet daemon --cleanup`: a datapath that never started removes what an
    earlier daemon left (filters on every device, map entries, pins)."""
    ns, pins, nets, eps = ns_links
    dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    dp.start(list(nets.values()), list(eps.values()))
    dp.close()
    assert tc_progs(ns, "h-a1", "ingress") and os.path.isdir(pins)
    EbpfDatapath(mode="redirect-peer", pin_dir=pins).cleanup()
    assert not os.path.exists(pins)
    for dev in ("h-a1", "h-a2", "brA"):
        assert tc_progs(ns, dev, "ingress") == [] and tc_progs(ns, dev, "egress") == []
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show"], capture_output=True,
                         text=True, check=True).stdout
    assert "clsact" not in out
    EbpfDatapath(mode="redirect-peer", pin_dir=pins).cleanup()  # nothing left: fine


def test_restart_swaps_the_uplink_program_without_a_gap(ns_links, attach) -> None:
    """uplink_ingress (published ports' fast path) is adopted by the next daemon's start():
    the new program replaces the old one on the same hook; set_uplinks({}) and cleanup remove it."""
    ns, pins, nets, eps = ns_links
    subprocess.run(["ip", "link", "add", "upl", "type", "veth", "peer", "name", "upl-p"], check=True)
    up = socket.if_nametoindex("upl")
    dp1 = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    dp2 = EbpfDatapath(mode="redirect-peer", pin_dir=pins)
    try:
        dp1.start(list(nets.values()), list(eps.values()))
        dp1.set_uplinks({up: "upl"})
        old = tc_progs(ns, "upl", "ingress")
        assert len(old) == 1
        dp1.close()
        assert tc_progs(ns, "upl", "ingress") == old  # stays while no daemon runs
        dp2.start(list(nets.values()), list(eps.values()))
        new = tc_progs(ns, "upl", "ingress")
        assert dp2.uplinks() == {up: "upl"} and len(new) == 1 and new != old
        dp2.set_uplinks({})
        assert tc_progs(ns, "upl", "ingress") == []
        dp2.set_uplinks({up: "upl"})
        dp2.cleanup()
        assert tc_progs(ns, "upl", "ingress") == []
    finally:
        dp1.close()
        dp2.close()
