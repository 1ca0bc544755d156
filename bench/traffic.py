"""Traffic measurements between the two endpoints of a ``Pair``.

Boundary: starts the tools (trafgen, iperf3, sockperf) inside the pair's
namespaces, reads counters, returns numbers; never touches topology.

- ``packet_rate``: 64-byte UDP frames from trafgen (AF_PACKET, qdisc bypass,
  one process pinned to CPU 0, ``--no-sock-mem -Q`` so it changes no sysctl
  and no IRQ affinity) on the sender's eth0, addressed to the receiver's eth0
  MAC. Counted at the receiver's UDP layer: the namespace's Udp (or Udp6)
  InDatagrams + NoPorts + InErrors - InCsumErrors, read from
  ``/proc/PID/net/snmp{,6}`` of a sink process in the receiver's namespace
  (what ``nstat`` reads; the sink binds the port and never reads, so no
  ICMP errors are generated) at the start and end of a window that
  begins after a warm-up, started once CPU 0 is quiet (``env.wait_quiet``).
- ``tcp_throughput``: iperf3, client and server pinned to CPU 0.
- ``latency``: sockperf ping-pong (UDP, 64-byte messages, full round trip),
  client and server pinned to CPU 0 (on this KVM guest a cross-CPU wake-up
  costs tens of microseconds and would swamp the datapath).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from . import env
from .topology import Host, Pair

log = logging.getLogger(__name__)

FRAME_BYTES = 64  # Ethernet header to end of UDP payload (no FCS), both families
CPU = 0
_ports = itertools.count(20000)
_holders: dict[str, subprocess.Popen[bytes]] = {}


SINK_PORT = 9
# Binds UDP port 9 (v4 and v6) and never reads: datagrams reach the UDP layer and
# are counted there (InDatagrams, then RcvbufErrors once the small buffer is
# full) without the ICMP port-unreachable work a closed port would add.
_SINK = ("import socket, time\n"
         "s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s4.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
         f"s4.bind(('0.0.0.0', {SINK_PORT}))\n"
         "s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
         "s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
         "s6.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
         f"s6.bind(('::', {SINK_PORT}))\n"
         "while True: time.sleep(3600)\n")


def _holder_pid(ns: str) -> int:
    """pid of the UDP sink living in ns (started once per namespace)."""
    proc = _holders.get(ns)
    if proc is None or proc.poll() is not None:
        proc = env.spawn(["python3", "-c", _SINK], ns=ns)
        _holders[ns] = proc
        ours = os.readlink("/proc/self/ns/net")
        env.wait_until(lambda: _netns_of(proc.pid) not in ("", ours), 5, f"holder in {ns}")
    return proc.pid


def _netns_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def udp_delivered(ns: str, family: int) -> int:
    """Datagrams that reached the UDP layer of namespace ns (IPv4 or IPv6)."""
    pid = _holder_pid(ns)
    if family == 4:
        with open(f"/proc/{pid}/net/snmp", encoding="ascii") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        c = dict(zip(lines[0][1:], (int(v) for v in lines[1][1:])))
        return c["InDatagrams"] + c["NoPorts"] + c["InErrors"] - c.get("InCsumErrors", 0)
    with open(f"/proc/{pid}/net/snmp6", encoding="ascii") as f:
        c6 = {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    return (c6["Udp6InDatagrams"] + c6["Udp6NoPorts"] + c6["Udp6InErrors"]
            - c6.get("Udp6InCsumErrors", 0))


def trafgen_config(src: Host, dst: Host, family: int) -> str:
    """One 64-byte UDP frame to dst's eth0 MAC; trafgen fills lengths and checksums."""
    if family == 4:
        return ("{\n"
                f"  eth(da={dst.mac}, sa={src.mac}, type=0x0800),\n"
                f"  ipv4(saddr={src.ipv4}, daddr={dst.ipv4}, ttl=64),\n"
                f"  udp(sport=4000, dport={SINK_PORT}),\n"
                f"  fill(0x41, {FRAME_BYTES - 14 - 20 - 8})\n"
                "}\n")
    return ("{\n"
            f"  eth(da={dst.mac}, sa={src.mac}, type=0x86dd),\n"
            f"  ipv6(saddr={src.ipv6}, daddr={dst.ipv6}, hl=64),\n"
            f"  udp(sport=4000, dport={SINK_PORT}),\n"
            f"  fill(0x41, {FRAME_BYTES - 14 - 40 - 8})\n"
            "}\n")


def start_trafgen(pair: Pair, cfg: str, stdout: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """trafgen sending cfg's frame from pair's sender (one process on CPU), until stopped."""
    # trafgen shares its per-CPU counters through a MAP_SHARED mapping of a file it
    # creates in its working directory: on a 9p mount (the repository inside
    # vagrant/run-kernel's VM) that mmap fails ("Cannot setup shared variable!",
    # exit 1), so it runs in the config's temporary directory.
    return env.spawn(["trafgen", "-o", pair.sender.ifname, "-i", cfg, "-P", "1", "--no-sock-mem", "-Q", "-C"],
                     ns=pair.sender.ns, cpu=CPU, stdout=stdout, cwd=os.path.dirname(cfg))


def packet_rate(pair: Pair, family: int, seconds: float, warmup: float = 0.5) -> float:
    """Packets per second delivered to the receiver's UDP layer (see module docstring).
    family is 4 or 6 (not socket.AF_INET, which is 2 and used to select IPv6 here)."""
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    cfg = os.path.join(env.tmpdir("tg"), f"udp{family}.cfg")
    with open(cfg, "w", encoding="ascii") as f:
        f.write(trafgen_config(pair.sender, pair.receiver, family))
    rns = pair.receiver.ns
    udp_delivered(rns, family)  # start the holder before the generator
    env.wait_quiet(CPU)  # not while the kernel still tears down namespaces or others run
    out_path = cfg + ".out"
    with open(out_path, "wb") as out:  # trafgen's messages, for the error below
        gen = start_trafgen(pair, cfg, stdout=out)
    try:
        time.sleep(warmup)
        if gen.poll() is not None:
            with open(out_path, "rb") as f:
                said = f.read()[-600:].decode(errors="replace").strip()
            raise RuntimeError(f"trafgen exited {gen.returncode} in {pair.sender.ns}: {said}")
        c0, t0 = udp_delivered(rns, family), time.monotonic()
        time.sleep(seconds)
        c1, t1 = udp_delivered(rns, family), time.monotonic()
    finally:
        env.stop(gen, signal.SIGINT)
    rate = (c1 - c0) / (t1 - t0)
    log.debug("%s udp%d: %.0f pps", pair.variant, family, rate)
    return rate


def _addr(h: Host, family: int) -> str:
    return h.ipv4 if family == 4 else h.ipv6


def tcp_throughput(pair: Pair, family: int, seconds: float, omit: int = 1) -> float:
    """TCP goodput in bits/s (iperf3, receiver side)."""
    port = next(_ports)
    dst = _addr(pair.receiver, family)
    server = env.spawn(["iperf3", "-s", "-1", "-B", dst, "-p", str(port), "-A", str(CPU)], ns=pair.receiver.ns)
    try:
        for attempt in range(50):
            r = env.run(["iperf3", "-c", dst, "-p", str(port), "-t", str(seconds), "-O", str(omit),
                         "-A", str(CPU), "-J"], ns=pair.sender.ns, check=False, timeout=seconds + omit + 30)
            data = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
            if "error" in data and "connect" in str(data["error"]) and attempt < 49:
                time.sleep(0.1)  # server not listening yet
                continue
            if "end" not in data or "sum_received" not in data["end"]:
                raise RuntimeError(f"iperf3 {pair.variant} v{family}: {data.get('error') or r.stderr[-300:]}")
            return float(data["end"]["sum_received"]["bits_per_second"])
        raise RuntimeError("iperf3 server never listened")
    finally:
        env.stop(server)


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p99_us: float
    samples: int


_PCT = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
_OBS = re.compile(r"Total\s+(\d+)\s+observations")


def latency(pair: Pair, family: int, seconds: int) -> Latency:
    """UDP request/response round-trip p50/p99 in microseconds (sockperf ping-pong)."""
    port = next(_ports)
    dst = _addr(pair.receiver, family)
    server = env.spawn(["sockperf", "sr", "-i", dst, "-p", str(port)], ns=pair.receiver.ns, cpu=CPU)
    try:
        time.sleep(0.3)
        r = env.run(["sockperf", "pp", "-i", dst, "-p", str(port), "-t", str(seconds), "-m", "64",
                     "--full-rtt"], ns=pair.sender.ns, cpu=CPU, check=False, timeout=seconds + 30)
        out = r.stdout + r.stderr
        pct = {float(a): float(b) for a, b in _PCT.findall(out)}
        obs = _OBS.search(out)
        if 50.0 not in pct or 99.0 not in pct:
            raise RuntimeError(f"sockperf {pair.variant} v{family}: no percentiles in output: {out[-400:]}")
        return Latency(pct[50.0], pct[99.0], int(obs.group(1)) if obs else 0)
    finally:
        env.stop(server)
