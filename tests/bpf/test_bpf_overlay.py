"""Packet-level tests of the overlay programs (bpf/tunnel.h) through BPF_PROG_TEST_RUN.

The env fixture's networks become overlay networks here (brA: VNI 4096, icc=true; brB: VNI
4097, icc=false), a collect-metadata VXLAN device is the tunnel, and two remote endpoints
(one per network) live "on another host" at VTEP 192.0.2.7. What a test run cannot give a
program (a received tunnel key) is covered end to end by tests/test_cluster.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from bpf_packets import BROADCAST, ETH_ARP, ETH_IP, ETH_IPV6, arp, eth, icmp6, ipv4, ipv6, mac, udp
from bpfnet.model import RemoteEndpointSpec
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run
from pyroute2 import IPRoute

pytestmark = pytest.mark.kernel
VTEP = IPv4Address("192.0.2.7")


@pytest.fixture
def overlay(env: Any) -> Iterator[dict[str, Any]]:
    """brA/brB as overlay networks with one remote endpoint each, and the tunnel device."""
    nets = env.networks
    with IPRoute() as ipr:
        ipr.link("add", ifname="vxt", kind="vxlan", vxlan_collect_metadata=1, vxlan_port=4789)
        vx = ipr.link_lookup(ifname="vxt")[0]
    remotes = {
        "r1": RemoteEndpointSpec(nets["brA"].id, IPv4Address("10.1.0.50"), "02:42:0a:01:00:32", VTEP,
                                 (IPv6Address("fd00:1::50"),)),
        "r2": RemoteEndpointSpec(nets["brB"].id, IPv4Address("10.2.0.50"), "02:42:0a:02:00:32", VTEP),
    }
    try:
        env.dp.attach_network(replace(nets["brA"], vni=4096))
        env.dp.attach_network(replace(nets["brB"], vni=4097))
        env.dp.set_tunnel(vx)
        for r in remotes.values():
            env.dp.add_remote(r)
        yield {"vx": vx, **remotes}
    finally:
        env.dp.set_remotes([])
        env.dp.set_tunnel(0)
        env.dp.attach_network(nets["brA"])
        env.dp.attach_network(nets["brB"])
        with IPRoute() as ipr:
            ipr.link("del", index=vx)


def test_ipv4_to_a_remote_endpoint_is_encapsulated(env: Any, overlay: dict[str, Any]) -> None:
    a1, r1 = env.endpoints["a1"], overlay["r1"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    assert r.data[:6] == mac(r1.mac) and r.data[6:] == pkt[6:]  # its MAC, nothing else changed
    assert r.counts == {a1.id: {"tx_tunnel_packets": 1, "tx_tunnel_bytes": len(pkt)}}


def test_ipv6_to_a_remote_endpoint_is_encapsulated_but_nd_is_not(env: Any, overlay: dict[str, Any]) -> None:
    a1, r1 = env.endpoints["a1"], overlay["r1"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IPV6, ipv6(str(a1.ipv6[0]), str(r1.ipv6[0]), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT and r.counts[a1.id] == {"tx_tunnel_packets": 1, "tx_tunnel_bytes": len(pkt)}
    ns = eth("02:00:00:00:00:99", a1.mac, ETH_IPV6, ipv6(str(a1.ipv6[0]), str(r1.ipv6[0]), 58, icmp6(135)))
    r = run(env.dp, "ep_ingress", ns, a1.host_ifindex)  # neighbour solicitation: the kernel's NDP proxy
    assert r.verdict == TC_ACT_OK and r.counts[a1.id] == {"tx_kernel_packets": 1, "tx_kernel_bytes": len(ns)}


def test_icc_false_and_spoofing_apply_to_remote_endpoints(env: Any, overlay: dict[str, Any]) -> None:
    b1, r2 = env.endpoints["b1"], overlay["r2"]
    pkt = eth("02:00:00:00:00:99", b1.mac, ETH_IP, ipv4(str(b1.ipv4), str(r2.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, b1.host_ifindex)
    assert r.verdict == TC_ACT_SHOT and r.counts == {b1.id: {"tx_drop_policy": 1}}
    a1, r1 = env.endpoints["a1"], overlay["r1"]
    forged = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4("10.1.0.77", str(r1.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", forged, a1.host_ifindex)
    assert r.verdict == TC_ACT_SHOT and r.counts == {a1.id: {"tx_drop_spoofed_source": 1}}


def test_other_networks_remote_is_not_reached(env: Any, overlay: dict[str, Any]) -> None:
    """The remote table is keyed by network: brA's endpoint cannot tunnel to brB's remote."""
    a1, r2 = env.endpoints["a1"], overlay["r2"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r2.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_OK and "tx_tunnel_packets" not in r.counts.get(a1.id, {})


def test_arp_for_a_remote_endpoint_is_answered_in_place(env: Any, overlay: dict[str, Any]) -> None:
    a1, r1 = env.endpoints["a1"], overlay["r1"]
    req = eth(BROADCAST, a1.mac, ETH_ARP, arp(1, a1.mac, str(a1.ipv4), "00:00:00:00:00:00", str(r1.ipv4)))
    r = run(env.dp, "ep_ingress", req, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT  # back out of a1's own veth
    want = eth(a1.mac, r1.mac, ETH_ARP, arp(2, r1.mac, str(r1.ipv4), a1.mac, str(a1.ipv4)))
    assert r.data[:len(want)] == want
    assert r.counts == {a1.id: {"rx_fast_packets": 1, "rx_fast_bytes": len(req)}}
    # a probe (sender 0.0.0.0, duplicate address detection) and a local target stay with the kernel
    probe = eth(BROADCAST, a1.mac, ETH_ARP, arp(1, a1.mac, "0.0.0.0", "00:00:00:00:00:00", str(r1.ipv4)))
    assert run(env.dp, "ep_ingress", probe, a1.host_ifindex).verdict == TC_ACT_OK
    a2 = env.endpoints["a2"]
    local = eth(BROADCAST, a1.mac, ETH_ARP, arp(1, a1.mac, str(a1.ipv4), "00:00:00:00:00:00", str(a2.ipv4)))
    assert run(env.dp, "ep_ingress", local, a1.host_ifindex).verdict == TC_ACT_OK


def test_removed_remote_is_no_longer_tunnelled(env: Any, overlay: dict[str, Any]) -> None:
    a1, r1 = env.endpoints["a1"], overlay["r1"]
    env.dp.remove_remote(r1)
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp()))
    assert run(env.dp, "ep_ingress", pkt, a1.host_ifindex).verdict == TC_ACT_OK
    env.dp.set_remotes([overlay["r2"]])  # a resync: exactly these
    assert env.dp.remotes() == 1


def test_without_a_tunnel_key_tunnel_ingress_drops_and_counts(env: Any, overlay: dict[str, Any]) -> None:
    a1 = env.endpoints["a1"]
    before = env.dp.tunnel_counters()
    pkt = eth(a1.mac, "02:42:0a:01:00:32", ETH_IP, ipv4("10.1.0.50", str(a1.ipv4), payload=udp()))
    r = run(env.dp, "tunnel_ingress", pkt, overlay["vx"])
    assert r.verdict == TC_ACT_SHOT and r.counts == {}
    after = env.dp.tunnel_counters()
    assert after["rx_unknown"] == before["rx_unknown"] + 1 and after["rx_packets"] == before["rx_packets"]
