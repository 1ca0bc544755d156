"""The published ports' fast path (bpf/nat.h) through BPF_PROG_TEST_RUN.

In the env fixture's namespace: an uplink veth (198.51.100.1/24, 2001:db8:1::1/64, the
client's neighbour entry permanent) and endpoint a1 publishing 8080->80/tcp and
9000->90/udp on every address. A flow's first packet at uplink_ingress learns it (NEW),
its DNATed packet at bridge_egress promotes it, then uplink_ingress and ep_ingress
translate it: every rewritten packet is parsed again with the reference checksum code of
bpf_packets (IPv4 header checksum, TCP/UDP checksum over the pseudo-header).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
from bpf_packets import ETH_IP, ETH_IPV6, eth, ip_l4, parse_l4
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, run

pytestmark = pytest.mark.kernel
UP = "up-fp"
HOST4, HOST6 = "198.51.100.1", "2001:db8:1::1"
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:1::7"
CLIENT_MAC, UP_MAC = "02:00:00:00:77:07", "02:00:00:00:77:01"
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def fp(env) -> Iterator[object]:
    from bpf_env import inside
    from bpfnet.datapath.published import PublishedPort
    from pyroute2 import IPRoute

    a1 = env.endpoints["a1"]
    with inside(env.ns):
        _ip("link", "add", UP, "address", UP_MAC, "type", "veth", "peer", "name", UP + "-o")
        _ip("addr", "add", f"{HOST4}/24", "dev", UP)
        _ip("addr", "add", f"{HOST6}/64", "dev", UP, "nodad")
        for dev in (UP, UP + "-o"):
            _ip("link", "set", dev, "up")
        _ip("neigh", "replace", CLIENT4, "lladdr", CLIENT_MAC, "dev", UP, "nud", "permanent")
        _ip("neigh", "replace", CLIENT6, "lladdr", CLIENT_MAC, "dev", UP, "nud", "permanent")
        for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            with open(f"/proc/sys/{key}", "w") as f:
                f.write("1")
        with IPRoute() as ipr:
            up = ipr.link_lookup(ifname=UP)[0]
        ports = [PublishedPort(proto, fam, hport, addr, eport, a1.id, slot)
                 for slot, (proto, hport, eport) in enumerate((("tcp", 8080, 80), ("udp", 9000, 90)))
                 for fam, addr in ((4, a1.ipv4), (6, a1.ipv6[0]))]
        env.dp.set_published(ports)
        env.dp.set_uplinks({up: UP})
    env.up = up
    try:
        yield env
    finally:
        with inside(env.ns):
            env.dp.set_uplinks({})
            env.dp.set_published([])
            _ip("link", "del", UP)


def frame(family: int, dst_mac: str, src_mac: str, ip: bytes) -> bytes:
    return eth(dst_mac, src_mac, ETH_IP if family == 4 else ETH_IPV6, ip)


CASES = [(4, 6, 8080, 80), (4, 17, 9000, 90), (6, 6, 8080, 80), (6, 17, 9000, 90)]


def _addrs(fp, family: int) -> tuple[str, str, str]:
    a1 = fp.endpoints["a1"]
    if family == 4:
        return CLIENT4, HOST4, str(a1.ipv4)
    return CLIENT6, HOST6, str(a1.ipv6[0])


def _flows(fp, client: str, cport: int) -> dict[str, str]:
    return {f.direction: f.state for f in fp.dp.flows()
            if ip_address(client) in (f.saddr, f.daddr) and cport in (f.sport, f.dport)}


def establish(fp, family: int, proto: int, hport: int, eport: int, cport: int) -> None:
    """A flow's first packet at the uplink, then its DNATed packet routed to the bridge."""
    client, host, epaddr = _addrs(fp, family)
    a1, br = fp.endpoints["a1"], fp.networks["brA"]
    first = ip_l4(client, host, proto, cport, hport, flags=SYN)
    r = run(fp.dp, "uplink_ingress", frame(family, UP_MAC, CLIENT_MAC, first), fp.up)
    assert r.verdict == TC_ACT_OK and r.data == frame(family, UP_MAC, CLIENT_MAC, first)
    assert _flows(fp, client, cport) == {"in": "new", "out": "new"}
    # the kernel's DNAT: for TCP, the handshake's ACK (a SYN alone promotes nothing)
    if proto == 6:
        syn = ip_l4(client, epaddr, proto, cport, eport, flags=SYN, ttl=63)
        run(fp.dp, "bridge_egress", frame(family, a1.mac, br.bridge_mac, syn), br.bridge_ifindex, fp.up)
        assert _flows(fp, client, cport) == {"in": "new", "out": "new"}
    dnat = ip_l4(client, epaddr, proto, cport, eport, flags=ACK, ttl=63)
    r = run(fp.dp, "bridge_egress", frame(family, a1.mac, br.bridge_mac, dnat), br.bridge_ifindex, fp.up)
    assert r.verdict == TC_ACT_REDIRECT
    assert _flows(fp, client, cport) == {"in": "established", "out": "established"}


@pytest.mark.parametrize(("family", "proto", "hport", "eport"), CASES)
def test_established_flow_is_translated_both_ways(fp, family, proto, hport, eport) -> None:
    client, host, epaddr = _addrs(fp, family)
    a1, br = fp.endpoints["a1"], fp.networks["brA"]
    cport = 40000 + family * 10 + proto
    establish(fp, family, proto, hport, eport, cport)
    before = fp.dp.published_counters().get(1 if proto == 17 else 0, {})

    pkt = ip_l4(client, host, proto, cport, hport, payload=b"x" * 33)
    r = run(fp.dp, "uplink_ingress", frame(family, UP_MAC, CLIENT_MAC, pkt), fp.up)
    assert r.verdict == TC_ACT_REDIRECT
    p = parse_l4(r.data)
    assert (p.src, p.sport, p.dst, p.dport, p.ttl) == (client, cport, epaddr, eport, 63)
    assert (p.dst_mac, p.src_mac) == (a1.mac, br.bridge_mac)
    assert p.ip_csum_ok and p.l4_csum_ok and p.payload == b"x" * 33
    assert r.counts == {a1.id: {"rx_fast_packets": 1, "rx_fast_bytes": len(r.data)}}

    reply = ip_l4(epaddr, client, proto, eport, cport, payload=b"y" * 21)
    r = run(fp.dp, "ep_ingress", frame(family, br.bridge_mac, a1.mac, reply), a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    p = parse_l4(r.data)
    assert (p.src, p.sport, p.dst, p.dport, p.ttl) == (host, hport, client, cport, 63)
    assert (p.dst_mac, p.src_mac) == (CLIENT_MAC, UP_MAC)  # from the FIB lookup's neighbour
    assert p.ip_csum_ok and p.l4_csum_ok and p.payload == b"y" * 21
    assert r.counts == {a1.id: {"tx_fast_packets": 1, "tx_fast_bytes": len(r.data)}}

    after = fp.dp.published_counters()[1 if proto == 17 else 0]
    ip_len = len(pkt), len(reply)
    assert after["in_packets"] - before.get("in_packets", 0) == 1
    assert after["in_bytes"] - before.get("in_bytes", 0) == ip_len[0]
    assert after["out_packets"] - before.get("out_packets", 0) == 1
    assert after["out_bytes"] - before.get("out_bytes", 0) == ip_len[1]


def test_ipv4_udp_without_checksum_keeps_none(fp) -> None:
    client, host, epaddr = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 41000)
    pkt = ip_l4(client, host, 17, 41000, 9000, udp_no_csum=True)
    r = run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, pkt), fp.up)
    p = parse_l4(r.data)
    assert r.verdict == TC_ACT_REDIRECT and p.dst == epaddr and p.l4_csum == 0 and p.ip_csum_ok


@pytest.mark.parametrize("flag", [FIN, RST])
def test_fin_or_rst_ends_the_flow_on_the_kernel_path(fp, flag) -> None:
    client, host, epaddr = _addrs(fp, 4)
    a1, br = fp.endpoints["a1"], fp.networks["brA"]
    cport = 42000 + flag
    establish(fp, 4, 6, 8080, 80, cport)
    fin = ip_l4(epaddr, client, 6, 80, cport, flags=flag | ACK)
    r = run(fp.dp, "ep_ingress", frame(4, br.bridge_mac, a1.mac, fin), a1.host_ifindex)
    assert r.verdict == TC_ACT_OK and r.data == frame(4, br.bridge_mac, a1.mac, fin)
    assert _flows(fp, client, cport) == {}
    # the rest of the close goes the kernel's way and learns nothing
    ack = ip_l4(client, host, 6, cport, 8080, flags=ACK)
    r = run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, ack), fp.up)
    assert r.verdict == TC_ACT_OK and _flows(fp, client, cport) == {}


def test_a_syn_on_an_established_tuple_starts_over(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    establish(fp, 4, 6, 8080, 80, 43000)
    syn = ip_l4(client, host, 6, 43000, 8080, flags=SYN)
    r = run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, syn), fp.up)
    assert r.verdict == TC_ACT_OK and _flows(fp, client, 43000) == {"in": "new", "out": "new"}


def test_what_the_kernel_rewrote_otherwise_is_not_promoted(fp) -> None:
    # conntrack changed the source port (a clash), or another rule SNATed: no match, no fast path
    client, host, epaddr = _addrs(fp, 4)
    a1, br = fp.endpoints["a1"], fp.networks["brA"]
    syn = ip_l4(client, host, 6, 44000, 8080, flags=SYN)
    run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, syn), fp.up)
    other = ip_l4(client, epaddr, 6, 44001, 80, flags=ACK)
    run(fp.dp, "bridge_egress", frame(4, a1.mac, br.bridge_mac, other), br.bridge_ifindex, fp.up)
    assert _flows(fp, client, 44000) == {"in": "new", "out": "new"}
    data = ip_l4(client, host, 6, 44000, 8080)
    assert run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, data), fp.up).verdict == TC_ACT_OK


def test_unpublished_and_other_ports_stay_on_the_kernel_path(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    for dport, proto in ((8081, 6), (8080, 17)):
        pkt = ip_l4(client, host, proto, 45000, dport, flags=SYN)
        r = run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, pkt), fp.up)
        assert r.verdict == TC_ACT_OK and _flows(fp, client, 45000) == {}


def test_unpublishing_removes_the_ports_flows(fp) -> None:
    from bpf_env import inside

    establish(fp, 6, 6, 8080, 80, 46000)
    kept = fp.dp.published()
    with inside(fp.ns):
        fp.dp.set_published([p for p in kept if p.proto != "tcp"])
    try:
        assert _flows(fp, CLIENT6, 46000) == {}
        assert {p.proto for p in fp.dp.published()} == {"udp"}
    finally:
        with inside(fp.ns):
            fp.dp.set_published(kept)


def test_uplink_program_is_listed_and_attached(fp) -> None:
    progs = [p for p in fp.dp.info()["programs"] if p["name"] == "uplink_ingress"]
    assert [p["attach"] for p in progs] == [f"{UP}/ingress"]
    assert socket.if_nametoindex(UP) == fp.up


def test_larger_than_the_endpoints_mtu_goes_to_the_kernel(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 47000)
    big = ip_l4(client, host, 17, 47000, 9000, payload=b"z" * 1600)  # h-a1's MTU is 1500
    r = run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, big), fp.up)
    assert r.verdict == TC_ACT_OK and r.data == frame(4, UP_MAC, CLIENT_MAC, big)
    small = ip_l4(client, host, 17, 47000, 9000, payload=b"z" * 1400)
    assert run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, small), fp.up).verdict == TC_ACT_REDIRECT


def _age(fp, client: str, cport: int, field: str, direction: str = "in") -> None:
    """Set FIELD (last_ns or kernel_ns) of one direction of the flow to boot time: long ago."""
    from bpfnet.datapath import abi
    from bpfnet.datapath.maps import PinnedMaps

    [f] = [f for f in fp.dp.flows() if f.direction == direction
           and client in (str(f.saddr), str(f.daddr)) and cport in (f.sport, f.dport)]
    maps = PinnedMaps(fp.pins, 4096)
    try:
        raw = bytearray(maps.get("published_flows", f.key) or b"")
        raw[abi.FLOW.offsets[field]:abi.FLOW.offsets[field] + 8] = bytes(8)
        maps.put("published_flows", f.key, bytes(raw))
    finally:
        maps.close()


def test_an_idle_flow_leaves_the_fast_path_and_is_learnt_anew(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 48000)
    _age(fp, client, 48000, "last_ns")  # idle longer than FLOW_UDP_IDLE
    pkt = frame(4, UP_MAC, CLIENT_MAC, ip_l4(client, host, 17, 48000, 9000))
    assert run(fp.dp, "uplink_ingress", pkt, fp.up).verdict == TC_ACT_OK
    assert _flows(fp, client, 48000) == {"in": "new", "out": "new"}


def test_udp_lets_one_packet_refresh_the_kernels_entry(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 49000)
    _age(fp, client, 49000, "kernel_ns")  # the kernel last saw the flow more than FLOW_REFRESH ago
    pkt = frame(4, UP_MAC, CLIENT_MAC, ip_l4(client, host, 17, 49000, 9000))
    r = run(fp.dp, "uplink_ingress", pkt, fp.up)
    assert r.verdict == TC_ACT_OK and r.data == pkt  # this one goes the kernel's way, unchanged
    assert _flows(fp, client, 49000) == {"in": "established", "out": "established"}
    assert run(fp.dp, "uplink_ingress", pkt, fp.up).verdict == TC_ACT_REDIRECT  # the next ones do not


def test_the_controller_prunes_idle_flows(fp) -> None:
    from bpf_env import inside
    from bpfnet.datapath.published import twin_key

    client, _, _ = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 50000)
    establish(fp, 4, 17, 9000, 90, 50001)
    for f in fp.dp.flows():  # the Python twin of a flow is the one the programs write
        assert twin_key(f) in {g.key for g in fp.dp.flows()}
    _age(fp, client, 50000, "last_ns")  # one direction idle (a one-way flow): kept
    with inside(fp.ns):
        fp.dp.set_published(fp.dp.published())  # every sync prunes
    assert _flows(fp, client, 50000) == {"in": "established", "out": "established"}
    _age(fp, client, 50001, "last_ns")
    _age(fp, client, 50001, "last_ns", "out")
    with inside(fp.ns):
        fp.dp.set_published(fp.dp.published())
    assert _flows(fp, client, 50001) == {}



def test_frames_for_another_host_are_left_alone(fp) -> None:
    client, host, _ = _addrs(fp, 4)
    establish(fp, 4, 17, 9000, 90, 51000)
    pkt = ip_l4(client, host, 17, 51000, 9000)
    other = frame(4, "02:00:00:00:99:99", CLIENT_MAC, pkt)  # seen in promiscuous mode only
    assert run(fp.dp, "uplink_ingress", other, fp.up).verdict == TC_ACT_OK
    assert run(fp.dp, "uplink_ingress", frame(4, UP_MAC, CLIENT_MAC, pkt), fp.up).verdict == TC_ACT_REDIRECT
