"""Across hosts: plain routing (the limit), Docker's overlay (kernel VXLAN on a bridge with static
FDB and neighbour entries, as libnetwork sets it up) and bpfnet's overlay (eBPF tunnel path).

Boundary: ``python -m bench.overlay [SECONDS [ROUNDS [ADDS]]] [--write]``, JSON on stdout. Every
variant is two "hosts" (namespaces) joined by one veth (the underlay, 192.168.77.0/24), with one
endpoint namespace on each, built in namespaces of this run only (``bench.env``):

- ``routed``: the endpoints in two subnets, each host their router; hosts route to each other.
  No encapsulation: what the underlay itself delivers.
- ``docker``: libnetwork's overlay without its namespace indirection: on each host a bridge with
  a VXLAN device (VNI 4096, UDP 4789, ``nolearning proxy``) and the endpoint's veth; per remote
  endpoint a static FDB entry (its MAC -> the remote VTEP) and a static neighbour entry (its IP
  -> MAC) on the VXLAN device, as libnetwork's peerAdd does. Endpoint MTU 1450.
- ``bpfnet``: etcd (in host A, on its underlay address), a ``bpfnet daemon --cluster-store``
  on each host, an overlay network, an endpoint on each: bpfnet's tunnel path, the programs
  writing and stripping the VXLAN headers themselves (``--overlay-encap native``, the default).
- ``bpfnet_device``: the same cluster again (its own etcd and hosts) with ``--overlay-encap
  device``: the programs hand frames to the collect-metadata VXLAN device, which encapsulates,
  and take them from it after the kernel decapsulated. What the native path saves, in one run.

Measured as bench.traffic does (pinned to CPU 0): 64-byte UDP packets/s from A's endpoint to B's
(trafgen), TCP throughput (iperf3), UDP request/response p50/p99 (sockperf). Rounds alternate
between the variants. Then, on the bpfnet cluster: convergence, the time from ``endpoint add`` on
host A until an endpoint on host B gets an echo reply from it (a ping every 2 ms started when the
add returns, ADDS times), and etcd load: requests the adding daemon sent per add (lease
keepalives excluded).
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import env, traffic
from .topology import BpfnetDaemon, Host, Pair

log = logging.getLogger(__name__)
CPU = traffic.CPU
UL_A, UL_B = "192.168.77.1", "192.168.77.2"
OUT_JSON = "overlay.json"
ETCD_PORT = 2379


@dataclass
class Variant:
    name: str
    pair: Pair


def _mac(ns: str, dev: str) -> str:
    out = env.run(["ip", "-n", ns, "-j", "link", "show", "dev", dev]).stdout
    return str(json.loads(out)[0]["address"])


def _underlay(a: str, b: str) -> None:
    env.run(["ip", "-n", a, "link", "add", "ul", "type", "veth", "peer", "name", "ul", "netns", b])
    for ns, ip in ((a, UL_A), (b, UL_B)):
        env.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "ul"])
        env.run(["ip", "-n", ns, "link", "set", "ul", "up"])
        env.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=ns)


def _endpoint(host: str, ep: str, mac: str, cidr: str, gw: str | None, mtu: int, master: str | None) -> None:
    env.run(["ip", "-n", host, "link", "add", "veth-" + ep[-2:], "type", "veth", "peer", "name", "eth0",
             "netns", ep])
    env.run(["ip", "-n", ep, "link", "set", "eth0", "address", mac, "mtu", str(mtu), "up"])
    env.run(["ip", "-n", ep, "addr", "add", cidr, "dev", "eth0"])
    if master:
        env.run(["ip", "-n", host, "link", "set", "veth-" + ep[-2:], "master", master, "mtu", str(mtu), "up"])
    else:
        env.run(["ip", "-n", host, "link", "set", "veth-" + ep[-2:], "up"])
    if gw:
        env.run(["ip", "-n", ep, "route", "add", "default", "via", gw])


def routed() -> Variant:
    a, b, ea, eb = (env.add_netns(env.ns_name(s)) for s in ("rt-a", "rt-b", "rt-ea", "rt-eb"))
    _underlay(a, b)
    _endpoint(a, ea, "02:42:0a:5a:01:02", "10.90.1.2/24", "10.90.1.1", 1500, None)
    _endpoint(b, eb, "02:42:0a:5a:02:02", "10.90.2.2/24", "10.90.2.1", 1500, None)
    env.run(["ip", "-n", a, "addr", "add", "10.90.1.1/24", "dev", "veth-ea"])
    env.run(["ip", "-n", b, "addr", "add", "10.90.2.1/24", "dev", "veth-eb"])
    env.run(["ip", "-n", a, "route", "add", "10.90.2.0/24", "via", UL_B])
    env.run(["ip", "-n", b, "route", "add", "10.90.1.0/24", "via", UL_A])
    env.run(["ping", "-c", "1", "-W", "2", "10.90.2.2"], ns=ea)
    gw_mac = _mac(a, "veth-ea")  # trafgen sends to the first hop
    return Variant("routed", Pair("routed", Host(ea, "02:42:0a:5a:01:02", "10.90.1.2", ""),
                                  Host(eb, gw_mac, "10.90.2.2", "")))


def docker() -> Variant:
    a, b, ea, eb = (env.add_netns(env.ns_name(s)) for s in ("dk-a", "dk-b", "dk-ea", "dk-eb"))
    _underlay(a, b)
    eps = {"a": ("02:42:0a:5b:00:02", "10.91.0.2"), "b": ("02:42:0a:5b:00:03", "10.91.0.3")}
    for side, host, ep, local, remote in (("a", a, ea, UL_A, UL_B), ("b", b, eb, UL_B, UL_A)):
        other = "b" if side == "a" else "a"
        env.run(["ip", "-n", host, "link", "add", "br0", "type", "bridge"])
        env.run(["ip", "-n", host, "link", "set", "br0", "mtu", "1450", "up"])
        env.run(["ip", "-n", host, "link", "add", "vx0", "type", "vxlan", "id", "4096", "dstport", "4789",
                 "local", local, "nolearning", "proxy"])
        env.run(["ip", "-n", host, "link", "set", "vx0", "master", "br0", "mtu", "1450", "up"])
        mac, ip = eps[side]
        _endpoint(host, ep, mac, f"{ip}/24", None, 1450, "br0")
        rmac, rip = eps[other]
        # libnetwork's peerAdd: the remote endpoint's MAC behind the remote VTEP, its IP -> MAC
        env.run(["bridge", "-n", host, "fdb", "add", rmac, "dev", "vx0", "dst", remote, "self", "permanent"])
        env.run(["ip", "-n", host, "neigh", "add", rip, "lladdr", rmac, "dev", "vx0", "nud", "permanent"])
    env.run(["ping", "-c", "1", "-W", "2", "10.91.0.3"], ns=ea)
    return Variant("docker", Pair("docker", Host(ea, eps["a"][0], eps["a"][1], ""),
                                  Host(eb, eps["b"][0], eps["b"][1], "")))


class BpfnetCluster:
    """etcd in host A, two daemons, overlay network 'ov', one endpoint per host; ENCAP is their
    --overlay-encap."""

    def __init__(self, encap: str = "native") -> None:
        self.encap = encap
        self.name = "bpfnet" if encap == "native" else f"bpfnet_{encap}"
        self.daemons: list[BpfnetDaemon] = []
        self.etcd: subprocess.Popen[bytes] | None = None

    def start(self) -> Variant:
        tag = "ov" if self.encap == "native" else "od"
        a = BpfnetDaemon(f"{tag}-a", "redirect-peer", "fd00:b0:d1::/64")
        b = BpfnetDaemon(f"{tag}-b", "redirect-peer", "fd00:b0:d2::/64")
        for d in (a, b):
            env.add_netns(d.netns)
        _underlay(a.netns, b.netns)
        data = env.tmpdir("etcd")
        url = f"http://{UL_A}:{ETCD_PORT}"
        self.etcd = env.spawn(["etcd", "--name", "b", "--data-dir", f"{data}/d", "--listen-client-urls", url,
                               "--advertise-client-urls", url, "--listen-peer-urls", f"http://{UL_A}:2380",
                               "--initial-advertise-peer-urls", f"http://{UL_A}:2380",
                               "--initial-cluster", f"b=http://{UL_A}:2380", "--log-level", "warn",
                               "--logger", "zap"], ns=a.netns)
        env.wait_until(lambda: env.run(["etcdctl", f"--endpoints={url}", "endpoint", "health"], ns=a.netns,
                                       check=False).returncode == 0, 30, "etcd healthy")
        for d, ip, node in ((a, UL_A, "a"), (b, UL_B, "b")):
            d.extra = ("--cluster-store", f"etcd://{UL_A}:{ETCD_PORT}", "--advertise-addr", ip, "--node-name", node,
                       "--overlay-encap", self.encap)
            d.start()
            if d.mode != "redirect-peer":
                raise RuntimeError(f"bpfnet daemon runs {d.mode}, not redirect-peer")
            self.daemons.append(d)
        a.client.post("/v1/networks", {"name": "ov", "driver": "overlay", "subnet4": "10.92.0.0/16"})
        env.wait_until(lambda: any(n["name"] == "ov" for n in b.client.get("/v1/networks")), 10, "ov on b")
        ea = self.add(a, "ea")
        eb = self.add(b, "eb")
        env.wait_until(lambda: b.client.get("/v1/info")["cluster"]["remote_endpoints"] == 1, 10, "a on b")
        env.run(["ping", "-c", "1", "-W", "2", eb["ipv4"].split("/")[0]], ns=ea["netns"])
        return Variant(self.name, Pair(self.name, _host(ea), _host(eb)))

    def add(self, d: BpfnetDaemon, suffix: str, ip: str | None = None) -> dict[str, Any]:
        name = env.ns_name(f"{d.tag}-{suffix}")
        body = {"name": name, "network": "ov", **({"ip": ip} if ip else {})}
        ep: dict[str, Any] = d.client.post("/v1/endpoints", body)
        d.endpoints.append(name)
        return ep

    def convergence(self, peer_ns: str, adds: int) -> dict[str, Any]:
        """ADDS times: endpoint add on A, until B's peer gets an echo reply (see module docstring)."""
        a = self.daemons[0]
        times: list[float] = []
        api: list[float] = []
        before = a.client.get("/v1/info")["cluster"]
        for i in range(adds):
            ip = f"10.92.1.{i + 10}"
            t0 = time.time()
            ep = self.add(a, f"c{i}", ip)
            api.append(time.time() - t0)
            # Pinging only once the add returned: a peer that asked before would wait for its own
            # ARP retry (1 s), which measures the kernel's backoff, not the cluster. The ping's
            # start-up (~10 ms) is counted, so the figure errs on the slow side.
            ping = subprocess.Popen(["ip", "netns", "exec", peer_ns, "ping", "-D", "-n", "-i", "0.002", "-W", "1",
                                     "-w", "5", ip], stdout=subprocess.PIPE, text=True)
            first = None
            assert ping.stdout is not None
            for line in ping.stdout:
                m = re.match(r"\[(\d+\.\d+)\] \d+ bytes from", line)
                if m:
                    first = float(m.group(1))
                    break
            ping.kill()
            ping.wait()
            if first is None:
                raise RuntimeError(f"endpoint {ep['name']} never answered from host B")
            times.append(first - t0)
        after = a.client.get("/v1/info")["cluster"]
        requests = (after["store_requests"] - before["store_requests"]
                    - (after["store_keepalives"] - before["store_keepalives"]))
        for i in range(adds):
            name = env.ns_name(f"{a.tag}-c{i}")
            a.remove_endpoint(name)
        q = statistics.quantiles(times, n=100, method="inclusive")
        return {"adds": adds, "p50_ms": round(statistics.median(times) * 1e3, 1), "p99_ms": round(q[98] * 1e3, 1),
                "max_ms": round(max(times) * 1e3, 1), "api_p50_ms": round(statistics.median(api) * 1e3, 1),
                "etcd_requests_per_add": round(requests / adds, 2)}

    def close(self) -> None:
        for d in self.daemons:
            d.close()
        if self.etcd is not None:
            env.stop(self.etcd)


def _host(ep: dict[str, Any]) -> Host:
    return Host(ep["netns"], ep["mac"], ep["ipv4"].split("/")[0], "")


def measure(seconds: float = 3.0, rounds: int = 3, adds: int = 100) -> dict[str, Any]:
    env.quiet_timeout = 5.0  # a busy shared machine: measure anyway, every variant alike
    cluster, device = BpfnetCluster(), BpfnetCluster("device")
    env.on_cleanup(cluster.close)
    env.on_cleanup(device.close)
    variants = [routed(), docker(), cluster.start(), device.start()]
    samples: dict[str, dict[str, list[float]]] = {v.name: {} for v in variants}
    for rnd in range(rounds):
        for v in variants if rnd % 2 == 0 else list(reversed(variants)):
            s = samples[v.name]
            s.setdefault("udp_pps", []).append(traffic.packet_rate(v.pair, 4, seconds))
            s.setdefault("tcp_bps", []).append(traffic.tcp_throughput(v.pair, 4, seconds))
            lat = traffic.latency(v.pair, 4, max(1, int(seconds)))
            s.setdefault("rr_p50_us", []).append(lat.p50_us)
            s.setdefault("rr_p99_us", []).append(lat.p99_us)
            log.info("round %d %s: %s", rnd, v.name, {k: round(x[-1], 1) for k, x in s.items()})
    a = cluster.daemons[0]
    stats = {e["name"]: e["counters"] for e in a.client.get("/v1/stats")["endpoints"]}
    sender = stats[variants[2].pair.sender.ns]
    tunnel_a = a.client.get("/v1/stats")["tunnel"]
    tunnel_b = cluster.daemons[1].client.get("/v1/stats")["tunnel"]
    out: dict[str, Any] = {"seconds": seconds, "rounds": rounds, "machine": env.machine(),
                           "bpfnet_sender_paths": {k: sender[k] for k in ("tx_tunnel_packets", "tx_fast_packets",
                                                                          "tx_kernel_packets")},
                           "bpfnet_native": {"encapsulated_on_a": tunnel_a["tx_native"],
                                             "decapsulated_on_b": tunnel_b["rx_native"],
                                             "delivered_on_b": tunnel_b["rx_packets"]}}
    for name, by in samples.items():
        out[name] = {k: {"median": round(statistics.median(x), 1), "runs": [round(y, 1) for y in x]}
                     for k, x in by.items()}
    med = {v: {k: out[v][k]["median"] for k in out[v]} for v in samples}
    out["ratios_bpfnet_over_docker"] = {k: round(med["bpfnet"][k] / med["docker"][k], 3) for k in med["docker"]}
    out["ratios_over_routed"] = {v: {k: round(med[v][k] / med["routed"][k], 3) for k in med[v]}
                                 for v in ("docker", "bpfnet", "bpfnet_device")}
    out["ratios_native_over_device"] = {k: round(med["bpfnet"][k] / med["bpfnet_device"][k], 3)
                                        for k in med["bpfnet"]}
    out["convergence"] = cluster.convergence(variants[2].pair.receiver.ns, adds)
    return out


LABELS = {"udp_pps": ("UDP/IPv4 64 B, packets/s", 1e3, "k"), "tcp_bps": ("TCP/IPv4, Gbit/s", 1e9, ""),
          "rr_p50_us": ("UDP request/response p50, µs", 1, ""), "rr_p99_us": ("UDP request/response p99, µs", 1, "")}


def markdown(doc: dict[str, Any]) -> list[str]:
    """The "Across hosts" section of RESULTS.md (report.py appends it when overlay.json exists)."""
    ratio, over = doc["ratios_bpfnet_over_docker"], doc["ratios_over_routed"]
    device = "bpfnet_device" in doc  # runs before the native encapsulation had one variant less
    rows = []
    for key, (label, scale, unit) in LABELS.items():
        r, d, b = (doc[v][key]["median"] / scale for v in ("routed", "docker", "bpfnet"))
        dev = (f" {doc['bpfnet_device'][key]['median'] / scale:.1f}{unit} "
               f"({over['bpfnet_device'][key]:.2f}x) |") if device else ""
        rows.append(f"| {label} | {r:.1f}{unit} | {d:.1f}{unit} ({over['docker'][key]:.2f}x) |{dev} "
                    f"{b:.1f}{unit} ({over['bpfnet'][key]:.2f}x) | {ratio[key]:.2f}x |")
    c, m = doc["convergence"], doc["machine"]
    head = ("| metric | routed | Docker's overlay (/ routed) |"
            + (" bpfnet, device encap (/ routed) |" if device else "")
            + " bpfnet overlay (/ routed) | bpfnet / Docker |")
    lines = ["## Across hosts (`python -m bench.overlay`)", "",
             ("Two hosts (namespaces) on a veth underlay, one endpoint on each: plain routing (the limit), "
              "Docker's overlay (kernel VXLAN on a bridge, static FDB and neighbour entries as libnetwork "
              "programs them) and bpfnet's overlay (etcd, two daemons, eBPF tunnel path"
              + (", the programs writing and stripping the VXLAN headers themselves; and once more with "
                 "`--overlay-encap device`, the kernel's VXLAN device doing it" if device else "")
              + f"). Medians of {doc['rounds']} interleaved rounds of {doc['seconds']:.0f} s; load average at "
              f"start {m.get('loadavg_at_start')}."), "",
             head, "| --- " * (head.count("|") - 1) + "|", *rows, "",
             f"The bpfnet sender's counters over the run: {doc['bpfnet_sender_paths']} (the tunnel path carried it)."
             + (" Native encapsulation: {encapsulated_on_a} packets encapsulated by host A's programs, "
                "{decapsulated_on_b} of the {delivered_on_b} delivered on host B decapsulated by its "
                "programs.".format(**doc["bpfnet_native"]) if "bpfnet_native" in doc else ""),
             ""]
    if device:
        nd = doc["ratios_native_over_device"]
        lines += [("Native over device encapsulation (same daemons, same programs otherwise): "
                   + ", ".join(f"{LABELS[k][0]} {v:.2f}x" for k, v in nd.items()) + "."), ""]
    lines += [(f"Convergence (endpoint add on host A until a ping from host B is answered, {c['adds']} adds): "
               f"p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms, max {c['max_ms']} ms, of which the add itself "
               f"(API call on A, p50) {c.get('api_p50_ms')} ms and the rest the watch event reaching B, B's "
               f"datapath update and the first echo (a ping every 2 ms started when the add returned); etcd load "
               f"{c['etcd_requests_per_add']} requests per add from the adding daemon (read the cluster's "
               "leases, one transaction for the leases and the record), plus one watch event to every node."), ""]
    goal_rate = ratio["udp_pps"] >= 1.3
    lines += [(f"Goals: packet rate ≥ 1.3x Docker's overlay: **{'met' if goal_rate else 'missed'}** "
               f"({ratio['udp_pps']:.2f}x); convergence p99 under 1 s: "
               f"**{'met' if c['p99_ms'] < 1000 else 'missed'}** ({c['p99_ms']} ms)."), ""]
    for note in doc.get("notes", []):
        lines += [note, ""]
    return lines


def main(argv: list[str]) -> int:
    """[SECONDS [ROUNDS [ADDS]]] [--write]: --write keeps the figures in bench/overlay.json and renders
    RESULTS.md again from bench/results.json with them."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    write = "--write" in argv
    args = [a for a in argv if a != "--write"]
    seconds = float(args[0]) if args else 3.0
    rounds = int(args[1]) if len(args) > 1 else 3
    adds = int(args[2]) if len(args) > 2 else 100
    env.measure_and_keep(lambda: measure(seconds, rounds, adds), OUT_JSON, write)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
