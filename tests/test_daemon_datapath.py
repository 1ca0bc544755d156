"""The eBPF datapath through the real daemon: endpoints in their own namespaces,
traffic between them, and what ``bpfnet stats`` / ``bpfnet info`` / tc / the
pinned maps say about it. Mode ``auto`` (redirect-peer on this kernel) unless a
test says otherwise.

Every process a test starts (ping, Python helpers) is killed in ``finally``;
namespaces, filters and pins go with the ``daemons`` fixtures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Any

import pytest
from bpfnet.datapath.maps import PinnedMaps
from helpers import SLOWDOWN, DaemonFactory, DaemonProcess, bpfnet_cmd, ping, run

pytestmark = pytest.mark.kernel

V6 = ("--ipv6", "--fixed-cidr-v6", "fd00:b1::/64")
PING_N = 5


# helpers ---------------------------------------------------------------------
def netkit_here() -> bool:
    """Whether daemons here make netkit endpoints (auto: the kernel has netkit, e.g. 6.12 in
    make vm-test), unless the suite runs with BPFNET_TEST_ENDPOINT_DEVICE=veth."""
    from bpfnet.datapath.netkit import netkit_available

    return os.environ.get("BPFNET_TEST_ENDPOINT_DEVICE", "auto") != "veth" and netkit_available()


def tcx_here() -> bool:
    from bpfnet.datapath.probe import tcx_available

    return tcx_available()


def auto_mode() -> str:
    """The mode --datapath auto picks here: netkit endpoints need redirect."""
    return "redirect" if netkit_here() else "redirect-peer"


def ingress_hook(info: dict[str, Any]) -> str:
    """Where ep_ingress sits on the host end, from a daemon's `info`: tc ingress of a veth,
    netkit's peer hook. The daemon's devices, not the kernel's default: a test may ask for
    veth on a netkit kernel."""
    return "netkit-peer" if info["datapath"]["endpoint_device"] == "netkit" else "ingress"


def ip4(ep: dict[str, Any]) -> str:
    return str(ep["ipv4"]).split("/")[0]


def ip6(ep: dict[str, Any]) -> str:
    return str(ep["ipv6"][0]).split("/")[0]


def counters(d: DaemonProcess, via_cli: bool = True) -> dict[str, dict[str, Any]]:
    """endpoint name -> counters, from ``bpfnet stats --json`` (or GET /v1/stats)."""
    doc = d.cli_json("stats") if via_cli else d.client.get("/v1/stats")
    return {e["name"]: e["counters"] for e in doc["endpoints"]}


def diff(before: dict[str, Any], after: dict[str, Any], field: str) -> int:
    return int(after[field]) - int(before[field])


def drops(c: dict[str, Any], direction: str, reason: str) -> int:
    return int(c["drops"][direction].get(reason, 0))


def ping_n(ns: str, addr: str, n: int = PING_N) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, "ping", "-c", str(n), "-i", "0.05", "-W", "1", "-q", addr,
               check=False)


def py_in(ns: str, script: str, *args: str) -> list[str]:
    """argv running a Python script inside namespace NS."""
    return ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args]


def tc_filters(ns: str, dev: str, direction: str) -> subprocess.CompletedProcess[str]:
    """What runs on dev's hook in NS, whichever way it is attached: `tc filter show`
    output plus a line "tcx bpf <program name> id <id>" per program on the tcx hook (for
    ingress, also on a netkit pair's peer hook: what the endpoint sends)."""
    from bpfnet import netns
    from bpfnet.datapath import bpfsys

    r = run("tc", "-n", ns, "filter", "show", "dev", dev, direction, check=False)

    def tcx_lines() -> list[str]:
        try:
            ifindex = socket.if_nametoindex(dev)
        except OSError:
            return []  # no such device here
        hooks = [bpfsys.BPF_TCX_INGRESS, bpfsys.BPF_NETKIT_PEER] if direction == "ingress" \
            else [bpfsys.BPF_TCX_EGRESS]
        found = []
        for hook in hooks:
            try:
                found += bpfsys.tcx_query(ifindex, hook)
            except OSError:
                pass  # a veth has no netkit hook
        out = []
        for prog_id, _link in found:
            fd = bpfsys.prog_fd_by_id(prog_id)
            try:
                out.append(f"tcx bpf {bpfsys.prog_info(fd).name} id {prog_id}\n")
            finally:
                os.close(fd)
        return out

    r.stdout += "".join(netns.run_in(ns, tcx_lines))
    return r


def start_and_wait_ready(argv: list[str], timeout: float = 10) -> subprocess.Popen[str]:
    """Popen ARGV and wait for its first stdout line, "ready"."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline().strip()
    if line != "ready":
        p.kill()
        _, err = p.communicate(timeout=timeout)
        raise AssertionError(f"helper did not start: {line!r} {err}")
    return p


def stop(p: subprocess.Popen[str] | None) -> None:
    if p is not None and p.poll() is None:
        p.kill()
        p.wait(timeout=5)


@pytest.fixture(scope="module")
def dual(module_daemons: DaemonFactory) -> Iterator[tuple[DaemonProcess, dict[str, Any], dict[str, Any]]]:
    """One dual-stack daemon (datapath auto) with endpoints a and b, shared by the module."""
    d = module_daemons.start(*V6, datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    yield d, a, b


# 1. fast path ------------------------------------------------------------------
def check_fast_path(d: DaemonProcess, a: dict[str, Any], b: dict[str, Any], mode: str) -> None:
    info = d.cli_json("info")
    assert info["datapath"]["mode"] == mode
    attach = {p["attach"]: p["name"] for p in info["datapath"]["programs"]}
    hook = ingress_hook(info)
    for ep in (a, b):
        assert attach.get(f"{ep['host_ifname']}/{hook}") == "ep_ingress", attach
        assert attach.get(f"{ep['host_ifname']}/egress") == "ep_egress", attach
    assert any(n == "bridge_egress" and at.endswith("/egress") for at, n in attach.items()), attach

    for dst, via_cli in ((ip4(b), True), (ip6(b), False)):
        before = counters(d, via_cli)
        r = ping_n(a["netns"], dst)
        assert r.returncode == 0, r.stdout + r.stderr
        after = counters(d, via_cli)
        ca0, ca1 = before[a["name"]], after[a["name"]]
        cb0, cb1 = before[b["name"]], after[b["name"]]
        # echo requests a -> b and replies b -> a, all redirected
        assert diff(ca0, ca1, "tx_fast_packets") >= PING_N, (dst, ca0, ca1)
        assert diff(cb0, cb1, "rx_fast_packets") >= PING_N, (dst, cb0, cb1)
        assert diff(cb0, cb1, "tx_fast_packets") >= PING_N, (dst, cb0, cb1)
        assert diff(ca0, ca1, "rx_fast_packets") >= PING_N, (dst, ca0, ca1)
        assert diff(ca0, ca1, "tx_fast_bytes") >= PING_N * 84

    # to the gateway: through the kernel (bridge), not redirected
    gw4 = str(a["gateway4"])
    for gw in (gw4, "fd00:b1::1"):
        before = counters(d)[a["name"]]
        r = ping_n(a["netns"], gw)
        assert r.returncode == 0, r.stdout + r.stderr
        after = counters(d)[a["name"]]
        assert diff(before, after, "tx_kernel_packets") >= PING_N, (gw, before, after)
        assert diff(before, after, "tx_fast_packets") == 0, (gw, before, after)


def test_fast_path_ipv4_ipv6_auto(dual: tuple[DaemonProcess, dict[str, Any], dict[str, Any]]) -> None:
    d, a, b = dual
    check_fast_path(d, a, b, auto_mode())


def test_fast_path_mode_redirect(daemons: DaemonFactory) -> None:
    d = daemons.start(*V6, datapath="redirect")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    check_fast_path(d, a, b, "redirect")


# 2. ARP / ND and mDNS -----------------------------------------------------------
def test_arp_and_nd_resolve_fresh_neighbours(dual: tuple[DaemonProcess, dict[str, Any], dict[str, Any]]) -> None:
    _, a, b = dual
    for ns in (a["netns"], b["netns"]):
        run("ip", "-n", ns, "neigh", "flush", "all")
    assert not [n for n in json.loads(run("ip", "-n", a["netns"], "-j", "neigh", "show", "dev", "eth0").stdout)
                if n["dst"] in (ip4(b), ip6(b)) and n.get("lladdr")], "flush did not flush"
    assert ping(a["netns"], ip4(b)), "IPv4 after neigh flush"
    assert ping(a["netns"], ip6(b)), "IPv6 after neigh flush"
    neigh = {n["dst"]: n.get("lladdr") for n in
             json.loads(run("ip", "-n", a["netns"], "-j", "neigh", "show", "dev", "eth0").stdout)}
    assert neigh.get(ip4(b)) == b["mac"], neigh  # resolved by ARP
    assert neigh.get(ip6(b)) == b["mac"], neigh  # resolved by ND


MDNS_COMMON = r"""
import json, select, socket, struct, sys

GROUP4, GROUP6, PORT = "224.0.0.251", "ff02::fb", 5353
IFINDEX = socket.if_nametoindex("eth0")


def name(n):
    return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"


def read_name(buf, off):
    labels = []
    while buf[off]:
        ln = buf[off]
        labels.append(buf[off + 1:off + 1 + ln].decode())
        off += 1 + ln
    return ".".join(labels), off + 1


def sockets():
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s4.bind(("", PORT))
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                  socket.inet_aton(GROUP4) + socket.inet_aton("0.0.0.0"))
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s4.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.bind(("::", PORT))
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                  socket.inet_pton(socket.AF_INET6, GROUP6) + struct.pack("@I", IFINDEX))
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, IFINDEX)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    return s4, s6
"""

MDNS_RESPONDER = MDNS_COMMON + r"""
# argv: hostname ipv4 ipv6 -- answers A over IPv4 and AAAA over IPv6, multicast, like mDNS
host, a4, a6 = sys.argv[1:4]
s4, s6 = sockets()
print("ready", flush=True)
while True:
    for s in select.select([s4, s6], [], [])[0]:
        buf, src = s.recvfrom(2048)
        _id, flags, qd = struct.unpack("!HHH", buf[:6])
        if flags & 0x8000 or qd != 1:
            continue
        q, off = read_name(buf, 12)
        qtype = struct.unpack("!H", buf[off:off + 2])[0]
        if q != host:
            continue
        if qtype == 1:
            rdata = socket.inet_aton(a4)
        elif qtype == 28:
            rdata = socket.inet_pton(socket.AF_INET6, a6)
        else:
            continue
        ans = (struct.pack("!HHHHHH", 0, 0x8400, 0, 1, 0, 0) + name(host)
               + struct.pack("!HHIH", qtype, 0x8001, 120, len(rdata)) + rdata)
        if s is s4:
            s4.sendto(ans, (GROUP4, PORT))
        else:
            s6.sendto(ans, (GROUP6, PORT, 0, IFINDEX))
"""

MDNS_QUERIER = MDNS_COMMON + r"""
# argv: hostname family(4|6) -- sends one multicast query, prints the answer's address
host, fam = sys.argv[1], sys.argv[2]
s4, s6 = sockets()
s = s4 if fam == "4" else s6
qtype = 1 if fam == "4" else 28
query = struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + name(host) + struct.pack("!HH", qtype, 1)
dst = (GROUP4, PORT) if fam == "4" else (GROUP6, PORT, 0, IFINDEX)
for attempt in range(6):
    s.sendto(query, dst)
    s.settimeout(0.5)
    try:
        while True:
            buf, src = s.recvfrom(2048)
            flags, qd, an = struct.unpack("!HHH", buf[2:8])
            if not flags & 0x8000 or an < 1:
                continue
            off = 12
            for _ in range(qd):
                off = read_name(buf, off)[1] + 4
            rname, off = read_name(buf, off)
            rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", buf[off:off + 10])
            rdata = buf[off + 10:off + 10 + rdlen]
            addr = socket.inet_ntop(socket.AF_INET if rtype == 1 else socket.AF_INET6, rdata)
            print(json.dumps({"name": rname, "type": rtype, "addr": addr, "from": src[0]}))
            sys.exit(0)
    except TimeoutError:
        continue
print(json.dumps(None))
sys.exit(1)
"""


def test_mdns_query_and_answer_between_endpoints(
        dual: tuple[DaemonProcess, dict[str, Any], dict[str, Any]]) -> None:
    _, a, b = dual
    responder = None
    try:
        responder = start_and_wait_ready(py_in(b["netns"], MDNS_RESPONDER, "b.local", ip4(b), ip6(b)))
        for fam, rtype, want in (("4", 1, ip4(b)), ("6", 28, ip6(b))):
            r = subprocess.run(py_in(a["netns"], MDNS_QUERIER, "b.local", fam), capture_output=True,
                               text=True, timeout=15, check=False)
            assert r.returncode == 0, f"no mDNS answer over IPv{fam}: {r.stdout} {r.stderr}"
            ans = json.loads(r.stdout)
            assert ans["name"] == "b.local" and ans["type"] == rtype and ans["addr"] == want, ans
            if fam == "4":
                assert ans["from"] == ip4(b), ans
            else:
                assert ans["from"].split("%")[0] == str(b["link_local"]).split("/")[0], ans
    finally:
        stop(responder)


# 3. source validation -------------------------------------------------------------
UDP_SINK = r"""
import json, socket, sys
fam = socket.AF_INET if sys.argv[1] == "4" else socket.AF_INET6
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("0.0.0.0" if sys.argv[1] == "4" else "::", int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))  # idle limit; the caller scales it for emulated kernels
print("ready", flush=True)
got = []
while True:
    try:
        data, src = s.recvfrom(2048)
    except TimeoutError:
        break
    got.append([data.decode(), src[0]])
    if data == b"legit":
        s.settimeout(0.5)  # anything sent before the legit datagram has arrived by now
print(json.dumps(got), flush=True)
"""

RAW_SENDER = r"""
# argv: family src dst src_mac dst_mac port payload -- one UDP datagram through AF_PACKET
import socket, struct, sys
fam, src, dst, smac, dmac, port, payload = sys.argv[1:8]
port, payload = int(port), payload.encode()


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


udp_len = 8 + len(payload)
if fam == "4":
    s_b, d_b = socket.inet_aton(src), socket.inet_aton(dst)
    udp = struct.pack("!HHHH", 40000, port, udp_len, 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, s_b, d_b)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    l3, ethertype = hdr + udp, 0x0800
else:
    s_b, d_b = socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)
    pseudo = s_b + d_b + struct.pack("!IxxxB", udp_len, 17)
    udp0 = struct.pack("!HHHH", 40000, port, udp_len, 0) + payload
    c = csum(pseudo + udp0) or 0xFFFF
    udp = struct.pack("!HHHH", 40000, port, udp_len, c) + payload
    l3, ethertype = struct.pack("!IHBB16s16s", 6 << 28, udp_len, 17, 64, s_b, d_b) + udp, 0x86DD
frame = bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + \
    struct.pack("!H", ethertype) + l3
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
s.send(frame)
"""


@pytest.mark.parametrize("fam", ["4", "6"])
def test_spoofed_source_dropped_and_counted(
        dual: tuple[DaemonProcess, dict[str, Any], dict[str, Any]], fam: str) -> None:
    d, a, b = dual
    port = "47000" if fam == "4" else "47001"
    if fam == "4":
        real, spoofed, dst = ip4(a), str(ip_network(a["ipv4"], strict=False)[-3]), ip4(b)
    else:
        real, spoofed, dst = ip6(a), "fd00:b1::dead:beef", ip6(b)
    # the spoofed address lies in the network's subnet, so the kernel would deliver it
    assert ping(a["netns"], dst)  # neighbours resolved, b's stack up
    before = counters(d)
    sink = None
    try:
        # 2 s without a datagram ends the sink; under emulation (TCG) starting each Python
        # sender takes longer than that, so the wait scales with BPFNET_TEST_SLOWDOWN.
        sink = start_and_wait_ready(py_in(b["netns"], UDP_SINK, fam, port, str(2.0 * SLOWDOWN)))
        for src, payload in ((spoofed, "spoofed"), (spoofed, "spoofed"), (real, "legit")):
            r = run(*py_in(a["netns"], RAW_SENDER, fam, src, dst, a["mac"], b["mac"], port, payload),
                    check=False)
            # netkit drops inside the sender's transmit, so send() fails with ENOBUFS there
            # (README "Endpoint device"); after a veth the drop is silent.
            if payload == "spoofed" and netkit_here():
                assert "No buffer space available" in r.stderr, r.stderr
            else:
                assert r.returncode == 0, r.stderr
        out, err = sink.communicate(timeout=10 * SLOWDOWN)
    finally:
        stop(sink)
    got = json.loads(out.strip().splitlines()[-1])
    assert ["legit", real] in got, f"control datagram with the real source did not arrive: {got} {err}"
    assert not [g for g in got if g[0] == "spoofed"], f"spoofed datagram delivered: {got}"
    after = counters(d)
    ca0, ca1 = before[a["name"]], after[a["name"]]
    assert drops(ca1, "tx", "spoofed_source") - drops(ca0, "tx", "spoofed_source") >= 2, (ca0, ca1)
    assert drops(after[b["name"]], "rx", "spoofed_source") == drops(before[b["name"]], "rx", "spoofed_source")


# 4. --no-icc --------------------------------------------------------------------------
def test_no_icc_blocks_endpoints_not_gateway(daemons: DaemonFactory) -> None:
    d = daemons.start(*V6, "--no-icc", datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    before = counters(d)

    def blocked(src: dict[str, Any], dst: str, n: int) -> None:
        r = run("ip", "netns", "exec", src["netns"], "ping", "-c", str(n), "-i", "0.1", "-W", "0.5", "-q",
                dst, check=False)
        assert r.returncode != 0 and f"{n} packets transmitted, 0 received" in r.stdout, \
            f"icc=false but {dst} answered: {r.stdout}"

    blocked(a, ip4(b), 3)
    blocked(a, ip6(b), 3)
    blocked(b, ip4(a), 2)
    # icc=false blocks traffic, not address resolution: b's unicast neighbour
    # advertisement reached a, so the echo requests really left a (counted below).
    neigh = run("ip", "-n", a["netns"], "-6", "neigh", "show", ip6(b)).stdout
    assert b["mac"] in neigh, f"IPv6 neighbour discovery blocked by icc=false: {neigh!r}"
    after = counters(d)
    ca0, ca1, cb0, cb1 = before[a["name"]], after[a["name"]], before[b["name"]], after[b["name"]]
    assert drops(ca1, "tx", "policy") - drops(ca0, "tx", "policy") >= 6, (ca0, ca1)
    assert drops(cb1, "tx", "policy") - drops(cb0, "tx", "policy") >= 2, (cb0, cb1)
    assert diff(cb0, cb1, "rx_fast_packets") == 0 and diff(ca0, ca1, "tx_fast_packets") == 0
    for ep in (a, b):
        for gw in (str(ep["gateway4"]), "fd00:b1::1", "fe80::1%eth0"):
            assert ping(ep["netns"], gw, count=2), f"{ep['name']} -> gateway {gw} failed with --no-icc"


def start_pinger(ns: str, dst: str) -> subprocess.Popen[str]:
    """ping every 10 ms until stop_pinger (SIGINT makes it print its summary): how long the
    restarts under it take (each compiles the datapath) depends on the machine's load."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-i", "0.01", "-W", "1", "-w", "600", "-q",
                             dst], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_pinger(pinger: subprocess.Popen[str]) -> tuple[int, int, str]:
    """(sent, received, output) of a start_pinger ping, stopped now."""
    pinger.send_signal(signal.SIGINT)
    out, err = pinger.communicate(timeout=30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out + err
    return int(m.group(1)), int(m.group(2)), out


# 5. restart / kill -9 under traffic -------------------------------------------------------
def test_restart_and_kill_under_traffic_lose_nothing(daemons: DaemonFactory) -> None:
    d = daemons.start(*V6, datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    assert ping(a["netns"], ip4(b))
    # counted before the first request: under emulation (TCG) a counters() call takes
    # seconds, so hundreds of requests would pass between the pinger's start and c0
    c_start = counters(d)[a["name"]]
    pinger = start_pinger(a["netns"], ip4(b))
    try:
        time.sleep(0.8)
        c0 = counters(d)[a["name"]]
        d.restart()
        assert pinger.poll() is None, "ping ended before the restart finished"
        c1 = counters(d)[a["name"]]
        assert c1["tx_fast_packets"] > c0["tx_fast_packets"], (c0, c1)  # carried on, not reset
        d.kill()
        time.sleep(0.5)  # traffic with no daemon at all
        d.start()
        assert pinger.poll() is None, "ping ended before the kill -9 / start finished"
        c2 = counters(d)[a["name"]]
        assert c2["tx_fast_packets"] > c1["tx_fast_packets"], (c1, c2)
        time.sleep(0.5)
        sent, received, out = stop_pinger(pinger)
    finally:
        stop(pinger)  # type: ignore[arg-type]
    # ping stops on SIGINT, possibly with its last request still in flight
    assert sent >= 100 and received >= sent - 1, f"packets lost across restart: {out}"
    c3 = counters(d)[a["name"]]
    # every answered request should have crossed the fast path; 20 is a margin for any the
    # programs hand to the kernel (tx_kernel_packets), not a measured figure
    assert c3["tx_fast_packets"] - c_start["tx_fast_packets"] >= received - 20, (c_start, c3)
    assert counters(d)[b["name"]]["rx_fast_packets"] >= received


@pytest.mark.skipif("not tcx_here()", reason="this kernel has no tcx (Linux 6.6+)")
def test_upgrade_from_tc_filters_to_tcx_under_traffic(daemons: DaemonFactory) -> None:
    """A daemon forced to clsact + cls_bpf (as on a kernel without tcx), restarted
    with auto: the programs move to tcx links without losing a packet. veth endpoints:
    a netkit endpoint's ep_ingress is a netkit link whatever the attach mode."""
    d = daemons.start(*V6, "--datapath-attach", "tc", "--endpoint-device", "veth", datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    assert d.cli_json("info")["datapath"]["attach"] == "tc"
    assert "bpfnet:ep_ingress" in tc_filters(d.netns, a["host_ifname"], "ingress").stdout
    assert "tcx" not in tc_filters(d.netns, a["host_ifname"], "ingress").stdout
    check_fast_path(d, a, b, "redirect-peer")  # veth on a tcx kernel
    pinger = start_pinger(a["netns"], ip4(b))
    try:
        time.sleep(0.5)
        d.args = [x for x in d.args if x not in ("--datapath-attach", "tc")] + ["--datapath-attach", "auto"]
        d.restart()
        assert pinger.poll() is None, "ping ended before the restart finished"
        time.sleep(0.5)
        sent, received, out = stop_pinger(pinger)
    finally:
        stop(pinger)  # type: ignore[arg-type]
    assert sent >= 50 and received >= sent - 1, f"packets lost across the upgrade: {out}"
    info = d.cli_json("info")["datapath"]
    assert info["attach"] == "tcx"
    for ep in (a, b):
        hook = tc_filters(d.netns, ep["host_ifname"], "ingress").stdout
        assert "tcx bpf ep_ingress" in hook and "bpfnet:" not in hook, hook
        # ep_egress stays a cls_bpf filter in tcx mode (datapath.ebpf.TC_IN_TCX_MODE)
        hook = tc_filters(d.netns, ep["host_ifname"], "egress").stdout
        assert "bpfnet:ep_egress" in hook and "tcx bpf" not in hook, hook
    bridge = d.network()["bridge"]
    assert "clsact" not in run("tc", "-n", d.netns, "qdisc", "show", "dev", bridge, check=False).stdout
    check_fast_path(d, a, b, "redirect-peer")  # veth on a tcx kernel


# The pins of the layout before endpoint ids (bpf/maps.h of that version) that this one no
# longer has or has with another type: endpoint_by_ipv4/ipv6 held ifindexes where
# endpoint_id_by_ipv4/ipv6 now hold ids, network_by_id was a hash of the same key and value
# size. Values are opaque byte structs: only shapes matter.
OLD_LAYOUT = """
struct net_v {{ __u8 b[{net}]; }};
struct k4 {{ __u8 b[{k4}]; }};
struct k6 {{ __u8 b[{k6}]; }};
BPF_TABLE_PINNED("hash", struct k4, __u32, endpoint_by_ipv4, 4096, "{pins}/endpoint_by_ipv4");
BPF_TABLE_PINNED("hash", struct k6, __u32, endpoint_by_ipv6, 16384, "{pins}/endpoint_by_ipv6");
BPF_TABLE_PINNED("hash", __u32, struct net_v, network_by_id, 1024, "{pins}/network_by_id");
int unused(void *ctx) {{ return 0; }}
"""


def pin_old_layout(pin_dir: Path, a: dict[str, Any], b: dict[str, Any]) -> None:
    """Replace network_by_id by the old hash and pin the old address maps, with b's IPv4
    address pointing at a's ifindex (read as an endpoint id, that would misroute)."""
    from bcc import BPF
    from bpfnet.datapath import abi, bpfsys
    from bpfnet.datapath import maps as m

    (pin_dir / "network_by_id").unlink()
    text = OLD_LAYOUT.format(net=abi.NETWORK.size, k4=abi.EP_IPV4_KEY.size, k6=abi.EP_IPV6_KEY.size,
                             pins=pin_dir)
    BPF(text=text.encode()).cleanup()  # the maps stay pinned
    fd = bpfsys.obj_get(str(pin_dir / "endpoint_by_ipv4"))
    try:
        bpfsys.map_update(fd, m.ipv4_key(1, IPv4Address(ip4(b))), m.u32(a["host_ifindex"]))
    finally:
        os.close(fd)


def test_restart_over_pins_of_an_older_layout(daemons: DaemonFactory) -> None:
    """An upgraded daemon removes pins that are no longer in the layout (renamed maps),
    replaces maps of another type, re-adds every entry and keeps the counters."""
    from bpfnet.datapath.maps import map_specs

    d = daemons.start(*V6, datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    info = d.cli_json("info")["datapath"]
    pin_dir = Path(info["pin_dir"])
    assert ping(a["netns"], ip4(b))
    c0 = counters(d)[a["name"]]
    d.stop()
    pin_old_layout(pin_dir, a, b)

    d.start()
    log = d.log_path.read_text(errors="replace").rsplit("===== start", 1)[-1]
    for name in ("endpoint_by_ipv4", "endpoint_by_ipv6"):
        assert f"{name} is not part of this version's map layout" in log, log
    assert "network_by_id has (type, key, value, entries)" in log, log
    layout = sorted([s.name for s in map_specs(int(info["max_endpoints"]))]
                    + (["links"] if info["attach"] == "tcx" else []))  # links/: the tcx link pins
    assert sorted(p.name for p in pin_dir.iterdir()) == layout
    c1 = counters(d)[a["name"]]
    assert c1["tx_fast_packets"] >= c0["tx_fast_packets"] > 0, (c0, c1)  # carried on
    check_fast_path(d, a, b, auto_mode())

    # --cleanup also removes pins it does not know
    d.stop()
    pin_old_layout(pin_dir, a, b)
    r = subprocess.run(bpfnet_cmd() + ["daemon", "--cleanup", "--netns", d.netns, "--state-dir",
                                       str(d.state_dir)], capture_output=True, text=True, timeout=60 * SLOWDOWN,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert not pin_dir.exists(), list(pin_dir.iterdir())


# 6. endpoint rm and --cleanup -------------------------------------------------------------
def test_endpoint_rm_and_cleanup_remove_filters_map_entries_pins(daemons: DaemonFactory) -> None:
    d = daemons.start(*V6, "--datapath-attach", "auto", datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    info = d.cli_json("info")["datapath"]
    pin_dir = Path(info["pin_dir"])
    assert pin_dir == Path("/sys/fs/bpf/bpfnet") / d.netns and pin_dir.is_dir()
    assert info["attach"] == ("tcx" if tcx_here() else "tc")  # tcx on this machine's kernel, tc on 6.1
    bridge = d.network()["bridge"]
    for ep in (a, b):
        want = "tcx bpf ep_ingress" if tcx_here() else "bpfnet:ep_ingress"
        assert want in tc_filters(d.netns, ep["host_ifname"], "ingress").stdout
        assert "bpfnet:ep_egress" in tc_filters(d.netns, ep["host_ifname"], "egress").stdout

    def map_state() -> tuple[set[int], set[bytes], set[bytes]]:
        maps = PinnedMaps(str(pin_dir), int(info["max_endpoints"]))
        try:
            return (set(maps.endpoint_ids()),
                    {k[-4:] for k, _ in maps.items("endpoint_id_by_ipv4")},
                    {k[-16:] for k, _ in maps.items("endpoint_id_by_ipv6")})
        finally:
            maps.close()

    def addrs(ep: dict[str, Any]) -> tuple[bytes, set[bytes]]:
        return (IPv4Address(ip4(ep)).packed,
                {IPv6Address(ip6(ep)).packed, IPv6Address(str(ep["link_local"]).split("/")[0]).packed})

    ifx, v4, v6 = map_state()
    a4, a6 = addrs(a)
    b4, b6 = addrs(b)
    assert {a["host_ifindex"], b["host_ifindex"]} <= ifx and {a4, b4} <= v4 and a6 | b6 <= v6

    d.cli("endpoint", "rm", a["name"], check=True)
    ifx, v4, v6 = map_state()
    assert a["host_ifindex"] not in ifx and a4 not in v4 and not a6 & v6, "a's map entries left"
    assert b["host_ifindex"] in ifx and b4 in v4 and b6 <= v6, "b's map entries went too"
    assert a["host_ifname"] not in d.links()
    assert a["name"] not in counters(d) and b["name"] in counters(d)
    info = d.cli_json("info")
    progs = {p["attach"] for p in info["datapath"]["programs"]}
    assert not any(p.startswith(a["host_ifname"] + "/") for p in progs), progs
    assert f"{b['host_ifname']}/{ingress_hook(info)}" in progs

    d.stop()
    assert "ep_ingress" in tc_filters(d.netns, b["host_ifname"], "ingress").stdout  # stop leaves them
    r = subprocess.run(bpfnet_cmd() + ["daemon", "--cleanup", "--netns", d.netns, "--state-dir",
                                       str(d.state_dir)], capture_output=True, text=True, timeout=60 * SLOWDOWN,
                       check=False)
    assert r.returncode == 0, r.stderr
    for dev, direction in ((b["host_ifname"], "ingress"), (b["host_ifname"], "egress"), (bridge, "egress"),
                           (bridge, "ingress")):
        f = tc_filters(d.netns, dev, direction)
        assert f.returncode == 0 and "bpf" not in f.stdout, (dev, direction, f.stdout)
    assert not pin_dir.exists(), list(pin_dir.iterdir())
    # nothing blackholed: the bridge still forwards b's traffic
    assert ping(b["netns"], str(b["gateway4"]))
