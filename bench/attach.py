"""tcx links vs clsact + cls_bpf filters: endpoint-add time and packet rate.

Boundary: ``python -m bench.attach [--write] [N [ROUNDS]]``, two measurements, JSON on
stdout (and with ``--write`` in bench/attach.json, which bench/RESULTS.md includes):

- ``datapath``: a throwaway namespace with a bridge and N veth pairs; bpfnet's
  ``EbpfDatapath`` is started once per attach mechanism (pins under
  /sys/fs/bpf, removed afterwards) and N ``add_endpoint`` and N
  ``remove_endpoint`` calls are timed (map entries + attaching or detaching
  both programs: the datapath's share of ``POST``/``DELETE /v1/endpoints``).
- ``pps``: two ``bpfnet daemon --datapath redirect-peer`` (``bench.topology``),
  one with ``--datapath-attach tcx``, one with ``tc``, each with a pair of
  endpoints; the packet rate between them (``bench.traffic.packet_rate``,
  64-byte UDP/IPv4, everything on CPU 0) is measured ROUNDS times,
  alternating, so drift hits both alike. The programs' own per-packet cost
  does not depend on the hook (``progrun.py``); what differs is the hook's
  dispatch (the tcx fast path vs the clsact qdisc and cls_bpf classifier).
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
import uuid
from ipaddress import IPv4Address
from typing import Any

from bpfnet.datapath import bpffs

log = logging.getLogger(__name__)


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    return {"median_ms": round(statistics.median(ms), 3), "mean_ms": round(statistics.fmean(ms), 3),
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3), "n": len(ms)}


def measure(n: int = 100) -> dict[str, Any]:
    from bpfnet.datapath.ebpf import EbpfDatapath
    from bpfnet.model import EndpointSpec, NetworkSpec
    from pyroute2 import IPRoute
    from pyroute2 import netns as pnetns

    ns = f"bpfnet-bench-{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"endpoints": n}
    pnetns.create(ns)
    pnetns.pushns(ns)  # this thread only; popped before the namespace goes
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            net = NetworkSpec(name="br0", id=1, bridge="br0", bridge_ifindex=br,
                              bridge_mac=ipr.get_links(br)[0].get_attr("IFLA_ADDRESS"),
                              gateway4=IPv4Address("10.9.0.1"))
            eps = []
            for i in range(n):
                ipr.link("add", ifname=f"h{i}", kind="veth", peer=f"p{i}")
                idx = ipr.link_lookup(ifname=f"h{i}")[0]
                eps.append(EndpointSpec(name=f"e{i}", id=i + 1, network="br0", network_id=1,
                                        host_ifname=f"h{i}", host_ifindex=idx,
                                        mac=f"02:42:0a:09:{(i + 2) >> 8:02x}:{(i + 2) & 0xFF:02x}",
                                        ipv4=IPv4Address(f"10.9.{(i + 2) >> 8}.{(i + 2) & 0xFF}")))
        for attach in ("tcx", "tc"):
            pins = f"/sys/fs/bpf/bpfnet-bench-{uuid.uuid4().hex[:8]}"
            dp = EbpfDatapath(mode="redirect-peer", pin_dir=pins, attach=attach)
            try:
                dp.start([net], [])
                adds: list[float] = []
                removes: list[float] = []
                for rnd in range(2):  # the first round warms caches; the second is reported
                    adds, removes = [], []
                    for ep in eps:
                        t0 = time.perf_counter()
                        dp.add_endpoint(ep)
                        adds.append(time.perf_counter() - t0)
                    for ep in eps:
                        t0 = time.perf_counter()
                        dp.remove_endpoint(ep)
                        removes.append(time.perf_counter() - t0)
                    log.debug("%s round %d done", attach, rnd)
                out[attach] = {"add": _stats(adds), "remove": _stats(removes)}
            finally:
                dp.cleanup()
    finally:
        pnetns.popns()
        pnetns.remove(ns)
    return out


def packet_rates(rounds: int = 3, seconds: float = 2.0) -> dict[str, Any]:
    from . import env, traffic
    from .topology import BpfnetDaemon

    pairs = {}
    for i, attach in enumerate(("tcx", "tc")):
        d = BpfnetDaemon(f"at{attach}", "redirect-peer", f"fd00:b0:a{i}::/64",
                         extra=("--datapath-attach", attach))
        d.start()
        got = d.info.get("datapath", {}).get("attach")
        if d.mode != "redirect-peer" or got != attach:
            raise RuntimeError(f"daemon for {attach} runs {d.mode} attached with {got}")
        pairs[attach] = d.pair(f"redirect-peer/{attach}")
    rates: dict[str, list[float]] = {a: [] for a in pairs}
    for _ in range(rounds):
        for attach, pair in pairs.items():
            rates[attach].append(traffic.packet_rate(pair, 4, seconds))
    env.cleanup()
    out: dict[str, Any] = {a: {"best_pps": round(max(r)), "median_pps": round(statistics.median(r)),
                               "runs": [round(x) for x in r]} for a, r in rates.items()}
    out["tcx_over_tc_best"] = round(out["tcx"]["best_pps"] / out["tc"]["best_pps"], 3)
    return out


OUT_JSON = "attach.json"


def markdown(doc: dict[str, Any]) -> list[str]:
    """The RESULTS.md section for a document written by ``--write``."""
    dp, pps = doc["datapath"], doc["pps"]
    rows = []
    for what in ("add", "remove"):
        tcx, tc = dp["tcx"][what], dp["tc"][what]
        rows.append(f"| endpoint {what} (datapath part), median ms | {tcx['median_ms']} | {tc['median_ms']} | "
                    f"{tcx['median_ms'] / tc['median_ms']:.2f}x |")
        rows.append(f"| endpoint {what}, p95 ms | {tcx['p95_ms']} | {tc['p95_ms']} | "
                    f"{tcx['p95_ms'] / tc['p95_ms']:.2f}x |")
    rows.append(f"| packets/s between two endpoints (64 B UDP/IPv4, best of {len(pps['tcx']['runs'])}) | "
                f"{pps['tcx']['best_pps'] / 1e3:.1f}k | {pps['tc']['best_pps'] / 1e3:.1f}k | "
                f"{pps['tcx_over_tc_best']:.3f}x |")
    return ["## tcx vs cls_bpf (`python -m bench.attach --write`)", "",
            (f"On this machine (kernel {doc.get('kernel', '?')}), one run, {dp['endpoints']} endpoints added and "
            "removed through bpfnet's `EbpfDatapath` (map entries plus attaching or detaching its programs), "
            "and two daemons (`--datapath-attach tcx` / `tc`, redirect-peer) measured in alternating rounds. "
            "In tcx mode `ep_ingress` and `bridge_egress` are tcx links and `ep_egress` a cls_bpf filter "
            "(one RCU grace period per endpoint add instead of two; README \"Attach mechanism\"). "
             f"Load average at start {doc.get('load_at_start', '?')} on 2 cores (a shared machine: "
             "single figures vary by 2x; the grace period is wall-clock time)."), "",
            "| metric | tcx | cls_bpf | tcx / cls_bpf |", "| --- | --- | --- | --- |", *rows, ""]


def main(argv: list[str]) -> int:
    import os

    from . import env

    write = "--write" in argv
    argv = [a for a in argv if a != "--write"]
    logging.basicConfig(level=logging.WARNING)
    n = int(argv[0]) if argv else 100
    rounds = int(argv[1]) if len(argv) > 1 else 3
    env.install_handlers()
    env.sweep_dead_runs()
    try:
        # unmounted again afterwards if this run mounted it (its kernel-made entries otherwise stay)
        with bpffs.mounted():
            load = [round(x, 2) for x in os.getloadavg()]
            doc = {"kernel": os.uname().release, "load_at_start": load, "datapath": measure(n),
                   "pps": packet_rates(rounds)}
            print(json.dumps(doc, indent=2))
            if write:
                with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), OUT_JSON), "w",
                          encoding="utf-8") as f:
                    json.dump(doc, f, indent=2)
    finally:
        env.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
