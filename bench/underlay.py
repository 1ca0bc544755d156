"""Across two hosts without encapsulation: plain routing (the limit) vs bpfnet's macvlan network.

Boundary: ``python -m bench.underlay [SECONDS [ROUNDS]] [--write]``, JSON on stdout. Built in
namespaces of this run only (``bench.env``); two "hosts" joined by one veth ``ul`` (the wire):

- ``plain``: what routing between hosts costs at the least. Each host namespace forwards
  (ip_forward=1) between its endpoint's veth (10.90.{1,2}.0/24, no bridge, no program) and the
  wire, with a static route to the other host's endpoint subnet via the other host's wire
  address: two routing hops, no encapsulation. flannel's host-gw does this with a bridge.
- ``routed``: two ``bpfnet daemon``s (datapath auto) in one etcd cluster (etcd in host 1's
  namespace), a routed network 10.92.0.0/16 (a /24 per node) and an endpoint on each: bridge,
  eBPF programs on the endpoints' veths, kernel routing between the nodes (two hops), no
  encapsulation.
- ``macvlan``: two ``bpfnet daemon``s, one per host namespace, each with a macvlan network on
  ``ul`` (10.91.0.0/24, its own ``--ip-range``) and one endpoint: the endpoints sit on the wire
  itself, no routing hop at all.

Measured from the endpoint on host 1 to the endpoint on host 2, every process on CPU 0 (as
``bench.traffic``): 64-byte UDP/IPv4 packets/s delivered to the receiver's UDP layer (trafgen),
TCP/IPv4 throughput (iperf3), UDP request/response latency p50/p99 (sockperf). Rounds
alternate the variants.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from dataclasses import dataclass
from typing import Any

from . import env, traffic
from .topology import BpfnetDaemon, Host, Pair

log = logging.getLogger(__name__)
CPU = traffic.CPU
OUT_JSON = "underlay.json"  # next to RESULTS.md: its "Across hosts without encapsulation" section


@dataclass
class Variant:
    name: str
    pair: Pair
    daemons: tuple[BpfnetDaemon, ...] = ()  # bpfnet's variants: whose counters show the path taken


def _mac(ns: str, dev: str) -> str:
    return str(json.loads(env.run(["ip", "-n", ns, "-j", "link", "show", dev]).stdout)[0]["address"])


def _wire(a: str, b: str) -> None:
    """The underlay: veth ul between host namespaces A and B, up."""
    env.run(["ip", "-n", a, "link", "add", "ul", "type", "veth", "peer", "name", "ul", "netns", b])
    for ns in (a, b):
        env.run(["ip", "-n", ns, "link", "set", "ul", "up"])
        env.run(["ip", "-n", ns, "link", "set", "lo", "up"])


def plain_routing() -> Variant:
    hosts = [env.add_netns(env.ns_name(f"ul-h{i}")) for i in (1, 2)]
    eps = [env.add_netns(env.ns_name(f"ul-e{i}")) for i in (1, 2)]
    _wire(*hosts)
    for i, (h, e) in enumerate(zip(hosts, eps, strict=True), 1):
        env.run(["ip", "netns", "exec", h, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        env.run(["ip", "-n", h, "addr", "add", f"10.77.9.{i}/24", "dev", "ul"])
        env.run(["ip", "-n", e, "link", "add", "eth0", "type", "veth", "peer", "name", "v0", "netns", h])
        env.run(["ip", "-n", h, "addr", "add", f"10.90.{i}.1/24", "dev", "v0"])
        env.run(["ip", "-n", h, "link", "set", "v0", "up"])
        env.run(["ip", "-n", e, "addr", "add", f"10.90.{i}.2/24", "dev", "eth0"])
        env.run(["ip", "-n", e, "link", "set", "eth0", "up"])
        env.run(["ip", "-n", e, "link", "set", "lo", "up"])
        env.run(["ip", "-n", e, "route", "add", "default", "via", f"10.90.{i}.1"])
        other = 3 - i
        env.run(["ip", "-n", h, "route", "add", f"10.90.{other}.0/24", "via", f"10.77.9.{other}"])
    # trafgen writes whole frames: the receiver's MAC is the sender's next hop (its host's v0)
    sender = Host(eps[0], _mac(eps[0], "eth0"), "10.90.1.2", "")
    receiver = Host(eps[1], _mac(hosts[0], "v0"), "10.90.2.2", "")
    env.run(["ip", "netns", "exec", eps[0], "ping", "-c", "1", "-W", "2", "10.90.2.2"])
    return Variant("plain", Pair("plain", sender, receiver))


def macvlan() -> Variant:
    daemons = [BpfnetDaemon(f"ulm{i}", "bridge", f"fd00:b0:d{i}::/64") for i in (1, 2)]
    for d in daemons:
        d.start()
    _wire(daemons[0].netns, daemons[1].netns)
    hosts = []
    for i, d in enumerate(daemons, 1):
        d.client.post("/v1/networks", {"name": "mv", "driver": "macvlan", "parent": "ul", "subnet4": "10.91.0.0/24",
                                       "gateway4": "10.91.0.1", "ip_range4": f"10.91.0.{32 * i}/27"})
        name = d.endpoint_name(0)
        ep = d.client.post("/v1/endpoints", {"name": name, "network": "mv"})
        d.endpoints.append(name)
        hosts.append(Host(ep["netns"], ep["mac"], ep["ipv4"].split("/")[0], ""))
    env.run(["ip", "netns", "exec", hosts[0].ns, "ping", "-c", "1", "-W", "2", hosts[1].ipv4])
    return Variant("macvlan", Pair("macvlan", hosts[0], hosts[1]))


def _etcd(ns: str, addr: str) -> None:
    """etcd for the routed variant, inside host 1's namespace on its wire address (data in a temp
    dir, stopped by PID at clean-up)."""
    data = env.tmpdir("etcd")
    url = f"http://{addr}:2379"
    proc = env.spawn(["etcd", "--name", "b", "--data-dir", f"{data}/d", "--listen-client-urls", url,
                      "--advertise-client-urls", url, "--listen-peer-urls", f"http://{addr}:2380",
                      "--initial-advertise-peer-urls", f"http://{addr}:2380", "--initial-cluster",
                      f"b=http://{addr}:2380", "--log-level", "error"], ns=ns)

    def stop() -> None:
        env.stop(proc)

    env.on_cleanup(stop)
    env.wait_until(lambda: env.run(["etcdctl", f"--endpoints={url}", "endpoint", "health"], ns=ns,
                                   check=False).returncode == 0, 20, "etcd healthy")


def routed() -> Variant:
    """bpfnet routed: two daemons in one etcd cluster, a routed network, an endpoint on each."""
    daemons = []
    for i in (1, 2):
        tag = f"ulr{i}"
        addr = f"10.77.8.{i}"
        daemons.append(BpfnetDaemon(tag, "auto", f"fd00:b0:e{i}::/64", extra=(
            "--cluster-store", "etcd://10.77.8.1:2379", "--advertise-addr", addr, "--node-name", f"n{i}")))
    for d in daemons:
        env.add_netns(d.netns)
    _wire(daemons[0].netns, daemons[1].netns)
    for i, d in enumerate(daemons, 1):
        env.run(["ip", "-n", d.netns, "addr", "add", f"10.77.8.{i}/24", "dev", "ul"])
    _etcd(daemons[0].netns, "10.77.8.1")
    hosts = []
    for d in daemons:
        d.start()
        d.client.post("/v1/networks", {"name": "rn", "driver": "routed", "subnet4": "10.92.0.0/16"})
        name = d.endpoint_name(0)
        ep = d.client.post("/v1/endpoints", {"name": name, "network": "rn"})
        d.endpoints.append(name)
        hosts.append(Host(ep["netns"], ep["mac"], ep["ipv4"].split("/")[0], ""))
    env.wait_until(lambda: env.run(["ip", "netns", "exec", hosts[0].ns, "ping", "-c", "1", "-W", "1", hosts[1].ipv4],
                                   check=False).returncode == 0, 20, "routes between the nodes")
    gateway_mac = _mac(daemons[0].netns, "br-rn")  # the sender's next hop: its host's bridge
    receiver = Host(hosts[1].ns, gateway_mac, hosts[1].ipv4, "")
    return Variant("routed", Pair("routed", hosts[0], receiver), tuple(daemons))


def measure(seconds: float = 2.0, rounds: int = 2) -> dict[str, Any]:
    env.quiet_timeout = 5.0  # a busy shared machine: measure anyway, every variant alike
    variants = [plain_routing(), routed(), macvlan()]
    samples: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    for rnd in range(rounds):
        for v in variants if rnd % 2 == 0 else reversed(variants):
            by = samples[v.name]
            by.setdefault("udp_pps", []).append(traffic.packet_rate(v.pair, 4, seconds))
            env.wait_quiet(CPU)
            by.setdefault("tcp_bps", []).append(traffic.tcp_throughput(v.pair, 4, seconds))
            env.wait_quiet(CPU)
            lat = traffic.latency(v.pair, 4, max(1, int(seconds)))
            by.setdefault("rr_p50_us", []).append(lat.p50_us)
            by.setdefault("rr_p99_us", []).append(lat.p99_us)
            log.info("round %d %s: %s", rnd, v.name, {k: x[-1] for k, x in by.items()})
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "machine": env.machine()}
    # which path the routed variant's packets took (the eBPF bypass: tx/rx "routed")
    r = next(v for v in variants if v.name == "routed")
    paths = {}
    for d, direction in zip(r.daemons, ("tx", "rx"), strict=True):
        c = d.client.get("/v1/stats")["endpoints"][0]["counters"]
        paths.update({f"{direction}_{p}_packets": c[f"{direction}_{p}_packets"] for p in ("routed", "kernel", "fast")})
    out["bpfnet_routed_paths"] = paths
    for name, by in samples.items():
        out[name] = {k: {"median": round(statistics.median(x), 1), "runs": [round(y, 1) for y in x]}
                     for k, x in by.items()}
    med = {n: {k: out[n][k]["median"] for k in out[n]} for n in samples}
    out["ratios_over_plain"] = {n: {k: round(med[n][k] / med["plain"][k], 3) for k in med["plain"]}
                                for n in samples if n != "plain"}
    return out


LABELS = {"udp_pps": ("UDP/IPv4 64 B, packets/s", 1e6, " M"), "tcp_bps": ("TCP/IPv4, Gbit/s", 1e9, ""),
          "rr_p50_us": ("UDP request/response p50, µs", 1, ""), "rr_p99_us": ("UDP request/response p99, µs", 1, "")}
NAMES = {"plain": "plain routing", "macvlan": "bpfnet macvlan", "routed": "bpfnet routed", "overlay": "bpfnet overlay"}


def markdown(doc: dict[str, Any]) -> list[str]:
    """The "Across hosts without encapsulation" section of RESULTS.md (report.py appends it)."""
    names = [n for n in NAMES if n in doc]
    rows = []
    for key, (label, scale, unit) in LABELS.items():
        cells = [f"{doc['plain'][key]['median'] / scale:.2f}{unit}"]
        cells += [f"{doc[n][key]['median'] / scale:.2f}{unit} ({doc['ratios_over_plain'][n][key]:.2f}x)"
                  for n in names if n != "plain"]
        rows.append(f"| {label} | {' | '.join(cells)} |")
    m = doc["machine"]
    lines = ["## Across hosts without encapsulation (`python -m bench.underlay`)", "",
             (f"Two host namespaces joined by one veth (the wire), endpoint to endpoint: plain routing (two "
              f"forwarding hops, static routes: the limit) and bpfnet's underlay drivers. Medians of "
              f"{doc['rounds']} interleaved rounds of {doc['seconds']:.0f} s; load average at start "
              f"{m.get('loadavg_at_start')}."), "",
             "| metric | " + " | ".join(NAMES[n] for n in names) + " |", "| --- " * (len(names) + 1) + "|", *rows, ""]
    for n, goal in (("macvlan", 0.95), ("routed", 0.95)):
        if n in doc:
            r = doc["ratios_over_plain"][n]["udp_pps"]
            lines.append(f"Goal: {NAMES[n]} ≥ {goal}x plain routing's packet rate: "
                         f"**{'met' if r >= goal else 'missed'}** ({r:.2f}x).")
    notes: list[str] = list(doc.get("notes", []))
    return lines + [""] + notes + ([""] if notes else [])


def main(argv: list[str]) -> int:
    """[SECONDS [ROUNDS]] [--write]: --write keeps the figures in bench/underlay.json and renders
    RESULTS.md again from bench/results.json with them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    write = "--write" in argv
    args = [a for a in argv if a != "--write"]
    seconds = float(args[0]) if args else 2.0
    rounds = int(args[1]) if len(args) > 1 else 2
    env.measure_and_keep(lambda: measure(seconds, rounds), OUT_JSON, write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
