"""The routed networks' cross-host bypass (bpf/routed.h) through BPF_PROG_TEST_RUN.

In the env fixture's namespace brA becomes a routed network with cluster subnets 10.1.0.0/16
and fd00:1::/32 (this node's block: 10.1.0.0/24, fd00:1::/64, where its endpoints are), brB
one with 10.2.0.0/16 and icc=false. An uplink veth (192.0.2.1/24) has routes to two other
nodes' blocks as the routed driver writes them: 10.1.1.0/24 via 192.0.2.9 and
fd00:1:0:1::/64 via fe80::9 (neighbours permanent), 10.1.2.0/24 via 192.0.2.10 (no
neighbour entry: bpf_redirect_neigh). Every rewritten packet is parsed again with the
reference checksum code of bpf_packets.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import pytest
from bpf_packets import ETH_IP, ETH_IPV6, eth, ip_l4, parse_l4
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run

pytestmark = pytest.mark.kernel
UP = "up-rt"
UP_MAC, PEER_MAC = "02:00:00:00:88:01", "02:00:00:00:88:09"
REMOTE4, REMOTE6 = "10.1.1.5", "fd00:1:0:1::5"  # endpoints on the node at 192.0.2.9


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def rt(env: Any) -> Iterator[Any]:
    from bpf_env import inside
    from pyroute2 import IPRoute

    nets = env.networks
    with inside(env.ns):
        _ip("link", "add", UP, "address", UP_MAC, "type", "veth", "peer", "name", UP + "-o")
        _ip("addr", "add", "192.0.2.1/24", "dev", UP)
        for dev in (UP, UP + "-o"):
            _ip("link", "set", dev, "up")
        _ip("neigh", "replace", "192.0.2.9", "lladdr", PEER_MAC, "dev", UP, "nud", "permanent")
        _ip("neigh", "replace", "fe80::9", "lladdr", PEER_MAC, "dev", UP, "nud", "permanent")
        _ip("route", "add", "10.1.1.0/24", "via", "192.0.2.9", "dev", UP)
        _ip("route", "add", "10.1.2.0/24", "via", "192.0.2.10", "dev", UP)
        _ip("route", "add", "10.2.1.0/24", "via", "192.0.2.9", "dev", UP)
        _ip("-6", "route", "add", "fd00:1:0:1::/64", "via", "fe80::9", "dev", UP)
        for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            with open(f"/proc/sys/{key}", "w") as f:
                f.write("1")
        with IPRoute() as ipr:
            up = ipr.link_lookup(ifname=UP)[0]
        env.dp.attach_network(replace(nets["brA"], routed4=IPv4Network("10.1.0.0/16"),
                                      routed6=IPv6Network("fd00:1::/32")))
        env.dp.attach_network(replace(nets["brB"], routed4=IPv4Network("10.2.0.0/16")))
        env.dp.set_uplinks({up: UP})
    env.up = up
    try:
        yield env
    finally:
        with inside(env.ns):
            env.dp.set_uplinks({})
            env.dp.attach_network(nets["brA"])
            env.dp.attach_network(nets["brB"])
            _ip("link", "del", UP)


def frame(family: int, dst_mac: str, src_mac: str, ip: bytes) -> bytes:
    return eth(dst_mac, src_mac, ETH_IP if family == 4 else ETH_IPV6, ip)


@pytest.mark.parametrize(("family", "proto"), [(4, 6), (4, 17), (6, 6), (6, 17)])
def test_send_to_another_nodes_block_goes_out_of_the_uplink(rt: Any, family: int, proto: int) -> None:
    a1 = rt.endpoints["a1"]
    src, dst = (str(a1.ipv4), REMOTE4) if family == 4 else (str(a1.ipv6[0]), REMOTE6)
    pkt = frame(family, rt.networks["brA"].bridge_mac, a1.mac, ip_l4(src, dst, proto, 40000, 80))
    r = run(rt.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    p = parse_l4(r.data)
    assert (p.dst_mac, p.src_mac) == (PEER_MAC, UP_MAC)  # the FIB's neighbour, the uplink's MAC
    assert (p.src, p.dst, p.sport, p.dport, p.ttl) == (src, dst, 40000, 80, 63)
    assert p.ip_csum_ok and p.l4_csum_ok
    assert r.counts == {a1.id: {"tx_routed_packets": 1, "tx_routed_bytes": len(pkt)}}


def test_send_with_unresolved_neighbour_is_redirected_too(rt: Any) -> None:
    a1 = rt.endpoints["a1"]
    pkt = frame(4, rt.networks["brA"].bridge_mac, a1.mac, ip_l4(str(a1.ipv4), "10.1.2.5", 17, 1, 2))
    r = run(rt.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT  # bpf_redirect_neigh: the kernel resolves and fills the MACs
    p = parse_l4(r.data)
    assert p.ttl == 63 and p.ip_csum_ok and p.l4_csum_ok
    assert r.counts[a1.id] == {"tx_routed_packets": 1, "tx_routed_bytes": len(pkt)}


@pytest.mark.parametrize("dst", ["10.1.0.1", "10.1.0.77", "10.1.9.5", "10.3.0.5", "198.51.100.1"])
def test_what_is_not_another_nodes_block_goes_to_the_kernel(rt: Any, dst: str) -> None:
    """The own block (gateway, a free address), a block no route leads to, outside the cluster."""
    a1 = rt.endpoints["a1"]
    pkt = frame(4, rt.networks["brA"].bridge_mac, a1.mac, ip_l4(str(a1.ipv4), dst, 17, 1, 2))
    r = run(rt.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_OK and r.data == pkt
    assert r.counts[a1.id] == {"tx_kernel_packets": 1, "tx_kernel_bytes": len(pkt)}


def test_ttl_1_goes_to_the_kernel(rt: Any) -> None:
    a1 = rt.endpoints["a1"]
    for family, src, dst in ((4, str(a1.ipv4), REMOTE4), (6, str(a1.ipv6[0]), REMOTE6)):
        pkt = frame(family, rt.networks["brA"].bridge_mac, a1.mac, ip_l4(src, dst, 17, 1, 2, ttl=1))
        r = run(rt.dp, "ep_ingress", pkt, a1.host_ifindex)
        assert r.verdict == TC_ACT_OK and r.data == pkt  # the kernel sends time exceeded
        assert "tx_routed_packets" not in r.counts[a1.id]


def test_icc_false_drops_across_hosts_and_spoofing_still_applies(rt: Any) -> None:
    b1, a1 = rt.endpoints["b1"], rt.endpoints["a1"]
    pkt = frame(4, rt.networks["brB"].bridge_mac, b1.mac, ip_l4(str(b1.ipv4), "10.2.1.5", 17, 1, 2))
    r = run(rt.dp, "ep_ingress", pkt, b1.host_ifindex)
    assert r.verdict == TC_ACT_SHOT and r.counts == {b1.id: {"tx_drop_policy": 1}}
    forged = frame(4, rt.networks["brA"].bridge_mac, a1.mac, ip_l4("10.1.0.99", REMOTE4, 17, 1, 2))
    r = run(rt.dp, "ep_ingress", forged, a1.host_ifindex)
    assert r.verdict == TC_ACT_SHOT and r.counts == {a1.id: {"tx_drop_spoofed_source": 1}}


@pytest.mark.parametrize(("family", "proto"), [(4, 6), (4, 17), (6, 6), (6, 17)])
def test_receive_from_another_node_goes_into_the_endpoint(rt: Any, family: int, proto: int) -> None:
    a1, br = rt.endpoints["a1"], rt.networks["brA"]
    src, dst = (REMOTE4, str(a1.ipv4)) if family == 4 else (REMOTE6, str(a1.ipv6[0]))
    pkt = frame(family, UP_MAC, PEER_MAC, ip_l4(src, dst, proto, 80, 40000, ttl=63))
    r = run(rt.dp, "uplink_ingress", pkt, rt.up)
    assert r.verdict == TC_ACT_REDIRECT
    p = parse_l4(r.data)
    assert (p.dst_mac, p.src_mac) == (a1.mac, br.bridge_mac)
    assert (p.src, p.dst, p.sport, p.dport, p.ttl) == (src, dst, 80, 40000, 62)
    assert p.ip_csum_ok and p.l4_csum_ok
    assert r.counts == {a1.id: {"rx_routed_packets": 1, "rx_routed_bytes": len(pkt)}}


@pytest.mark.parametrize(("src", "dst", "ttl"), [
    (REMOTE4, "10.1.0.77", 63),  # no such local endpoint
    ("198.51.100.7", "10.1.0.2", 63),  # from outside the cluster subnet: the kernel's rules
    ("10.1.0.3", "10.1.0.2", 63),  # claims a local endpoint's address
    (REMOTE4, "10.1.0.2", 1),  # TTL 1: the kernel sends time exceeded
    (REMOTE4, "10.5.0.2", 63),  # no routed network
])
def test_receive_of_anything_else_goes_to_the_kernel(rt: Any, src: str, dst: str, ttl: int) -> None:
    pkt = frame(4, UP_MAC, PEER_MAC, ip_l4(src, dst, 17, 1, 2, ttl=ttl))
    r = run(rt.dp, "uplink_ingress", pkt, rt.up)
    assert r.verdict == TC_ACT_OK and r.data == pkt and r.counts == {}


def test_receive_on_icc_false_network_is_dropped_as_policy(rt: Any) -> None:
    b1 = rt.endpoints["b1"]
    pkt = frame(4, UP_MAC, PEER_MAC, ip_l4("10.2.1.5", str(b1.ipv4), 17, 1, 2))
    r = run(rt.dp, "uplink_ingress", pkt, rt.up)
    assert r.verdict == TC_ACT_SHOT and r.counts == {b1.id: {"rx_drop_policy": 1}}


def test_only_routed_networks_are_listed_for_the_uplink(rt: Any) -> None:
    from bpf_env import inside

    nets = rt.networks
    with inside(rt.ns):
        rt.dp.attach_network(nets["brB"])  # no longer routed: its slot is freed
        try:
            b1 = rt.endpoints["b1"]
            pkt = frame(4, UP_MAC, PEER_MAC, ip_l4("10.2.1.5", str(b1.ipv4), 17, 1, 2))
            r = run(rt.dp, "uplink_ingress", pkt, rt.up)
            assert r.verdict == TC_ACT_OK and r.counts == {}
        finally:
            rt.dp.attach_network(replace(nets["brB"], routed4=IPv4Network("10.2.0.0/16")))


def test_a_gso_super_packet_takes_the_bypass_and_counts_its_segments(rt: Any) -> None:
    """A TCP super-packet (64 KB from the endpoint's TCP, here 3 segments) is over the route's MTU
    as one IP packet, but its segments are not: the bypass sends it, the kernel segments it."""
    a1 = rt.endpoints["a1"]
    ip = ip_l4(str(a1.ipv4), REMOTE4, 6, 40000, 80, payload=b"x" * 3000)
    pkt = frame(4, rt.networks["brA"].bridge_mac, a1.mac, ip)
    r = run(rt.dp, "ep_ingress", pkt, a1.host_ifindex, gso_segs=3, gso_size=1000)
    assert r.verdict == TC_ACT_REDIRECT
    assert r.counts == {a1.id: {"tx_routed_packets": 3, "tx_routed_bytes": len(pkt)}}
