"""Internal networks in the datapath (network create --internal), through BPF_PROG_TEST_RUN.

The env fixture's net 1 (brA: a1, a2) is made internal for each test here and restored
after; unicast IP to or from anything but an endpoint of the network or its gateway is
dropped and counted as ``internal``, everything on the link keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from bpf_packets import ETH_IP, ETH_IPV6, arp, eth, icmp6, ipv4, ipv6, udp
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run

pytestmark = pytest.mark.kernel
OUTSIDE4 = "192.0.2.7"
OUTSIDE6 = "2001:db8::7"


@pytest.fixture
def internal(env) -> Iterator[object]:
    net = env.networks["brA"]
    env.dp.attach_network(replace(net, internal=True))
    try:
        yield env
    finally:
        env.dp.attach_network(net)


def v4(src, dst, sip, dip):
    return eth(dst, src, ETH_IP, ipv4(sip, dip, payload=udp()))


def v6(src, dst, sip, dip):
    return eth(dst, src, ETH_IPV6, ipv6(sip, dip, 17, udp()))


def drop_counted(r, ep_id, direction):
    return r.verdict == TC_ACT_SHOT and r.counts == {ep_id: {f"{direction}_drop_internal": 1}}


def test_sending_outside_is_dropped_and_counted(internal):
    a1, br = internal.endpoints["a1"], internal.networks["brA"]
    for pkt in (v4(a1.mac, br.bridge_mac, str(a1.ipv4), OUTSIDE4),
                v6(a1.mac, br.bridge_mac, str(a1.ipv6[0]), OUTSIDE6)):
        r = run(internal.dp, "ep_ingress", pkt, a1.host_ifindex)
        assert drop_counted(r, a1.id, "tx"), r


def test_gateway_peers_and_link_traffic_pass(internal):
    a1, a2, br = internal.endpoints["a1"], internal.endpoints["a2"], internal.networks["brA"]
    to_kernel = [
        v4(a1.mac, br.bridge_mac, str(a1.ipv4), str(br.gateway4)),
        v6(a1.mac, br.bridge_mac, str(a1.ipv6[0]), str(br.gateway6[0])),
        v6(a1.mac, br.bridge_mac, str(a1.ipv6[0]), "fe80::1"),
        v4(a1.mac, "ff:ff:ff:ff:ff:ff", str(a1.ipv4), "10.1.255.255"),
        eth("ff:ff:ff:ff:ff:ff", a1.mac, 0x0806, arp(1, a1.mac, str(a1.ipv4), "00:00:00:00:00:00", OUTSIDE4)),
        eth("33:33:00:00:00:01", a1.mac, ETH_IPV6, ipv6(str(a1.ipv6[0]), "ff02::1", 58, icmp6(128))),
    ]
    for pkt in to_kernel:
        r = run(internal.dp, "ep_ingress", pkt, a1.host_ifindex)
        assert r.verdict == TC_ACT_OK and "tx_drop_internal" not in r.counts.get(a1.id, {}), pkt.hex()
    r = run(internal.dp, "ep_ingress", v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4)), a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT  # the fast path inside the network is untouched


def test_receiving_from_outside_is_dropped_on_both_paths(internal):
    a1, br = internal.endpoints["a1"], internal.networks["brA"]
    for pkt in (v4(br.bridge_mac, a1.mac, OUTSIDE4, str(a1.ipv4)),
                v6(br.bridge_mac, a1.mac, OUTSIDE6, str(a1.ipv6[0]))):
        # routed by the host to a known endpoint: bridge_egress would redirect it
        r = run(internal.dp, "bridge_egress", pkt, br.bridge_ifindex)
        assert drop_counted(r, a1.id, "rx"), r
        # through the bridge (e.g. an address the fast path does not know)
        r = run(internal.dp, "ep_egress", pkt, a1.host_ifindex, ingress_ifindex=br.bridge_ifindex)
        assert drop_counted(r, a1.id, "rx"), r


def test_gateway_reaches_the_network(internal):
    a1, br = internal.endpoints["a1"], internal.networks["brA"]
    pkt = v4(br.bridge_mac, a1.mac, str(br.gateway4), str(a1.ipv4))
    assert run(internal.dp, "bridge_egress", pkt, br.bridge_ifindex).verdict == TC_ACT_REDIRECT
    assert run(internal.dp, "ep_egress", pkt, a1.host_ifindex).verdict == TC_ACT_OK


def test_not_internal_lets_outside_through(env):
    a1, br = env.endpoints["a1"], env.networks["brA"]
    r = run(env.dp, "ep_ingress", v4(a1.mac, br.bridge_mac, str(a1.ipv4), OUTSIDE4), a1.host_ifindex)
    assert r.verdict == TC_ACT_OK
    r = run(env.dp, "bridge_egress", v4(br.bridge_mac, a1.mac, OUTSIDE4, str(a1.ipv4)), br.bridge_ifindex)
    assert r.verdict == TC_ACT_REDIRECT


def test_bridged_dnat_from_an_endpoint_is_left_to_the_bridge(env):
    """br_netfilter's bridged DNAT hands the bridge device a packet still carrying the
    endpoint veth it came in on; its POSTROUTING only runs on the bridge's own path."""
    a1, a2, br = env.endpoints["a1"], env.endpoints["a2"], env.networks["brA"]
    pkt = v4(br.bridge_mac, a2.mac, str(a1.ipv4), str(a2.ipv4))
    r = run(env.dp, "bridge_egress", pkt, br.bridge_ifindex, ingress_ifindex=a1.host_ifindex)
    assert (r.verdict, r.data, r.counts) == (TC_ACT_OK, pkt, {})
    routed = run(env.dp, "bridge_egress", pkt, br.bridge_ifindex, ingress_ifindex=br.bridge_ifindex)
    assert routed.verdict == TC_ACT_REDIRECT
