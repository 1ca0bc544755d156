"""Per-packet cost of each bpfnet program, from BPF_PROG_TEST_RUN with repeat.

Boundary: ``measure()`` makes a fresh namespace and runs this module as a
worker (``python -m bench.progrun NS MODE REPEAT PINDIR``), which enters it
with setns (``ip netns exec`` would remount /sys and hide bpffs). The worker
builds one bridge and two veth pairs, starts bpfnet's ``EbpfDatapath`` with
pins in PINDIR under /sys/fs/bpf (removed by the parent too),
runs every (program, packet kind) ``REPEAT`` times in the kernel through
``bpfnet.datapath.bpfsys.prog_test_run`` (the datapath's own helper), prints
JSON, and removes its programs, filters and pins. The kernel reports the mean
duration per run in ns (its loop overhead included; nothing is sent).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from . import env

log = logging.getLogger(__name__)

TC_ACT_NAMES = {0: "ok", 2: "shot", 7: "redirect"}


@dataclass(frozen=True)
class Case:
    program: str
    kind: str
    frame: bytes
    ifindex: int
    ingress_ifindex: int = 0
    cb: tuple[int, ...] = ()


# -- packet builders (checksums left zero: the programs never read them) --------
def _mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def _eth(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype) + payload


def _udp(payload_len: int) -> bytes:
    return struct.pack("!HHHH", 4000, 9, 8 + payload_len, 0) + b"A" * payload_len


def _ipv4(src: str, dst: str, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                       IPv4Address(src).packed, IPv4Address(dst).packed) + payload


def _ipv6(src: str, dst: str, payload: bytes) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), 17, 64) + IPv6Address(src).packed
            + IPv6Address(dst).packed + payload)


def _arp_request(sha: str, spa: str, tpa: str) -> bytes:
    return (struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + _mac(sha) + IPv4Address(spa).packed
            + b"\x00" * 6 + IPv4Address(tpa).packed + b"\x00" * 18)


def sk_buff_ctx(ifindex: int, ingress_ifindex: int = 0, cb: tuple[int, ...] = ()) -> bytes:
    """struct __sk_buff for BPF_PROG_TEST_RUN: ingress_ifindex, ifindex and cb only."""
    ctx = bytearray(192)
    struct.pack_into("=I", ctx, 36, ingress_ifindex)
    struct.pack_into("=I", ctx, 40, ifindex)
    for i, v in enumerate(cb[:5]):
        struct.pack_into("=I", ctx, 48 + 4 * i, v)
    return bytes(ctx)


# -- worker (inside the namespace) --------------------------------------------
def _worker(ns: str, mode: str, repeat: int, pins: str) -> dict[str, Any]:
    from bpfnet.datapath import bpfsys
    from bpfnet.datapath.ebpf import EbpfDatapath
    from bpfnet.model import EndpointSpec, NetworkSpec
    from pyroute2 import IPRoute
    from pyroute2 import netns as pnetns

    # setns only (not ``ip netns exec``, which remounts /sys and hides bpffs);
    # single-threaded here, so the whole process moves.
    pnetns.setns(ns, flags=0)
    with IPRoute() as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        br = ipr.link_lookup(ifname="br0")[0]
        brmac = ipr.get_links(br)[0].get_attr("IFLA_ADDRESS")
        net = NetworkSpec(name="bench", id=1, bridge="br0", bridge_ifindex=br, bridge_mac=brmac,
                          gateway4=IPv4Address("10.77.0.1"),
                          gateway6=(IPv6Address("fd00:77::1"), IPv6Address("fe80::1")))
        eps = []
        for host in (2, 3):
            ipr.link("add", ifname=f"h{host}", kind="veth", peer=f"p{host}")
            idx = ipr.link_lookup(ifname=f"h{host}")[0]
            ipr.link("set", index=idx, master=br, state="up")
            eps.append(EndpointSpec(name=f"e{host}", id=host, network="bench", network_id=1,
                                    host_ifname=f"h{host}", host_ifindex=idx,
                                    mac=f"02:42:0a:4d:00:0{host}", ipv4=IPv4Address(f"10.77.0.{host}"),
                                    ipv6=(IPv6Address(f"fd00:77::{host}"),)))
    a, b = eps
    dp = EbpfDatapath(mode=mode, pin_dir=pins, max_endpoints=4096)
    try:
        dp.start([net], eps)
        udp4 = _eth(b.mac, a.mac, 0x0800, _ipv4(str(a.ipv4), str(b.ipv4), _udp(22)))
        udp6 = _eth(b.mac, a.mac, 0x86DD, _ipv6(str(a.ipv6[0]), str(b.ipv6[0]), _udp(2)))
        to_gw = _eth(brmac, a.mac, 0x0800, _ipv4(str(a.ipv4), "10.77.0.1", _udp(22)))
        off_net = _eth(brmac, a.mac, 0x0800, _ipv4(str(a.ipv4), "192.0.2.1", _udp(22)))
        unknown = _eth(b.mac, a.mac, 0x0800, _ipv4(str(a.ipv4), "10.77.0.200", _udp(22)))
        arp = _eth("ff:ff:ff:ff:ff:ff", a.mac, 0x0806, _arp_request(a.mac, str(a.ipv4), str(b.ipv4)))
        cases = [
            Case("ep_ingress", "udp4 to endpoint (fast path)", udp4, a.host_ifindex),
            Case("ep_ingress", "udp6 to endpoint (fast path)", udp6, a.host_ifindex),
            Case("ep_ingress", "udp4 to gateway (kernel)", to_gw, a.host_ifindex),
            Case("ep_ingress", "udp4 off-network (kernel)", off_net, a.host_ifindex),
            Case("ep_ingress", "udp4 unknown address (kernel)", unknown, a.host_ifindex),
            Case("ep_ingress", "arp broadcast (kernel)", arp, a.host_ifindex),
            Case("ep_egress", "udp4 via bridge (kernel path)", udp4, b.host_ifindex, a.host_ifindex),
            Case("ep_egress", "udp4 from the host", udp4, b.host_ifindex, 0),
            Case("bridge_egress", "udp4 to endpoint (fast path)", udp4, br, br),
            Case("bridge_egress", "arp broadcast (kernel)", arp, br, br),
        ]
        results = []
        for c in cases:
            fd = dp.program_fd(c.program)
            ctx = sk_buff_ctx(c.ifindex, c.ingress_ifindex, c.cb)
            bpfsys.prog_test_run(fd, c.frame, ctx, repeat=1000)  # warm caches and JIT'd code
            runs = [bpfsys.prog_test_run(fd, c.frame, ctx, repeat=repeat) for _ in range(3)]
            durations = sorted(r.duration_ns for r in runs)
            results.append({"program": c.program, "kind": c.kind, "frame_bytes": len(c.frame),
                            "verdict": TC_ACT_NAMES.get(runs[0].retval, str(runs[0].retval)),
                            "ns_per_packet": durations[1], "ns_min": durations[0],
                            "ns_max": durations[2]})
        return {"mode": mode, "repeat": repeat, "cases": results}
    finally:
        dp.cleanup()
        remove_pins(pins)


def remove_pins(pins: str) -> None:
    """Unlink a pin directory (bpffs: files first, then the directory)."""
    if os.path.isdir(pins):
        for f in os.listdir(pins):
            os.unlink(os.path.join(pins, f))
        shutil.rmtree(pins, ignore_errors=True)


def measure(modes: list[str], repeat: int) -> dict[str, Any]:
    """ns/packet per (mode, program, packet kind), each worker in a fresh namespace."""
    out: dict[str, Any] = {"repeat": repeat, "modes": {}}
    for mode in modes:
        ns = env.add_netns(env.ns_name(f"pr-{mode}"))
        pins = f"/sys/fs/bpf/{env.RUN_PREFIX}-progrun-{mode}"
        try:
            r = env.run([env.PYTHON, "-m", "bench.progrun", ns, mode, str(repeat), pins], timeout=300)
        finally:
            env.remove_namespaces([ns])
            remove_pins(pins)
        out["modes"][mode] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def kernel_null_cost(repeat: int) -> float:
    """ns per run of a program that only returns 0: the test-run loop's own overhead."""
    from bpfnet.datapath import bpfsys

    insns = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    fd = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, insns, "bench_null")
    try:
        frame = b"\x00" * 64
        runs = sorted(bpfsys.prog_test_run(fd, frame, repeat=repeat).duration_ns for _ in range(3))
        return float(runs[1])
    finally:
        os.close(fd)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    result = _worker(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
    result["null_program_ns"] = kernel_null_cost(int(sys.argv[3]))
    print(json.dumps(result))
