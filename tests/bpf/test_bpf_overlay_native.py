"""The overlay's native encapsulation (bpf/tunnel.h: tunnel_encap, tunnel_recv) through
BPF_PROG_TEST_RUN.

As in test_bpf_overlay.py, the env fixture's networks become overlay networks (brA: VNI 4096,
icc=true; brB: VNI 4097, icc=false) with a collect-metadata VXLAN device; here the datapath
also gets this host's VTEP (192.0.2.1 on an uplink veth) and encapsulates itself. Remote
endpoints live on the host at 192.0.2.7 (neighbour permanent), one at 192.0.2.8 (no
neighbour entry: bpf_redirect_neigh) and one at 198.51.100.9 (no route: the device's way).
Every frame a program writes is parsed back field by field, the outer IPv4 checksum with
bpf_packets' reference arithmetic.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest
from bpf_packets import ETH_IP, ETH_IPV6, eth, inet_csum, ipv4, ipv6, mac, udp
from bpfnet.model import RemoteEndpointSpec
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, run

pytestmark = pytest.mark.kernel
UP = "up-vx"
UP_MAC, PEER_MAC = "02:00:00:00:77:01", "02:00:00:00:77:07"
LOCAL_VTEP, VTEP, VTEP_NO_NEIGH, VTEP_NO_ROUTE = "192.0.2.1", "192.0.2.7", "192.0.2.8", "198.51.100.9"
VNI_A, VNI_B = 4096, 4097
OUTER = 14 + 20 + 8 + 8  # outer Ethernet, IPv4, UDP, VXLAN: then the inner frame
# bpf_skb_adjust_room() learnt to strip an outer header in front of another family's (the
# BPF_F_ADJ_ROOM_DECAP_L3_* flags) in Linux 6.3; before, tunnel_recv() leaves every packet to
# the kernel's VXLAN device (make vm-test KERNEL=6.1 runs this file there).
DECAP = tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (6, 3)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def native(env: Any) -> Iterator[dict[str, Any]]:
    from bpf_env import inside
    from pyroute2 import IPRoute

    nets = env.networks
    remotes = {
        "r1": RemoteEndpointSpec(nets["brA"].id, IPv4Address("10.1.0.50"), "02:42:0a:01:00:32",
                                 IPv4Address(VTEP), (IPv6Address("fd00:1::50"),)),
        "r2": RemoteEndpointSpec(nets["brB"].id, IPv4Address("10.2.0.50"), "02:42:0a:02:00:32", IPv4Address(VTEP)),
        "r3": RemoteEndpointSpec(nets["brA"].id, IPv4Address("10.1.0.51"), "02:42:0a:01:00:33",
                                 IPv4Address(VTEP_NO_NEIGH)),
        "r4": RemoteEndpointSpec(nets["brA"].id, IPv4Address("10.1.0.52"), "02:42:0a:01:00:34",
                                 IPv4Address(VTEP_NO_ROUTE)),
    }
    with inside(env.ns):
        _ip("link", "add", UP, "address", UP_MAC, "type", "veth", "peer", "name", UP + "-o")
        _ip("addr", "add", f"{LOCAL_VTEP}/24", "dev", UP)
        for dev in (UP, UP + "-o"):
            _ip("link", "set", dev, "up")
        _ip("neigh", "replace", VTEP, "lladdr", PEER_MAC, "dev", UP, "nud", "permanent")
        _forwarding("1")  # as the daemon's --ip-forward sets it: the FIB helper requires it
        with IPRoute() as ipr:
            ipr.link("add", ifname="vxn", kind="vxlan", vxlan_collect_metadata=1, vxlan_port=4789)
            vx = ipr.link_lookup(ifname="vxn")[0]
            up = ipr.link_lookup(ifname=UP)[0]
    try:
        with inside(env.ns):
            env.dp.attach_network(replace(nets["brA"], vni=VNI_A))
            env.dp.attach_network(replace(nets["brB"], vni=VNI_B))
            env.dp.set_tunnel(vx, IPv4Address(LOCAL_VTEP), up)
            env.dp.set_uplinks({up: UP})
            for r in remotes.values():
                env.dp.add_remote(r)
        yield {"vx": vx, "up": up, **remotes}
    finally:
        with inside(env.ns):
            env.dp.set_remotes([])
            env.dp.set_uplinks({})
            env.dp.set_tunnel(0)
            env.dp.attach_network(nets["brA"])
            env.dp.attach_network(nets["brB"])
            _ip("link", "del", "vxn")
            _ip("link", "del", UP)


def _forwarding(value: str) -> str:
    """Set net.ipv4.ip_forward in the test namespace (the thread is in it); the old value."""
    with open("/proc/sys/net/ipv4/ip_forward", "r+") as f:
        old = f.read().strip()
        f.seek(0)
        f.write(value)
    return old


def vxlan(outer_src: str, outer_dst: str, vni: int, inner: bytes, *, dport: int = 4789, frag: int = 0,
          flags: int = 0x08) -> bytes:
    """A VXLAN packet as another host's kernel (or program) sends it to this host's uplink."""
    payload = udp(54321, dport, struct.pack("!B3xI", flags, vni << 8) + inner)
    return eth(UP_MAC, PEER_MAC, ETH_IP, ipv4(outer_src, outer_dst, 17, payload, frag=frag))


def parse_outer(frame: bytes) -> dict[str, Any]:
    ip = frame[14:34]
    ver_ihl, _, tot_len, _, frag, ttl, proto, _ = struct.unpack("!BBHHHBBH", ip[:12])
    sport, dport, ulen, ucsum = struct.unpack("!HHHH", frame[34:42])
    vflags, vni = struct.unpack("!B3xI", frame[42:50])
    return {"dst_mac": frame[0:6], "src_mac": frame[6:12], "proto": struct.unpack("!H", frame[12:14])[0],
            "ver_ihl": ver_ihl, "tot_len": tot_len, "frag": frag, "ttl": ttl, "ip_proto": proto,
            "src": str(IPv4Address(ip[12:16])), "dst": str(IPv4Address(ip[16:20])), "ip_csum_ok": inet_csum(ip) == 0,
            "sport": sport, "dport": dport, "udp_len": ulen, "udp_csum": ucsum, "vx_flags": vflags,
            "vni": vni >> 8, "inner": frame[OUTER:]}


@pytest.mark.parametrize("family", [4, 6])
def test_send_to_a_remote_endpoint_is_encapsulated_by_the_program(env: Any, native: dict[str, Any],
                                                                  family: int) -> None:
    a1, r1 = env.endpoints["a1"], native["r1"]
    ip = (ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp()) if family == 4
          else ipv6(str(a1.ipv6[0]), str(r1.ipv6[0]), payload=udp()))
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP if family == 4 else ETH_IPV6, ip)
    before = env.dp.tunnel_counters()
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    o = parse_outer(r.data)
    assert (o["dst_mac"], o["src_mac"], o["proto"]) == (mac(PEER_MAC), mac(UP_MAC), ETH_IP)  # from the FIB
    assert (o["ver_ihl"], o["ttl"], o["ip_proto"], o["src"], o["dst"]) == (0x45, 64, 17, LOCAL_VTEP, VTEP)
    assert o["ip_csum_ok"] and o["tot_len"] == len(r.data) - 14 and o["frag"] == 0
    assert o["dport"] == 4789 and 32768 <= o["sport"] <= 65535
    assert o["udp_len"] == len(r.data) - 34 and o["udp_csum"] == 0
    assert (o["vx_flags"], o["vni"]) == (0x08, VNI_A)
    # the inner frame: the remote endpoint's MAC, the sender's, the packet untouched
    assert o["inner"] == mac(r1.mac) + pkt[6:]
    assert r.counts == {a1.id: {"tx_tunnel_packets": 1, "tx_tunnel_bytes": len(pkt)}}
    after = env.dp.tunnel_counters()
    assert after["tx_native"] == before["tx_native"] + 1


def test_the_source_port_follows_the_inner_flow(env: Any, native: dict[str, Any]) -> None:
    """Flows spread over the underlay's ECMP paths; one flow keeps its port (no reordering)."""
    a1, r1 = env.endpoints["a1"], native["r1"]

    def sport(inner_sport: int) -> int:
        pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp(inner_sport)))
        return int(parse_outer(run(env.dp, "ep_ingress", pkt, a1.host_ifindex).data)["sport"])

    ports = {p: sport(p) for p in range(1000, 1016)}
    assert all(sport(p) == s for p, s in ports.items())
    assert len(set(ports.values())) > 1


def test_unresolved_neighbour_is_sent_with_redirect_neigh(env: Any, native: dict[str, Any]) -> None:
    a1, r3 = env.endpoints["a1"], native["r3"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r3.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT  # the kernel resolves 192.0.2.8 and fills the MACs
    o = parse_outer(r.data)
    assert (o["dst"], o["vni"], o["inner"]) == (VTEP_NO_NEIGH, VNI_A, mac(r3.mac) + pkt[6:])


def test_no_route_to_the_vtep_takes_the_device(env: Any, native: dict[str, Any]) -> None:
    a1, r4 = env.endpoints["a1"], native["r4"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r4.ipv4), payload=udp()))
    before = env.dp.tunnel_counters()
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT and r.data == mac(r4.mac) + pkt[6:]  # not encapsulated here
    assert r.counts == {a1.id: {"tx_tunnel_packets": 1, "tx_tunnel_bytes": len(pkt)}}
    assert env.dp.tunnel_counters()["tx_native"] == before["tx_native"]


def test_too_big_for_the_underlay_takes_the_device(env: Any, native: dict[str, Any]) -> None:
    """An outer packet over the uplink's MTU (1500) is left to the device, which answers with
    the ICMP error path MTU discovery needs; one that fits is encapsulated here."""
    a1, r1 = env.endpoints["a1"], native["r1"]
    for ip_len, native_path in ((1450, True), (1451, False)):
        ip = ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp(payload=b"x" * (ip_len - 28)))
        pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ip)
        r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
        assert r.verdict == TC_ACT_REDIRECT
        assert (len(r.data) == len(pkt) + OUTER) == native_path, ip_len


def test_without_forwarding_the_device_encapsulates(env: Any, native: dict[str, Any]) -> None:
    """bpf_fib_lookup answers only where the namespace forwards (--ip-forward=false)."""
    a1, r1 = env.endpoints["a1"], native["r1"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp()))
    old = _forwarding("0")
    try:
        r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    finally:
        _forwarding(old)
    assert r.verdict == TC_ACT_REDIRECT and r.data == mac(r1.mac) + pkt[6:]


def test_without_a_vtep_the_device_encapsulates(env: Any, native: dict[str, Any]) -> None:
    from bpf_env import inside

    a1, r1 = env.endpoints["a1"], native["r1"]
    with inside(env.ns):
        env.dp.set_tunnel(native["vx"])  # --overlay-encap device
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), payload=udp()))
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT and r.data == mac(r1.mac) + pkt[6:]
    inner = eth(a1.mac, r1.mac, ETH_IP, ipv4(str(r1.ipv4), str(a1.ipv4), payload=udp()))
    r = run(env.dp, "uplink_ingress", vxlan(VTEP, LOCAL_VTEP, VNI_A, inner), native["up"])
    assert r.verdict == TC_ACT_OK and r.counts == {}  # the kernel's UDP socket and the device


@pytest.mark.parametrize("family", [4, 6])
def test_receive_is_decapsulated_into_the_endpoint(env: Any, native: dict[str, Any], family: int) -> None:
    a1, r1 = env.endpoints["a1"], native["r1"]
    ip = (ipv4(str(r1.ipv4), str(a1.ipv4), payload=udp()) if family == 4
          else ipv6(str(r1.ipv6[0]), str(a1.ipv6[0]), payload=udp()))
    inner = eth("02:00:00:00:00:99", r1.mac, ETH_IP if family == 4 else ETH_IPV6, ip)
    before = env.dp.tunnel_counters()
    pkt = vxlan(VTEP, LOCAL_VTEP, VNI_A, inner)
    r = run(env.dp, "uplink_ingress", pkt, native["up"])
    if not DECAP:
        assert r.verdict == TC_ACT_OK and r.data == pkt and r.counts == {}  # the device's way
        assert env.dp.tunnel_counters() == before
        return
    assert r.verdict == TC_ACT_REDIRECT
    assert r.data == mac(a1.mac) + inner[6:]  # the endpoint's MAC, the rest as the sender wrote it
    assert r.counts == {a1.id: {"rx_tunnel_packets": 1, "rx_tunnel_bytes": len(inner)}}
    after = env.dp.tunnel_counters()
    assert after["rx_native"] == before["rx_native"] + 1
    assert after["rx_packets"] == before["rx_packets"] + 1 and after["rx_bytes"] == before["rx_bytes"] + len(inner)


def _inner_to_a1(env: Any, native: dict[str, Any], src: str | None = None) -> bytes:
    a1, r1 = env.endpoints["a1"], native["r1"]
    return eth(a1.mac, r1.mac, ETH_IP, ipv4(src or str(r1.ipv4), str(a1.ipv4), payload=udp()))


@pytest.mark.parametrize("case", ["other vni", "not our vtep", "wrong vtep for the source", "spoofed source",
                                  "no such endpoint", "not vxlan", "no vni flag", "fragment", "broadcast"])
def test_what_the_native_path_declines_goes_to_the_kernel(env: Any, native: dict[str, Any], case: str) -> None:
    """Untouched and uncounted: the kernel's VXLAN device and tunnel_ingress judge it as before."""
    a1 = env.endpoints["a1"]
    inner = _inner_to_a1(env, native)
    pkt = {
        "other vni": lambda: vxlan(VTEP, LOCAL_VTEP, 5000, inner),
        "not our vtep": lambda: vxlan(VTEP, "192.0.2.99", VNI_A, inner),
        "wrong vtep for the source": lambda: vxlan(VTEP_NO_NEIGH, LOCAL_VTEP, VNI_A, inner),
        "spoofed source": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, _inner_to_a1(env, native, "10.1.0.99")),
        "no such endpoint": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, eth(
            a1.mac, native["r1"].mac, ETH_IP, ipv4(str(native["r1"].ipv4), "10.1.0.77", payload=udp()))),
        "not vxlan": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, inner, dport=4790),
        "no vni flag": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, inner, flags=0),
        "fragment": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, inner, frag=0x2000),
        "broadcast": lambda: vxlan(VTEP, LOCAL_VTEP, VNI_A, b"\xff" * 6 + inner[6:]),
    }[case]()
    before = env.dp.tunnel_counters()
    r = run(env.dp, "uplink_ingress", pkt, native["up"])
    assert r.verdict == TC_ACT_OK and r.data == pkt and r.counts == {}
    assert env.dp.tunnel_counters() == before


def test_icc_false_and_gso_are_left_to_the_device(env: Any, native: dict[str, Any]) -> None:
    b1, r2 = env.endpoints["b1"], native["r2"]
    inner = eth(b1.mac, r2.mac, ETH_IP, ipv4(str(r2.ipv4), str(b1.ipv4), payload=udp()))
    pkt = vxlan(VTEP, LOCAL_VTEP, VNI_B, inner)
    r = run(env.dp, "uplink_ingress", pkt, native["up"])
    assert r.verdict == TC_ACT_OK and r.data == pkt  # tunnel_ingress drops it as DROP_POLICY
    # a GRO aggregate: no program can clear its tunnel GSO state on this kernel
    pkt = vxlan(VTEP, LOCAL_VTEP, VNI_A, _inner_to_a1(env, native))
    r = run(env.dp, "uplink_ingress", pkt, native["up"], gso_segs=2, gso_size=1000)
    assert r.verdict == TC_ACT_OK and r.data == pkt


def test_a_super_packet_the_helper_refuses_takes_the_device(env: Any, native: dict[str, Any]) -> None:
    """A test run's GSO packet has no GSO type, which bpf_skb_adjust_room() refuses, as it
    would a GSO type it cannot tunnel: nothing is lost, the device encapsulates it. (TCP
    super-packets are encapsulated natively: tests/test_cluster.py counts them.)"""
    a1, r1 = env.endpoints["a1"], native["r1"]
    pkt = eth("02:00:00:00:00:99", a1.mac, ETH_IP, ipv4(str(a1.ipv4), str(r1.ipv4), 6, b"x" * 3000))
    before = env.dp.tunnel_counters()
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex, gso_segs=3, gso_size=1000)
    assert r.verdict == TC_ACT_REDIRECT and r.data == mac(r1.mac) + pkt[6:]
    assert r.counts == {a1.id: {"tx_tunnel_packets": 3, "tx_tunnel_bytes": len(pkt)}}
    assert env.dp.tunnel_counters()["tx_native"] == before["tx_native"]
