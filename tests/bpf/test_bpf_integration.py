"""End to end in namespaces: a bridge namespace (where the datapath runs) and
two endpoint namespaces connected by veths (or netkit pairs, on kernels that
have them), built here with pyroute2.

Pings over IPv4 and IPv6 must work and the fast-path counters must prove the
packets took it; spoofed sources are dropped and counted; icc=false blocks
endpoint to endpoint but not endpoint to gateway. Both fast-path modes with
veth endpoints, and netkit endpoints (redirect mode, the one netkit supports;
skipped where the kernel has no netkit, see test_bpf_netkit.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from bpf_env import inside, netns, pin_dir, unique
from dp_helpers import delta

pytestmark = pytest.mark.kernel

GW4, GW6 = "10.99.0.1", "fd99::1"


@dataclass
class Topo:
    br_ns: str
    ep_ns: dict[str, str]
    net: object
    eps: dict[str, object]
    dp: object
    netkit: bool = False


def sh(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                          check=check, timeout=30)


def ping(ns: str, dst: str, count: int = 3, src: str | None = None, size: int = 56) -> bool:
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.1", "-W", "1", "-s", str(size)]
    if src:
        cmd += ["-I", src]
    return sh(ns, *cmd, dst, check=False).returncode == 0


NETKIT = "redirect+netkit"  # fixture param: redirect mode, netkit endpoints


def _build(param: str, br_ns: str, ns_a: str, ns_b: str, pins: str) -> Topo:
    from bpfnet.addressing import link_local_from_mac as eui64_link_local
    from bpfnet.datapath import netkit
    from bpfnet.datapath.ebpf import EbpfDatapath
    from bpfnet.model import EndpointSpec, NetworkSpec
    from pyroute2 import IPRoute

    nodad = 0x02  # IFA_F_NODAD: addresses usable at once
    with inside(br_ns), IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        ipr.link("add", ifname="br0", kind="bridge")
        br = ipr.link_lookup(ifname="br0")[0]
        ipr.addr("add", index=br, address=GW4, prefixlen=24)
        ipr.addr("add", index=br, address=GW6, prefixlen=64, flags=nodad)
        ipr.link("set", index=br, state="up")
        brmac = ipr.get_links(br)[0].get_attr("IFLA_ADDRESS")
        net = NetworkSpec(name="n", id=7, bridge="br0", bridge_ifindex=br, bridge_mac=brmac,
                          gateway4=IPv4Address(GW4), gateway6=(IPv6Address(GW6),), icc=True)
        eps = {}
        for i, (name, ns) in enumerate((("a", ns_a), ("b", ns_b)), start=2):
            mac = f"02:42:0a:63:00:{i:02x}"
            if param == NETKIT:
                netkit.create_pair(f"h-{name}", ns, "eth0", mac, 1500, master=br, up=True)
                host = ipr.link_lookup(ifname=f"h-{name}")[0]
            else:
                ipr.link("add", ifname=f"h-{name}", kind="veth", peer=f"c-{name}")
                host = ipr.link_lookup(ifname=f"h-{name}")[0]
                peer = ipr.link_lookup(ifname=f"c-{name}")[0]
                ipr.link("set", index=peer, address=mac, ifname="eth0", net_ns_fd=ns)
                ipr.link("set", index=host, master=br, state="up")
            v4, v6 = f"10.99.0.{i}", f"fd99::{i}"
            eps[name] = EndpointSpec(
                name=name, id=40 + i, network="n", network_id=7, host_ifname=f"h-{name}",
                host_ifindex=host, mac=mac, ipv4=IPv4Address(v4),
                ipv6=(IPv6Address(v6), eui64_link_local(mac)),
                device="netkit" if param == NETKIT else "veth")
            sh(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
            with inside(ns), IPRoute() as inner:
                lo = inner.link_lookup(ifname="lo")[0]
                eth0 = inner.link_lookup(ifname="eth0")[0]
                inner.link("set", index=lo, state="up")
                inner.addr("add", index=eth0, address=v4, prefixlen=24)
                inner.addr("add", index=eth0, address=v6, prefixlen=64, flags=nodad)
                inner.link("set", index=eth0, state="up")
                inner.route("add", dst="default", gateway=GW4)
        mode = "redirect" if param == NETKIT else param
        dp = EbpfDatapath(mode=mode, pin_dir=pins, endpoint_device="netkit" if param == NETKIT else "veth")
        dp.start([net], list(eps.values()))
    return Topo(br_ns, {"a": ns_a, "b": ns_b}, net, eps, dp, param == NETKIT)


@pytest.fixture(params=["redirect-peer", "redirect", NETKIT], scope="module")
def topo(request: pytest.FixtureRequest) -> Iterator[Topo]:
    from bpfnet.datapath.netkit import netkit_available

    if request.param == NETKIT and not netkit_available():
        pytest.skip("this kernel has no netkit devices (make vm-test KERNEL=6.12 runs these)")
    base = unique("bpfnet-t-")
    with netns(base) as br_ns, netns(base + "-a") as ns_a, netns(base + "-b") as ns_b, \
            pin_dir() as pins:
        t = _build(request.param, br_ns, ns_a, ns_b, pins)
        try:
            # warm up neighbour caches so that the counted pings below are pure data
            assert ping(ns_a, "10.99.0.3", 1) and ping(ns_a, "fd99::3", 1)
            assert ping(ns_a, GW4, 1) and ping(ns_a, GW6, 1)
            yield t
        finally:
            with inside(br_ns):
                t.dp.cleanup()


def counters(t: Topo) -> dict:
    with inside(t.br_ns):
        return t.dp.counters()


def test_ping_between_endpoints_takes_the_fast_path(topo: Topo) -> None:
    a, b = topo.eps["a"], topo.eps["b"]
    size = 1400  # big echoes: one counted twice would stand out from background multicast
    for dst in ("10.99.0.3", "fd99::3"):
        before = counters(topo)
        assert ping(topo.ep_ns["a"], dst, 5, size=size)
        d = delta(before, counters(topo))
        # 5 echo requests a -> b and 5 replies b -> a, all redirected
        assert d[a.id]["tx_fast_packets"] == 5 and d[b.id]["rx_fast_packets"] == 5, d
        assert d[b.id]["tx_fast_packets"] == 5 and d[a.id]["rx_fast_packets"] == 5, d
        assert d[b.id]["rx_fast_bytes"] >= 5 * size, d
        # and not counted a second time on the kernel path (redirect mode marks
        # what it sends out of the host veth). Small packets may pass meanwhile:
        # RS/MLD multicast of freshly started endpoints, a neighbour probe.
        for ep in (a, b):
            assert d[ep.id].get("rx_kernel_bytes", 0) < size, d
            assert d[ep.id].get("tx_kernel_bytes", 0) < size, d


TCP_SINK = """
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 5001))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
n = 0
while chunk := c.recv(1 << 16):
    n += len(chunk)
print(n, flush=True)
"""
TCP_SEND = """
import socket, sys
with socket.create_connection((sys.argv[1], 5001), timeout=10) as c:
    c.sendall(b"x" * int(sys.argv[2]))
"""


def test_tcp_counts_segments_not_gso_super_packets(topo: Topo) -> None:
    """TCP over veth hands the programs GSO super-packets of up to 64 KB; each counts as
    the segments it stands for, so no counted packet carries more than one MTU."""
    a, b = topo.eps["a"], topo.eps["b"]
    total = 4 << 20
    sink = subprocess.Popen(["ip", "netns", "exec", topo.ep_ns["b"], sys.executable, "-c",
                             TCP_SINK, "10.99.0.3"], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        before = counters(topo)
        sh(topo.ep_ns["a"], sys.executable, "-c", TCP_SEND, "10.99.0.3", str(total))
        assert int(sink.stdout.readline()) == total
        d = delta(before, counters(topo))
    finally:
        sink.kill()
        sink.wait(timeout=5)
    pkts, nbytes = d[a.id]["tx_fast_packets"], d[a.id]["tx_fast_bytes"]
    assert nbytes >= total and d[b.id]["rx_fast_packets"] == pkts, d
    assert nbytes / 1514 <= pkts <= nbytes / 1000 + 20, d  # MSS 1448 at MTU 1500


def test_ping_gateway(topo: Topo) -> None:
    a = topo.eps["a"]
    for dst in (GW4, GW6):
        before = counters(topo)
        assert ping(topo.ep_ns["a"], dst, 3)
        d = delta(before, counters(topo))
        assert d[a.id]["tx_kernel_packets"] >= 3, d  # to the gateway: kernel
        assert d[a.id]["rx_fast_packets"] >= 3, d  # replies: bridge program redirect


def test_spoofed_source_is_dropped_and_counted(topo: Topo) -> None:
    a = topo.eps["a"]
    ns = topo.ep_ns["a"]
    sh(ns, "ip", "addr", "add", "10.99.0.77/24", "dev", "eth0")
    sh(ns, "ip", "addr", "add", "fd99::77/64", "dev", "eth0", "nodad")
    try:
        before = counters(topo)
        assert not ping(ns, "10.99.0.3", 2, src="10.99.0.77")
        assert not ping(ns, "fd99::3", 2, src="fd99::77")
        d = delta(before, counters(topo))
        assert d[a.id]["tx_drop_spoofed_source"] >= 4, d
        assert ping(ns, "10.99.0.3", 1)  # its own address still works
    finally:
        sh(ns, "ip", "addr", "del", "10.99.0.77/24", "dev", "eth0", check=False)
        sh(ns, "ip", "addr", "del", "fd99::77/64", "dev", "eth0", check=False)


def test_multicast_reaches_the_other_endpoint(topo: Topo) -> None:
    """mDNS-style UDP to 224.0.0.251 goes through the bridge untouched."""
    b_ns, a_ns = topo.ep_ns["b"], topo.ep_ns["a"]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", b_ns, "python3", "-c", _MCAST_LISTENER],
        stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        sender = ("import socket,time\n"
                  "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                  "s.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,"
                  "socket.inet_aton('10.99.0.2'))\n"
                  "for _ in range(10):\n s.sendto(b'bpfnet-mdns',('224.0.0.251',5353));"
                  "time.sleep(0.1)\n")
        sh(a_ns, "python3", "-c", sender)
        out, _ = listener.communicate(timeout=10)
        assert "bpfnet-mdns" in out
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


_MCAST_LISTENER = (
    "import socket,struct\n"
    "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('',5353))\n"
    "s.setsockopt(socket.IPPROTO_IP,socket.IP_ADD_MEMBERSHIP,"
    "struct.pack('4s4s',socket.inet_aton('224.0.0.251'),socket.inet_aton('10.99.0.3')))\n"
    "s.settimeout(5)\n"
    "print(s.recv(100).decode(),flush=True)\n")


def test_icc_false_blocks_endpoints_but_not_gateway(topo: Topo) -> None:
    a, b = topo.eps["a"], topo.eps["b"]
    closed = replace(topo.net, icc=False)
    with inside(topo.br_ns):
        topo.dp.attach_network(closed)
    try:
        before = counters(topo)
        assert not ping(topo.ep_ns["a"], "10.99.0.3", 2)
        assert not ping(topo.ep_ns["a"], "fd99::3", 2)
        d = delta(before, counters(topo))
        assert d[a.id]["tx_drop_policy"] >= 4, d
        assert ping(topo.ep_ns["a"], GW4, 2) and ping(topo.ep_ns["a"], GW6, 2)
        assert ping(topo.ep_ns["b"], GW4, 2)
    finally:
        with inside(topo.br_ns):
            topo.dp.attach_network(topo.net)
    assert ping(topo.ep_ns["a"], "10.99.0.3", 1)
    assert b.id in counters(topo)



_AF_PACKET_SENDER = """
import socket, struct, sys
dst, src, sip, dip, size = sys.argv[1:6]
mac = lambda m: bytes(int(x, 16) for x in m.split(":"))
payload = b"x" * int(size)
udp = struct.pack("!HHHH", 1234, 5678, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(sip), socket.inet_aton(dip)) + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(mac(dst) + mac(src) + b"\\x08\\x00" + ip)
"""


def test_nonlinear_frames_from_af_packet(topo: Topo) -> None:
    """AF_PACKET frames of a page or more reach tc with only the Ethernet header
    in the linear part: the programs must pull before parsing, or the fast path
    and source validation would silently not apply."""
    a, b = topo.eps["a"], topo.eps["b"]
    ns = topo.ep_ns["a"]
    sh(ns, "ip", "link", "set", "eth0", "mtu", "9000")
    with inside(topo.br_ns):
        subprocess.run(["ip", "link", "set", "h-a", "mtu", "9000"], check=True)
    try:
        for sip, expect in ((str(a.ipv4), "tx_fast_packets"),
                            ("10.99.0.77", "tx_drop_spoofed_source")):
            before = counters(topo)
            sent = sh(ns, "python3", "-c", _AF_PACKET_SENDER, b.mac, a.mac, sip, str(b.ipv4), "6000",
                      check=False)
            # A drop inside netkit's transmit is the sender's error (ENOBUFS from send());
            # a veth's tc ingress drops after the send has succeeded.
            dropped = expect == "tx_drop_spoofed_source"
            assert (sent.returncode != 0) == (dropped and topo.netkit), sent.stderr
            if sent.returncode != 0:
                assert "No buffer space available" in sent.stderr, sent.stderr
            d = delta(before, counters(topo))
            assert d[a.id].get(expect) == 1, d
    finally:
        sh(ns, "ip", "link", "set", "eth0", "mtu", "1500")
        with inside(topo.br_ns):
            subprocess.run(["ip", "link", "set", "h-a", "mtu", "1500"], check=True)
