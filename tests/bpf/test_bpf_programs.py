"""Packet-level tests of every bpfnet program through BPF_PROG_TEST_RUN.

The env fixture (conftest) has net 1 (brA, icc=true: a1, a2) and net 2
(brB, icc=false: b1, b2); endpoint ids are 12, 13, 22, 23.
"""

from __future__ import annotations

import pytest
from bpf_packets import (
    BROADCAST,
    ETH_ARP,
    ETH_IP,
    ETH_IPV6,
    arp,
    eth,
    icmp6,
    icmp_echo,
    ipv4,
    ipv6,
    mac,
    udp,
    vlan,
)
from bpfnet.addressing import link_local_from_mac as eui64_link_local
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, run

pytestmark = pytest.mark.kernel


def ids(env):
    e = env.endpoints
    return e["a1"], e["a2"], e["b1"], e["b2"]


def v4(src, dst, sip, dip, **kw):
    return eth(dst, src, ETH_IP, ipv4(sip, dip, payload=udp(), **kw))


def v6(src, dst, sip, dip, nexthdr=17, payload=None):
    return eth(dst, src, ETH_IPV6, ipv6(sip, dip, nexthdr, payload if payload is not None else udp()))


# -- ep_ingress: fast path ------------------------------------------------------

def test_ipv4_to_same_network_endpoint_is_redirected(env):
    a1, a2, _, _ = ids(env)
    pkt = v4(a1.mac, "02:00:00:00:00:99", str(a1.ipv4), str(a2.ipv4))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    assert r.data[:6] == mac(a2.mac)  # dst MAC rewritten to the destination's
    assert r.data[6:] == pkt[6:]
    assert r.counts == {
        a1.id: {"tx_fast_packets": 1, "tx_fast_bytes": len(pkt)},
        a2.id: {"rx_fast_packets": 1, "rx_fast_bytes": len(pkt)},
    }
    # redirect-peer mode: no egress marker needed (the peer's ingress is next)
    assert r.cb[:2] == (0, 0)


@pytest.mark.parametrize("dst", ["global", "link-local"])
def test_ipv6_to_same_network_endpoint_is_redirected(env, dst):
    a1, a2, _, _ = ids(env)
    daddr = str(a2.ipv6[0]) if dst == "global" else str(eui64_link_local(a2.mac))
    for nexthdr, payload in ((17, udp()), (6, b"\x00" * 20), (58, icmp6(128))):
        pkt = v6(a1.mac, a2.mac, str(a1.ipv6[0]), daddr, nexthdr, payload)
        r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
        assert r.verdict == TC_ACT_REDIRECT, nexthdr
        assert r.data[:6] == mac(a2.mac)
        assert r.counts[a2.id] == {"rx_fast_packets": 1, "rx_fast_bytes": len(pkt)}
        assert r.counts[a1.id] == {"tx_fast_packets": 1, "tx_fast_bytes": len(pkt)}


def test_ipv4_with_options_is_redirected(env):
    a1, a2, _, _ = ids(env)
    pkt = eth(a2.mac, a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(a2.ipv4), ihl=15, payload=udp()))
    assert run(env.dp, "ep_ingress", pkt, a1.host_ifindex).verdict == TC_ACT_REDIRECT


# -- ep_ingress: kernel path --------------------------------------------------

def _kernel(env, pkt, src):
    r = run(env.dp, "ep_ingress", pkt, src.host_ifindex)
    assert r.verdict == TC_ACT_OK
    assert r.data == pkt
    assert r.counts == {src.id: {"tx_kernel_packets": 1, "tx_kernel_bytes": len(pkt)}}


def test_to_gateway_and_beyond_goes_to_kernel(env):
    a1, _, b1, _ = ids(env)
    gw = env.networks["brA"]
    _kernel(env, v4(a1.mac, gw.bridge_mac, str(a1.ipv4), "10.1.0.1"), a1)
    _kernel(env, v4(a1.mac, gw.bridge_mac, str(a1.ipv4), "8.8.8.8"), a1)
    _kernel(env, v6(a1.mac, gw.bridge_mac, str(a1.ipv6[0]), "fd00:1::1"), a1)
    # another network's endpoint: routed by the host, not fast-pathed
    _kernel(env, v4(a1.mac, gw.bridge_mac, str(a1.ipv4), str(b1.ipv4)), a1)
    _kernel(env, v6(a1.mac, gw.bridge_mac, str(a1.ipv6[0]), str(b1.ipv6[0])), a1)


def test_arp_nd_multicast_broadcast_go_to_kernel(env):
    a1, a2, _, _ = ids(env)
    ll = str(eui64_link_local(a1.mac))
    pkts = [
        eth(BROADCAST, a1.mac, ETH_ARP, arp(1, a1.mac, str(a1.ipv4), "00:00:00:00:00:00",
                                            str(a2.ipv4))),
        eth(a2.mac, a1.mac, ETH_ARP, arp(2, a1.mac, str(a1.ipv4), a2.mac, str(a2.ipv4))),
        # mDNS
        eth("01:00:5e:00:00:fb", a1.mac, ETH_IP, ipv4(str(a1.ipv4), "224.0.0.251", payload=udp())),
        eth("33:33:00:00:00:fb", a1.mac, ETH_IPV6, ipv6(ll, "ff02::fb", 17, udp())),
        # broadcast
        eth(BROADCAST, a1.mac, ETH_IP, ipv4(str(a1.ipv4), "255.255.255.255", payload=udp())),
        eth(BROADCAST, a1.mac, ETH_IP, ipv4(str(a1.ipv4), "10.1.0.255", payload=udp())),
        # unicast MAC, multicast IP
        eth(a2.mac, a1.mac, ETH_IP, ipv4(str(a1.ipv4), "224.0.0.251", payload=udp())),
        # ND: NS (multicast and unicast NUD), NA, RS; DAD from ::
        eth("33:33:ff:00:00:03", a1.mac, ETH_IPV6, ipv6(ll, "ff02::1:ff00:3", 58, icmp6(135))),
        eth(a2.mac, a1.mac, ETH_IPV6, ipv6(ll, str(a2.ipv6[0]), 58, icmp6(135))),
        eth(a2.mac, a1.mac, ETH_IPV6, ipv6(str(a1.ipv6[0]), str(a2.ipv6[0]), 58, icmp6(136))),
        eth("33:33:00:00:00:02", a1.mac, ETH_IPV6, ipv6(ll, "ff02::2", 58, icmp6(133))),
        eth("33:33:ff:00:00:02", a1.mac, ETH_IPV6, ipv6("::", "ff02::1:ff00:2", 58, icmp6(135))),
        # unknown destination in the same subnet
        v4(a1.mac, a2.mac, str(a1.ipv4), "10.1.0.200"),
        v6(a1.mac, a2.mac, str(a1.ipv6[0]), "fd00:1::200"),
        # IPv6 extension header (hop-by-hop, fragment), no-next-header
        v6(a1.mac, a2.mac, str(a1.ipv6[0]), str(a2.ipv6[0]), 0, b"\x11\x00" + b"\x00" * 6 + udp()),
        v6(a1.mac, a2.mac, str(a1.ipv6[0]), str(a2.ipv6[0]), 44, b"\x11\x00\x00\x01" + b"\x00" * 4),
        v6(a1.mac, a2.mac, str(a1.ipv6[0]), str(a2.ipv6[0]), 59, b""),
        # IPv4 fragments: first (MF) and later (offset)
        v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4), frag=0x2000),
        v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4), frag=0x0010),
        # VLAN-tagged
        vlan(a2.mac, a1.mac, 10, ETH_IP, ipv4(str(a1.ipv4), str(a2.ipv4), payload=udp())),
        # other ethertype
        eth(a2.mac, a1.mac, 0x88CC, b"\x00" * 40),
        # to itself
        v4(a1.mac, a1.mac, str(a1.ipv4), str(a1.ipv4)),
    ]
    for p in pkts:
        _kernel(env, p, a1)


def _rejected_by_test_run(pkt):
    """BPF_PROG_TEST_RUN (kernel 6.18) refuses frames that are shorter than 15
    bytes or whose IPv4/IPv6 header is cut off, so such frames can only be
    checked in the cases the kernel accepts (ARP, ICMPv6 type missing, IPv4
    header length larger than the frame)."""
    import errno

    from bpfnet.datapath.bpfsys import BpfError

    try:
        return False, run(ENV[0].dp, "ep_ingress", pkt, ENV[1])
    except BpfError as e:
        assert e.errno == errno.EINVAL
        return True, None


ENV: list = []


@pytest.mark.parametrize("cut", [15, 20, 33, 14 + 39, 14 + 40, 14 + 27])
def test_truncated_goes_to_kernel(env, cut):
    a1, a2, _, _ = ids(env)
    ENV[:] = [env, a1.host_ifindex]
    p4 = v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4))
    p6 = eth(a2.mac, a1.mac, ETH_IPV6, ipv6(str(a1.ipv6[0]), str(a2.ipv6[0]), 58, icmp6(128)))
    arp_pkt = eth(BROADCAST, a1.mac, ETH_ARP, arp(1, a1.mac, str(a1.ipv4), BROADCAST, "10.1.0.9"))
    checked = 0
    # cut inside the IPv4 header (< 34), the IPv6 header or before the ICMPv6 type
    # (< 55), the ARP payload (< 42)
    for pkt in ([p4[:cut]] if cut < 34 else []) + [p6[:cut], arp_pkt[:cut]]:
        rejected, r = _rejected_by_test_run(pkt)
        if rejected:
            assert pkt[12:14] in (b"\x08\x00", b"\x86\xdd") and len(pkt) < 14 + 40
            continue
        assert r.verdict == TC_ACT_OK and r.data == pkt
        assert r.counts == {a1.id: {"tx_kernel_packets": 1, "tx_kernel_bytes": len(pkt)}}
        checked += 1
    assert checked >= 1


def test_ipv4_header_length_lies_goes_to_kernel(env):
    a1, a2, _, _ = ids(env)
    p = bytearray(v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4)))
    p[14] = 0x4F  # ihl 15 = 60 bytes, more than the packet has
    _kernel(env, bytes(p[:14 + 40]), a1)
    p[14] = 0x44  # ihl 4 < 5: invalid
    _kernel(env, bytes(p), a1)


# -- ep_ingress: source validation ---------------------------------------------

def _spoofed(env, pkt, src):
    r = run(env.dp, "ep_ingress", pkt, src.host_ifindex)
    assert r.verdict == TC_ACT_SHOT
    assert r.counts == {src.id: {"tx_drop_spoofed_source": 1}}


def test_spoofed_sources_are_dropped(env):
    a1, a2, _, _ = ids(env)
    other = "02:42:de:ad:be:ef"
    _spoofed(env, v4(other, a2.mac, str(a1.ipv4), str(a2.ipv4)), a1)  # MAC
    _spoofed(env, v4(a1.mac, a2.mac, "10.1.0.77", str(a2.ipv4)), a1)  # IPv4
    _spoofed(env, v4(a1.mac, BROADCAST, "0.0.0.0", "255.255.255.255"), a1)  # 0.0.0.0 (IP)
    _spoofed(env, v6(a1.mac, a2.mac, "fd00:1::77", str(a2.ipv6[0])), a1)  # IPv6
    _spoofed(env, v6(a1.mac, a2.mac, str(eui64_link_local(a2.mac)), str(a2.ipv6[0])), a1)
    _spoofed(env, eth(BROADCAST, a1.mac, ETH_ARP,  # ARP sender IP
                      arp(1, a1.mac, str(a2.ipv4), BROADCAST, "10.1.0.1")), a1)
    _spoofed(env, eth(BROADCAST, a1.mac, ETH_ARP,  # ARP sender MAC
                      arp(1, other, str(a1.ipv4), BROADCAST, "10.1.0.1")), a1)
    _spoofed(env, eth(BROADCAST, other, ETH_ARP, b""), a1)  # MAC checked before anything
    _spoofed(env, vlan(a2.mac, other, 10, ETH_IP, b""), a1)


def test_allowed_sources_pass(env):
    a1, _, _, _ = ids(env)
    ll = str(eui64_link_local(a1.mac))
    _kernel(env, eth(BROADCAST, a1.mac, ETH_ARP,  # ARP probe: sender 0.0.0.0
                     arp(1, a1.mac, "0.0.0.0", "00:00:00:00:00:00", str(a1.ipv4))), a1)
    _kernel(env, eth("33:33:ff:00:00:02", a1.mac, ETH_IPV6,  # DAD
                     ipv6("::", "ff02::1:ff00:2", 58, icmp6(135))), a1)
    _kernel(env, eth("33:33:00:00:00:16", a1.mac, ETH_IPV6,  # MLD report from ::
                     ipv6("::", "ff02::16", 0, b"\x3a\x00" + b"\x00" * 6 + icmp6(143))), a1)
    _kernel(env, eth("33:33:00:00:00:02", a1.mac, ETH_IPV6, ipv6(ll, "ff02::2", 58, icmp6(133))), a1)


def test_unknown_device_is_left_alone(env):
    from pyroute2 import IPRoute

    _a1, a2, _, _ = ids(env)
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
    pkt = v4("02:42:de:ad:be:ef", a2.mac, "1.2.3.4", str(a2.ipv4))
    for prog in ("ep_ingress", "ep_egress", "bridge_egress"):
        r = run(env.dp, prog, pkt, lo)
        assert (r.verdict, r.data, r.counts) == (TC_ACT_OK, pkt, {})


# -- ep_ingress: icc=false ------------------------------------------------------

def test_icc_false_drops_endpoint_to_endpoint(env):
    _, _, b1, b2 = ids(env)
    gw = env.networks["brB"]
    for pkt in (v4(b1.mac, b2.mac, str(b1.ipv4), str(b2.ipv4)),
                v6(b1.mac, b2.mac, str(b1.ipv6[0]), str(b2.ipv6[0]))):
        r = run(env.dp, "ep_ingress", pkt, b1.host_ifindex)
        assert r.verdict == TC_ACT_SHOT
        assert r.counts == {b1.id: {"tx_drop_policy": 1}}
    # gateway, ARP and ND still work
    _kernel(env, v4(b1.mac, gw.bridge_mac, str(b1.ipv4), "10.2.0.1"), b1)
    _kernel(env, eth(BROADCAST, b1.mac, ETH_ARP,
                     arp(1, b1.mac, str(b1.ipv4), BROADCAST, str(b2.ipv4))), b1)
    _kernel(env, eth(b2.mac, b1.mac, ETH_IPV6,
                     ipv6(str(b1.ipv6[0]), str(b2.ipv6[0]), 58, icmp6(135))), b1)


def test_icc_false_drops_multicast_dns_only(env):
    a1, _, b1, _ = ids(env)

    def mdns(ep, dport=5353):
        ll = str(eui64_link_local(ep.mac))
        return [eth("01:00:5e:00:00:fb", ep.mac, ETH_IP, ipv4(str(ep.ipv4), "224.0.0.251",
                                                              payload=udp(5353, dport))),
                eth("33:33:00:00:00:fb", ep.mac, ETH_IPV6, ipv6(ll, "ff02::fb", 17, udp(5353, dport))),
                eth("33:33:00:00:00:fb", ep.mac, ETH_IPV6, ipv6(str(ep.ipv6[0]), "ff02::fb", 17,
                                                                udp(40000, dport)))]
    for pkt in mdns(b1):
        r = run(env.dp, "ep_ingress", pkt, b1.host_ifindex)
        assert r.verdict == TC_ACT_SHOT
        assert r.counts == {b1.id: {"tx_drop_policy": 1}}
    for pkt in mdns(a1):  # icc=true: announced to every endpoint
        _kernel(env, pkt, a1)
    ll = str(eui64_link_local(b1.mac))
    for pkt in [*mdns(b1, dport=5354),  # not mDNS
                eth("01:00:5e:7f:ff:fa", b1.mac, ETH_IP, ipv4(str(b1.ipv4), "239.255.255.250",
                                                              payload=udp(1900, 1900))),
                eth("33:33:ff:00:00:03", b1.mac, ETH_IPV6, ipv6(ll, "ff02::1:ff00:3", 58, icmp6(135)))]:
        _kernel(env, pkt, b1)


# -- ep_egress --------------------------------------------------------------------

def test_egress_counts_kernel_rx(env):
    a1, a2, _, _ = ids(env)
    pkt = v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4))
    r = run(env.dp, "ep_egress", pkt, a2.host_ifindex, ingress_ifindex=a1.host_ifindex)
    assert (r.verdict, r.data) == (TC_ACT_OK, pkt)
    assert r.counts == {a2.id: {"rx_kernel_packets": 1, "rx_kernel_bytes": len(pkt)}}


def test_egress_skips_marked_redirects(env):
    a1, a2, _, _ = ids(env)
    pkt = v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4))
    r = run(env.dp, "ep_egress", pkt, a2.host_ifindex, cb=(0xB9F0FA57, 0x5EEDC0DE))
    assert (r.verdict, r.counts) == (TC_ACT_OK, {})
    assert r.cb[:2] == (0, 0)  # marker consumed
    # half a marker is no marker
    r = run(env.dp, "ep_egress", pkt, a2.host_ifindex, cb=(0xB9F0FA57, 0))
    assert r.counts == {a2.id: {"rx_kernel_packets": 1, "rx_kernel_bytes": len(pkt)}}


def test_egress_icc_false_drops_bridged_unicast_between_endpoints(env):
    _, _, b1, b2 = ids(env)
    pkt = v4(b1.mac, b2.mac, str(b1.ipv4), "10.2.0.200")  # not a fast-path destination
    r = run(env.dp, "ep_egress", pkt, b2.host_ifindex, ingress_ifindex=b1.host_ifindex)
    assert r.verdict == TC_ACT_SHOT
    assert r.counts == {b2.id: {"rx_drop_policy": 1}}
    # from the host (gateway), broadcast and ARP are delivered
    gw = env.networks["brB"]
    for p, iif in ((v4(gw.bridge_mac, b2.mac, "10.2.0.1", str(b2.ipv4)), 0),
                   (v4(gw.bridge_mac, b2.mac, "10.2.0.1", str(b2.ipv4)), gw.bridge_ifindex),
                   (eth(BROADCAST, b1.mac, ETH_ARP, arp(1, b1.mac, str(b1.ipv4), BROADCAST,
                                                       str(b2.ipv4))), b1.host_ifindex),
                   (eth(b2.mac, b1.mac, ETH_ARP, arp(2, b1.mac, str(b1.ipv4), b2.mac,
                                                     str(b2.ipv4))), b1.host_ifindex)):
        r = run(env.dp, "ep_egress", p, b2.host_ifindex, ingress_ifindex=iif)
        assert r.verdict == TC_ACT_OK
        assert r.counts == {b2.id: {"rx_kernel_packets": 1, "rx_kernel_bytes": len(p)}}
    # icc=true network: endpoint to endpoint through the bridge is fine
    a1, a2, _, _ = ids(env)
    r = run(env.dp, "ep_egress", v4(a1.mac, a2.mac, str(a1.ipv4), "10.1.0.200"),
            a2.host_ifindex, ingress_ifindex=a1.host_ifindex)
    assert r.verdict == TC_ACT_OK


@pytest.mark.parametrize("segs", [0, 1, 45])
def test_gso_super_packet_counts_as_its_segments(env, segs):
    """A GSO skb (TCP over veth: up to 64 KB per program run) counts gso_segs
    packets on every path; bytes are the skb length; 0 or 1 segments: one packet."""
    a1, a2, b1, b2 = ids(env)
    k = max(1, segs)
    fast = v4(a1.mac, a2.mac, str(a1.ipv4), str(a2.ipv4))
    to_gw = v4(a1.mac, env.networks["brA"].bridge_mac, str(a1.ipv4), "10.1.0.1")
    no_icc = v4(b1.mac, b2.mac, str(b1.ipv4), str(b2.ipv4))
    br = env.networks["brA"]
    cases = [
        ("ep_ingress", fast, a1.host_ifindex, 0,
         {a1.id: {"tx_fast_packets": k, "tx_fast_bytes": len(fast)},
          a2.id: {"rx_fast_packets": k, "rx_fast_bytes": len(fast)}}),
        ("ep_ingress", to_gw, a1.host_ifindex, 0,
         {a1.id: {"tx_kernel_packets": k, "tx_kernel_bytes": len(to_gw)}}),
        ("ep_ingress", no_icc, b1.host_ifindex, 0, {b1.id: {"tx_drop_policy": k}}),
        ("ep_egress", fast, a2.host_ifindex, a1.host_ifindex,
         {a2.id: {"rx_kernel_packets": k, "rx_kernel_bytes": len(fast)}}),
        ("bridge_egress", fast, br.bridge_ifindex, 0,
         {a2.id: {"rx_fast_packets": k, "rx_fast_bytes": len(fast)}}),
    ]
    for prog, pkt, ifindex, iif, counts in cases:
        r = run(env.dp, prog, pkt, ifindex, iif, gso_segs=segs, gso_size=1448 if segs else 0)
        assert r.counts == counts, prog


# -- bridge_egress ---------------------------------------------------------------

def test_bridge_redirects_host_to_endpoint(env):
    a1, a2, b1, _ = ids(env)
    br = env.networks["brA"]
    for pkt, dst in (
        (eth(br.bridge_mac, br.bridge_mac, ETH_IP, ipv4("10.1.0.1", str(a2.ipv4), 1, icmp_echo())),
         a2),
        (eth(a1.mac, br.bridge_mac, ETH_IPV6, ipv6("fd00:1::1", str(a1.ipv6[0]), 58, icmp6(129))),
         a1),
    ):
        r = run(env.dp, "bridge_egress", pkt, br.bridge_ifindex)
        assert r.verdict == TC_ACT_REDIRECT
        assert r.data[:6] == mac(dst.mac) and r.data[6:] == pkt[6:]
        assert r.counts == {dst.id: {"rx_fast_packets": 1, "rx_fast_bytes": len(pkt)}}
        assert r.cb[:2] == (0xB9F0FA57, 0x5EEDC0DE)  # so ep_egress will not count it again
    # endpoints are per network: brA does not deliver to b1 (net 2)
    pkt = eth(b1.mac, br.bridge_mac, ETH_IP, ipv4("10.1.0.1", str(b1.ipv4), 1, icmp_echo()))
    r = run(env.dp, "bridge_egress", pkt, br.bridge_ifindex)
    assert (r.verdict, r.counts) == (TC_ACT_OK, {})


def test_bridge_passes_the_rest(env):
    a1, _a2, _, _ = ids(env)
    br = env.networks["brA"]
    pkts = [
        eth(BROADCAST, br.bridge_mac, ETH_ARP, arp(1, br.bridge_mac, "10.1.0.1", BROADCAST,
                                                   str(a1.ipv4))),
        eth("01:00:5e:00:00:fb", br.bridge_mac, ETH_IP, ipv4("10.1.0.1", "224.0.0.251", 17, udp())),
        eth("33:33:00:00:00:fb", br.bridge_mac, ETH_IPV6, ipv6("fe80::1", "ff02::fb", 17, udp())),
        eth(a1.mac, br.bridge_mac, ETH_IPV6, ipv6("fd00:1::1", str(a1.ipv6[0]), 58, icmp6(135))),
        eth(a1.mac, br.bridge_mac, ETH_IP, ipv4("10.1.0.1", "10.1.0.200", 17, udp())),
        eth(a1.mac, br.bridge_mac, ETH_IP, ipv4("10.1.0.1", str(a1.ipv4), 17, udp(), frag=0x2000)),
        vlan(a1.mac, br.bridge_mac, 5, ETH_IP, ipv4("10.1.0.1", str(a1.ipv4), 17, udp())),
        eth(a1.mac, br.bridge_mac, ETH_IPV6, ipv6("fd00:1::1", str(a1.ipv6[0]), 58, b"")),
    ]
    for p in pkts:
        r = run(env.dp, "bridge_egress", p, br.bridge_ifindex)
        assert (r.verdict, r.data, r.counts) == (TC_ACT_OK, p, {})


def test_counters_shape(env):
    a1, a2, b1, b2 = ids(env)
    c = env.dp.counters()
    assert {a1.id, a2.id, b1.id, b2.id} <= set(c)
    one = c[a1.id]
    assert set(one) == {"tx_fast_packets", "tx_fast_bytes", "tx_kernel_packets",
                        "tx_kernel_bytes", "rx_fast_packets", "rx_fast_bytes",
                        "rx_kernel_packets", "rx_kernel_bytes", "tx_tunnel_packets", "tx_tunnel_bytes",
                        "rx_tunnel_packets", "rx_tunnel_bytes", "drops"}
    assert set(one["drops"]) == {"tx", "rx"}
    assert set(one["drops"]["tx"]) == {"spoofed_source", "policy", "internal", "tunnel_source"}


def test_info_lists_attached_programs(env):
    info = env.dp.info()
    assert info["mode"] == "redirect-peer" and info["pin_dir"] == env.pins
    attach = {p["attach"]: p for p in info["programs"]}
    assert attach["h-a1/ingress"]["name"] == "ep_ingress"
    assert attach["h-a1/egress"]["name"] == "ep_egress"
    assert attach["brA/egress"]["name"] == "bridge_egress"
    assert all(p["id"] > 0 and len(p["tag"]) == 16 for p in info["programs"])
    assert len(info["programs"]) == 2 + 2 * 4
