"""The plan (full or quick), interleaved rounds, medians and ratios.

Boundary: builds every variant once (``bench.topology``), runs the traffic
measurements round-robin over the variants (A B C A B C ...) for
``plan.rounds`` rounds, so slow drift of the machine hits every variant
alike, then an untimed perf pass over the same pairs (``bench.kprofile``),
then tears the variants down and runs scale and program-cost measurements. Returns one JSON-able document; writing it is ``bench.report``.
A measurement that fails is recorded under ``errors`` and the run goes on.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import env, kprofile, progrun, scale, traffic
from .topology import BarePeer, BpfnetDaemon, DirectPair, Pair

log = logging.getLogger(__name__)

VARIANTS = ("direct", "bare-peer", "bridge", "redirect-peer", "redirect")
EBPF_MODES = ("redirect-peer", "redirect")
MEASUREMENTS = ("pps", "tcp", "latency", "perf", "scale", "progrun")
V6_PREFIX = {"bridge": "fd00:b0:1::/64", "redirect-peer": "fd00:b0:2::/64", "redirect": "fd00:b0:3::/64"}
TAGS = {"bridge": "br", "redirect-peer": "rp", "redirect": "rd"}

# metric name -> (measurement, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "udp4_pps": ("pps", "packets/s", True),
    "udp6_pps": ("pps", "packets/s", True),
    "tcp4_gbps": ("tcp", "Gbit/s", True),
    "tcp6_gbps": ("tcp", "Gbit/s", True),
    "rr4_p50_us": ("latency", "µs", False),
    "rr4_p99_us": ("latency", "µs", False),
}


@dataclass(frozen=True)
class Plan:
    quick: bool
    rounds: int
    pps_seconds: float
    pps_warmup: float
    tcp_seconds: int
    tcp_omit: int
    latency_seconds: int
    scale: scale.ScalePlan
    progrun_repeat: int
    perf_seconds: float
    quiet_timeout: float = 20.0  # most seconds to wait for CPU 0 to go quiet before a measurement
    measurements: tuple[str, ...] = MEASUREMENTS
    variants: tuple[str, ...] = VARIANTS
    notes: list[str] = field(default_factory=list)


def make_plan(quick: bool, only: list[str] | None = None) -> Plan:
    """Full (``make bench``, ~10 min on 2 cores) or quick (CI smoke, seconds) plan.

    only: measurement names (pps tcp latency perf scale progrun) and/or variant
    names (direct bridge redirect-peer redirect); each group not named stays whole.
    """
    only = only or []
    unknown = [n for n in only if n not in MEASUREMENTS and n not in VARIANTS]
    if unknown:
        raise ValueError(f"--only: unknown name(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MEASUREMENTS + VARIANTS)}")
    ms = tuple(m for m in MEASUREMENTS if m in only) or MEASUREMENTS
    if quick and not any(m in only for m in MEASUREMENTS):
        ms = tuple(m for m in ms if m != "perf")  # the scale run's perf pass still covers kprofile
    vs = tuple(v for v in VARIANTS if v in only) or VARIANTS
    if quick:
        return Plan(True, rounds=1, pps_seconds=0.3, pps_warmup=0.2, tcp_seconds=1, tcp_omit=0,
                    latency_seconds=1,
                    scale=scale.ScalePlan(levels=(2, 10), pps_at=(2, 10), scrape_at=(2, 10), scrapes=2,
                                          pps_seconds=0.3, profile_endpoints=0, window=3,
                                          perf_seconds=0.3),
                    progrun_repeat=10_000, perf_seconds=0.3, quiet_timeout=2.0, measurements=ms,
                    variants=vs)
    return Plan(False, rounds=4, pps_seconds=2.0, pps_warmup=0.5, tcp_seconds=2, tcp_omit=1,
                latency_seconds=2,
                scale=scale.ScalePlan(levels=(2, 10, 100, 1000), pps_at=(2, 100, 1000),
                                      scrape_at=(10, 100, 1000), scrapes=5, pps_seconds=2.0,
                                      profile_endpoints=100, window=50, perf_seconds=3.0,
                                      probe_limit=30),
                progrun_repeat=1_000_000, perf_seconds=3.0, measurements=ms, variants=vs)


def _probe_mode() -> str:
    try:
        from bpfnet.datapath.probe import probe_mode

        return str(probe_mode())
    except Exception as exc:  # noqa: BLE001 -- report, do not die: bridge-only kernels still bench
        log.warning("datapath probe failed: %s", exc)
        return "bridge"


def _build(plan: Plan, doc: dict[str, Any]) -> dict[str, Pair]:
    pairs: dict[str, Pair] = {}
    for v in plan.variants:
        t0 = time.monotonic()
        try:
            if v == "direct":
                pairs[v] = DirectPair().start()
                doc["variants"][v] = {"available": True, "what": "one veth pair between two namespaces"}
                continue
            if v == "bare-peer":
                if doc["kernel_best_mode"] != "redirect-peer":
                    doc["variants"][v] = {"available": False, "reason": "kernel has no bpf_redirect_peer"}
                    continue
                pairs[v] = BarePeer().start()
                doc["variants"][v] = {"available": True, "what": "bare bpf_redirect_peer program, no maps"}
                continue
            d = BpfnetDaemon(TAGS[v], v, V6_PREFIX[v])
            d.start()
            if d.mode != v:
                d.close()
                doc["variants"][v] = {"available": False,
                                      "reason": f"daemon started with --datapath {v} reports mode {d.mode}"}
                continue
            pairs[v] = d.pair(v)
            doc["variants"][v] = {"available": True, "what": f"bpfnet daemon --datapath {v}",
                                  "datapath": d.info.get("datapath", {}), "start_s": time.monotonic() - t0}
        except Exception as exc:
            log.exception("variant %s could not be built", v)
            doc["variants"][v] = {"available": False, "reason": f"{type(exc).__name__}: {exc}"}
    return pairs


def _traffic_steps(plan: Plan) -> list[tuple[str, Callable[[Pair], dict[str, float]]]]:
    steps: list[tuple[str, Callable[[Pair], dict[str, float]]]] = []
    if "pps" in plan.measurements:
        for fam in (4, 6):
            steps.append((f"udp{fam}", lambda p, f=fam: {  # type: ignore[misc]
                f"udp{f}_pps": traffic.packet_rate(p, f, plan.pps_seconds, plan.pps_warmup)}))
    if "tcp" in plan.measurements:
        for fam in (4,) if plan.quick else (4, 6):  # the smoke run keeps to its time budget
            steps.append((f"tcp{fam}", lambda p, f=fam: {  # type: ignore[misc]
                f"tcp{f}_gbps": traffic.tcp_throughput(p, f, plan.tcp_seconds, plan.tcp_omit) / 1e9}))
    if "latency" in plan.measurements:
        def rr(p: Pair) -> dict[str, float]:
            lat = traffic.latency(p, 4, plan.latency_seconds)
            return {"rr4_p50_us": lat.p50_us, "rr4_p99_us": lat.p99_us}
        steps.append(("rr4", rr))
    return steps


def run(plan: Plan) -> dict[str, Any]:
    """Run the plan; the returned document is what RESULTS.md/JSON/PNG are made from."""
    started = time.monotonic()
    env.quiet_timeout = plan.quiet_timeout
    doc: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": env.machine(),
        "plan": {k: v for k, v in asdict(plan).items() if k != "notes"},
        "kernel_best_mode": _probe_mode(),
        "variants": {}, "samples": {}, "medians": {}, "errors": [],
    }
    if plan.quick and plan.variants == VARIANTS:
        # smoke run: one eBPF variant (the kernel's best) is enough to keep the harness honest
        keep = doc["kernel_best_mode"]
        plan = replace(plan, variants=tuple(v for v in VARIANTS if v not in EBPF_MODES or v == keep))
        doc["plan"]["variants"] = list(plan.variants)
    steps = _traffic_steps(plan)
    if steps or "perf" in plan.measurements:
        pairs = _build(plan, doc)
        samples: dict[str, dict[str, list[float]]] = {m: {v: [] for v in pairs} for m in METRICS}
        for r in range(plan.rounds):
            log.info("round %d/%d", r + 1, plan.rounds)
            for name, step in steps:
                for v, pair in pairs.items():  # A B C, A B C, ...
                    try:
                        for metric, value in step(pair).items():
                            samples[metric][v].append(value)
                    except Exception as exc:  # noqa: BLE001 -- recorded; the run goes on
                        log.warning("%s on %s failed: %s", name, v, exc)
                        doc["errors"].append(f"round {r + 1} {name} {v}: {type(exc).__name__}: {exc}")
        doc["samples"] = {m: s for m, s in samples.items() if any(s.values())}
        doc["medians"] = {m: {v: statistics.median(x) for v, x in s.items() if x}
                          for m, s in doc["samples"].items()}
        if "perf" in plan.measurements:
            try:
                doc["kprofile"] = kprofile.run(pairs, 4, plan.perf_seconds)
            except Exception as exc:
                log.exception("perf profile failed")
                doc["errors"].append(f"perf: {type(exc).__name__}: {exc}")
        env.cleanup()  # all traffic variants down before the scale run
    doc["ratios"] = ratios(doc["medians"])
    kernel = doc["kernel_best_mode"]
    best = kernel if kernel in EBPF_MODES else "bridge"
    doc["scale_mode"] = best
    if "scale" in plan.measurements:
        try:
            doc["scale"] = scale.measure(best, plan.scale)
        except Exception as exc:
            log.exception("scale failed")
            doc["errors"].append(f"scale: {type(exc).__name__}: {exc}")
        finally:
            env.cleanup()
        if plan.scale.profile_endpoints:
            try:
                doc["profile"] = scale.profile(best, plan.scale.profile_endpoints)
            except Exception as exc:
                log.exception("profile failed")
                doc["errors"].append(f"profile: {type(exc).__name__}: {exc}")
            finally:
                env.cleanup()
    if "progrun" in plan.measurements:
        # redirect-peer kernels also run plain redirect
        modes = list(EBPF_MODES[EBPF_MODES.index(kernel):]) if kernel in EBPF_MODES else []
        if plan.quick:
            modes = modes[:1]
        try:
            doc["progrun"] = progrun.measure(modes, plan.progrun_repeat) if modes else {}
        except Exception as exc:
            log.exception("progrun failed")
            doc["errors"].append(f"progrun: {type(exc).__name__}: {exc}")
        finally:
            env.cleanup()
    doc["elapsed_s"] = time.monotonic() - started
    doc["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return doc


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per metric and variant: median / direct's and median / bridge's."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, per in medians.items():
        out[metric] = {}
        for v, value in per.items():
            r: dict[str, float] = {}
            for ref in ("direct", "bridge", "bare-peer"):
                if per.get(ref):
                    r[f"vs_{ref}"] = value / per[ref]
            out[metric][v] = r
    return out
