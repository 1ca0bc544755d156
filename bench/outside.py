"""Published ports: Docker's way (nftables DNAT + masquerade on a plain bridge) vs bpfnet, with
its fast path for established flows (bpf/nat.h) on and off.

Boundary: ``python -m bench.outside [SECONDS [ROUNDS]]``, JSON on stdout. Three topologies of the
same shape, built in namespaces of this run only (``bench.env``):

    outside ns (198.51.100.2) --veth-- managed ns (up0, 198.51.100.1) --bridge-- endpoint ns

- ``docker``: the managed namespace made by the harness as dockerd with
  ``--userland-proxy=false`` configures it (with iptables-nft, in nftables): a bridge
  ``docker0`` 172.18.0.1/16, the endpoint's veth on it, ``ip_forward=1``, a nat table with
  ``prerouting/output: fib daddr type local -> DOCKER``, ``DOCKER: iifname != docker0 dport P
  dnat to 172.18.0.2:P``, ``postrouting: ip saddr 172.18.0.0/16 oifname != docker0 masquerade``
  and a filter forward chain accepting (dockerd's DOCKER-USER/DOCKER-ISOLATION chains accept
  this traffic too, after a few jumps: left out, which favours Docker).
- ``bpfnet``: a ``bpfnet daemon --datapath redirect-peer`` managing the namespace, the endpoint
  added with ``--publish`` for the same ports; the fast path on (the default): ``uplink_ingress``
  on up0 translates a flow once the kernel has forwarded it.
- ``bpfnet-nofast``: the same with ``--no-published-fastpath``: every packet takes the kernel's
  conntrack/NAT path and routing, bpfnet's programs only replace the bridge.

Measured from the outside namespace to the host's address, every process pinned to CPU 0
(as ``bench.traffic``): 64-byte UDP packets/s counted at the endpoint's UDP layer (trafgen,
one flow: after its first packet conntrack translates it on the fast NAT path), TCP
throughput (iperf3), short TCP connections per second (connect, 1-byte request, answer,
close; a Python client and server, the same for both), UDP request/response latency
(sockperf ping-pong). Rounds alternate between the variants.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import env, kprofile, traffic
from .topology import BpfnetDaemon, Host, Pair

log = logging.getLogger(__name__)
UP4, OUT4 = "198.51.100.1", "198.51.100.2"
UDP_PORT = traffic.SINK_PORT  # published 9:9/udp: the UDP sink of bench.traffic
IPERF_PORT = 5201
CONN_PORT = 8080
LAT_PORT = 11111  # sockperf, udp
CPU = traffic.CPU
OUT_JSON = "outside.json"
PATH_COMMS = ("trafgen", "ksoftirqd/0")  # the contexts a generated UDP packet's path runs in  # next to RESULTS.md: its "Published ports" section

DOCKER_NFT = f"""
table ip bench-docker {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump DOCKER
  }}
  chain output {{ type nat hook output priority -100; policy accept;
    fib daddr type local jump DOCKER
  }}
  chain DOCKER {{
    iifname != "docker0" udp dport {UDP_PORT} dnat to 172.18.0.2:{UDP_PORT}
    iifname != "docker0" tcp dport {IPERF_PORT} dnat to 172.18.0.2:{IPERF_PORT}
    iifname != "docker0" tcp dport {CONN_PORT} dnat to 172.18.0.2:{CONN_PORT}
    iifname != "docker0" udp dport {LAT_PORT} dnat to 172.18.0.2:{LAT_PORT}
  }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr 172.18.0.0/16 oifname != "docker0" masquerade
  }}
  chain forward {{ type filter hook forward priority filter; policy accept;
    ct state established,related accept
    iifname "docker0" accept
    oifname "docker0" ip daddr 172.18.0.2 accept
  }}
}}
"""

CONN_SERVER = f"""
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {CONN_PORT}))
s.listen(1024)
while True:
    c, _ = s.accept()
    c.recv(16)
    c.sendall(b"y")
    c.close()
"""

CONN_CLIENT = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n, end = 0, time.monotonic() + seconds
start = time.monotonic()
while time.monotonic() < end:
    c = socket.create_connection((host, port), timeout=5)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    c.sendall(b"x")
    c.recv(16)
    c.close()
    n += 1
print(n / (time.monotonic() - start))
"""


@dataclass
class Topology:
    variant: str
    managed: str
    outside: str
    endpoint: Host
    up_mac: str
    daemon: BpfnetDaemon | None = None

    def pair(self) -> Pair:
        """trafgen in the outside namespace to the uplink's MAC and the host's address;
        counted at the endpoint's UDP layer."""
        sender = Host(self.outside, _mac(self.outside, "eth0"), OUT4, "")
        receiver = Host(self.endpoint.ns, self.up_mac, UP4, "")
        return Pair(self.variant, sender, receiver)


def _mac(ns: str, dev: str) -> str:
    out = env.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]).stdout
    return str(json.loads(out)[0]["address"])


def _uplink(managed: str, outside: str) -> str:
    env.run(["ip", "-n", managed, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", outside])
    env.run(["ip", "-n", managed, "addr", "add", f"{UP4}/24", "dev", "up0"])
    env.run(["ip", "-n", outside, "addr", "add", f"{OUT4}/24", "dev", "eth0"])
    for ns, dev in ((managed, "up0"), (outside, "eth0"), (outside, "lo")):
        env.run(["ip", "-n", ns, "link", "set", dev, "up"])
    env.run(["ip", "-n", outside, "route", "add", "default", "via", UP4])
    # the outside learns the uplink's MAC once (trafgen sends to it directly)
    env.run(["ping", "-c", "1", "-W", "2", UP4], ns=outside)
    return _mac(managed, "up0")


def docker_way() -> Topology:
    m, o, e = (env.add_netns(env.ns_name(s)) for s in ("dk-m", "dk-o", "dk-e"))
    up_mac = _uplink(m, o)
    env.run(["ip", "-n", m, "link", "add", "docker0", "type", "bridge"])
    env.run(["ip", "-n", m, "addr", "add", "172.18.0.1/16", "dev", "docker0"])
    env.run(["ip", "-n", m, "link", "set", "docker0", "up"])
    env.run(["ip", "-n", m, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", e])
    env.run(["ip", "-n", m, "link", "set", "veth0", "master", "docker0", "up"])
    env.run(["ip", "-n", e, "link", "set", "eth0", "address", "02:42:ac:12:00:02"])
    env.run(["ip", "-n", e, "addr", "add", "172.18.0.2/16", "dev", "eth0"])
    env.run(["ip", "-n", e, "link", "set", "eth0", "up"])
    env.run(["ip", "-n", e, "route", "add", "default", "via", "172.18.0.1"])
    env.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=m)
    env.run(["sysctl", "-qw", "net.ipv4.conf.docker0.route_localnet=1"], ns=m)
    _nft(m, DOCKER_NFT)
    return Topology("docker", m, o, Host(e, "02:42:ac:12:00:02", "172.18.0.2", ""), up_mac)


def _nft(ns: str, script: str) -> None:
    import subprocess

    r = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, capture_output=True,
                       text=True, check=False, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"nft in {ns}: {r.stderr.strip()}")


def bpfnet_way(fast: bool = True) -> Topology:
    tag = "ob" if fast else "on"
    d = BpfnetDaemon(tag, "redirect-peer", "fd00:b0:c1::/64",
                     extra=() if fast else ("--no-published-fastpath",))
    d.start()
    if d.mode != "redirect-peer":
        raise RuntimeError(f"bpfnet daemon runs {d.mode}, not redirect-peer")
    o = env.add_netns(env.ns_name(f"{tag}-o"))
    up_mac = _uplink(d.netns, o)
    name = d.endpoint_name(0)
    ep = d.client.post("/v1/endpoints", {"name": name, "publish": [
        f"{UDP_PORT}:{UDP_PORT}/udp", f"{IPERF_PORT}:{IPERF_PORT}", f"{CONN_PORT}:{CONN_PORT}",
        f"{LAT_PORT}:{LAT_PORT}/udp"]})
    d.endpoints.append(name)
    fastpath = d.client.get("/v1/info")["outside"]["fastpath"]
    if fastpath["enabled"] != fast or (fast and fastpath["uplinks"] != ["up0"]):
        raise RuntimeError(f"bpfnet daemon's fast path is not as asked (fast={fast}): {fastpath}")
    return Topology("bpfnet" if fast else "bpfnet-nofast", d.netns, o,
                    Host(ep["netns"], ep["mac"], ep["ipv4"].split("/")[0], ""), up_mac, d)


def tcp_throughput(t: Topology, seconds: float) -> float:
    server = env.spawn(["iperf3", "-s", "-p", str(IPERF_PORT), "-A", str(CPU)], ns=t.endpoint.ns)
    try:
        for _ in range(50):
            r = env.run(["iperf3", "-c", UP4, "-p", str(IPERF_PORT), "-t", str(seconds), "-O", "1",
                         "-A", str(CPU), "-J"], ns=t.outside, check=False, timeout=seconds + 40)
            data = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
            if "end" in data and "sum_received" in data["end"]:
                return float(data["end"]["sum_received"]["bits_per_second"])
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 {t.variant}: {r.stdout[-300:]} {r.stderr[-300:]}")
    finally:
        env.stop(server)


def connection_rate(t: Topology, seconds: float) -> float:
    server = env.spawn([env.PYTHON, "-c", CONN_SERVER], ns=t.endpoint.ns, cpu=CPU)
    try:
        for _ in range(50):
            r = env.run([env.PYTHON, "-c", CONN_CLIENT, UP4, str(CONN_PORT), str(seconds)], ns=t.outside,
                        cpu=CPU, check=False, timeout=seconds + 30)
            if r.returncode == 0:
                return float(r.stdout.strip())
            time.sleep(0.1)
        raise RuntimeError(f"connection client {t.variant}: {r.stderr[-300:]}")
    finally:
        env.stop(server)


def latency(t: Topology, seconds: int) -> traffic.Latency:
    server = env.spawn(["sockperf", "sr", "-i", "0.0.0.0", "-p", str(LAT_PORT)], ns=t.endpoint.ns, cpu=CPU)
    try:
        time.sleep(0.3)
        r = env.run(["sockperf", "pp", "-i", UP4, "-p", str(LAT_PORT), "-t", str(seconds), "-m", "64",
                     "--full-rtt"], ns=t.outside, cpu=CPU, check=False, timeout=seconds + 30)
        out = r.stdout + r.stderr
        pct = {float(a): float(b) for a, b in traffic._PCT.findall(out)}
        if 50.0 not in pct or 99.0 not in pct:
            raise RuntimeError(f"sockperf {t.variant}: {out[-400:]}")
        return traffic.Latency(pct[50.0], pct[99.0], 0)
    finally:
        env.stop(server)


def measure(seconds: float = 3.0, rounds: int = 3) -> dict[str, Any]:
    env.quiet_timeout = 5.0  # a busy shared machine: measure anyway, both variants alike
    topologies = [docker_way(), bpfnet_way(fast=True), bpfnet_way(fast=False)]
    samples: dict[str, dict[str, list[float]]] = {t.variant: {} for t in topologies}

    def add(t: Topology, key: str, value: float) -> None:
        samples[t.variant].setdefault(key, []).append(value)

    for rnd in range(rounds):
        for t in topologies if rnd % 2 == 0 else reversed(topologies):
            add(t, "udp_pps", traffic.packet_rate(t.pair(), 4, seconds))
            env.wait_quiet(CPU)
            add(t, "tcp_bps", tcp_throughput(t, seconds))
            env.wait_quiet(CPU)
            add(t, "conn_per_s", connection_rate(t, seconds))
            env.wait_quiet(CPU)
            lat = latency(t, max(1, int(seconds)))
            add(t, "rr_p50_us", lat.p50_us)
            add(t, "rr_p99_us", lat.p99_us)
            log.info("round %d %s: %s", rnd, t.variant, {k: v[-1] for k, v in samples[t.variant].items()})
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "machine": env.machine()}
    for variant, by in samples.items():
        out[variant] = {k: {"median": round(statistics.median(v), 1), "runs": [round(x, 1) for x in v]}
                        for k, v in by.items()}
    med = {v: {k: out[v][k]["median"] for k in out[v]} for v in samples}
    out["ratios_bpfnet_over_docker"] = {k: round(med["bpfnet"][k] / med["docker"][k], 3) for k in med["docker"]}
    out["ratios_nofast_over_docker"] = {k: round(med["bpfnet-nofast"][k] / med["docker"][k], 3)
                                        for k in med["docker"]}
    # what the fast path carried: the published ports' counters of the fast variant
    fast = next(t for t in topologies if t.variant == "bpfnet").daemon
    assert fast is not None
    out["fastpath_share"] = _fast_share(fast)
    why_not = kprofile.available()
    if why_not is None:
        # where CPU 0 goes per delivered UDP packet, symbol by symbol (untimed pass)
        # only the packets' own contexts: the generator's (veth xmit, then the receive softirq it
        # runs on its way out) and ksoftirqd's; the rest of a shared CPU is not the path's cost
        profiles = [kprofile.profile_pair(t.pair(), 4, seconds, comms=PATH_COMMS) for t in topologies]
        path = {p["variant"]: round(p["path_ns_per_packet"]) for p in profiles}
        out["profile"] = {"ns_per_packet": {p["variant"]: round(p["ns_per_packet"]) for p in profiles},
                          "path_ns_per_packet": path,
                          "symbols": kprofile.compare(profiles, focus="bpfnet", base="docker")}
        if path.get("bpfnet") and path.get("docker"):
            out["profile"]["path_cost_docker_over_bpfnet"] = round(path["docker"] / path["bpfnet"], 3)
    else:
        out["profile"] = {"skipped": why_not}
    return out


def _fast_share(d: BpfnetDaemon) -> dict[str, float]:
    """Per published host port: the share of its packets (both directions) the fast path carried."""
    import urllib.request

    url = d.client.get("/v1/info")["metrics_url"]
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    total: dict[str, float] = {}
    fast: dict[str, float] = {}
    for line in text.splitlines():
        for prefix, into in (("bpfnet_published_port_packets_total{", total),
                             ("bpfnet_published_port_fastpath_packets_total{", fast)):
            if line.startswith(prefix):
                port = line.split('host_port="')[1].split('"')[0] + "/" + line.split('proto="')[1].split('"')[0]
                into[port] = into.get(port, 0.0) + float(line.rsplit(" ", 1)[1])
    return {p: round(fast.get(p, 0.0) / n, 4) for p, n in sorted(total.items()) if n}


LABELS = {"udp_pps": ("UDP/IPv4 64 B, packets/s", 1e3, "k"), "tcp_bps": ("TCP/IPv4, Gbit/s", 1e9, ""),
          "conn_per_s": ("short TCP connections/s", 1, ""), "rr_p50_us": ("UDP request/response p50, µs", 1, ""),
          "rr_p99_us": ("UDP request/response p99, µs", 1, "")}


def markdown(doc: dict[str, Any]) -> list[str]:
    """The "Published ports" section of RESULTS.md (report.py appends it when outside.json exists)."""
    ratio = doc["ratios_bpfnet_over_docker"]
    rows = []
    three = "bpfnet-nofast" in doc
    for key, (label, scale, unit) in LABELS.items():
        d, b = doc["docker"][key]["median"], doc["bpfnet"][key]["median"]
        if three:
            n, nr = doc["bpfnet-nofast"][key]["median"], doc["ratios_nofast_over_docker"][key]
            rows.append(f"| {label} | {d / scale:.1f}{unit} | {n / scale:.1f}{unit} ({nr:.2f}x) | "
                        f"{b / scale:.1f}{unit} | {ratio[key]:.2f}x |")
        else:
            rows.append(f"| {label} | {d / scale:.1f}{unit} | {b / scale:.1f}{unit} | {ratio[key]:.2f}x |")
    m = doc["machine"]
    lines = ["## Published ports (`python -m bench.outside`)", "",
             (f"From an outside namespace through the uplink to an endpoint's published port: Docker's way "
              f"(nftables DNAT + masquerade, endpoint on a plain bridge, as dockerd `--userland-proxy=false`) "
              f"vs bpfnet redirect-peer{' without and with its fast path (`--published-fastpath`)' if three else ''}"
              f". Medians of {doc['rounds']} interleaved rounds of {doc['seconds']:.0f} s; "
              f"load average at start {m.get('loadavg_at_start')}."), "",
             *([("| metric | Docker's way | bpfnet, fast path off (/ Docker) | bpfnet, fast path on | "
                 "fast path on / Docker |"), "| --- | --- | --- | --- | --- |"] if three else
               ["| metric | Docker's way | bpfnet | bpfnet / Docker |", "| --- | --- | --- | --- |"]), *rows, ""]
    if "fastpath_share" in doc:
        lines += [("Share of each published port's packets (both directions, whole run) the fast path carried: "
                   + ", ".join(f"{p} {v:.1%}" for p, v in doc["fastpath_share"].items()) + "."), ""]
    goal = (f"Goal: packet rate ≥ 1.3x Docker's way: **{'met' if ratio['udp_pps'] >= 1.3 else 'missed'}** "
            f"({ratio['udp_pps']:.2f}x); connection rate no worse: "
            f"**{'met' if ratio['conn_per_s'] >= 1.0 else 'missed'}** ({ratio['conn_per_s']:.2f}x).")
    lines += [goal, ""]
    prof = doc.get("profile", {})
    if "symbols" in prof and "path_ns_per_packet" in prof:
        path = prof["path_ns_per_packet"]
        lines += [(f"perf (CPU 0, untimed pass): CPU time per delivered 64 B UDP packet in the packets' own "
                   f"contexts ({', '.join(PATH_COMMS)}: the generator's send, and the receive softirq that "
                   f"carries the packet through the uplink, the datapath and into the endpoint's UDP layer), "
                   f"whatever else ran on the CPU: " + ", ".join(f"{v} {n} ns" for v, n in path.items())
                   + f"; Docker's way costs **{prof.get('path_cost_docker_over_bpfnet', 0):.2f}x** what bpfnet "
                   "with its fast path costs per packet. Largest differences, bpfnet (fast path on) minus "
                   "Docker's way:"), "",
                  "| symbol | Docker's way ns | bpfnet, fast path off ns | bpfnet, fast path on ns |",
                  "| --- | --- | --- | --- |"]
        for row in prof["symbols"][:14]:
            lines.append(f"| `{row['symbol']}` | {row.get('docker', 0):.0f} | {row.get('bpfnet-nofast', 0):.0f} | "
                         f"{row.get('bpfnet', 0):.0f} |")
        lines.append("")
    elif "symbols" in prof:
        lines += [(f"perf (CPU 0, ns per delivered UDP packet): {prof['ns_per_packet']}. Largest differences, "
                   "bpfnet minus Docker's way:"), "", "| symbol | Docker's way ns | bpfnet ns |", "| --- | --- | --- |"]
        for row in prof["symbols"][:12]:
            lines.append(f"| `{row['symbol']}` | {row.get('docker', 0):.0f} | {row.get('bpfnet', 0):.0f} |")
        lines.append("")
    notes: list[str] = doc.get("notes", [])
    return lines + notes + ([""] if notes else [])


def main(argv: list[str]) -> int:
    """[SECONDS [ROUNDS]] [--write]: --write keeps the figures in bench/outside.json and renders
    RESULTS.md again from bench/results.json with them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    write = "--write" in argv
    args = [a for a in argv if a != "--write"]
    seconds = float(args[0]) if args else 3.0
    rounds = int(args[1]) if len(args) > 1 else 3
    env.measure_and_keep(lambda: measure(seconds, rounds), OUT_JSON, write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
