"""Scale: endpoint churn, daemon memory, scrape time, and fast-path rate at N endpoints.

Boundary: one ``BpfnetDaemon`` (the best eBPF mode available) is grown one
endpoint at a time through the API up to the largest level, then shrunk back
(A B C B A), so drift over the run cancels out. At each level it records the
daemon's RSS, the time of ``GET /metrics`` and ``GET /v1/stats`` (several
scrapes), and the packet rate between the first two endpoints. Every add and
remove is timed from the client (HTTP over the unix socket: what a user of
the API waits for). ``profile()`` repeats a smaller churn under cProfile.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import pstats
import statistics
import time
import urllib.parse
from dataclasses import dataclass
from io import StringIO
from typing import Any

from . import env, kprofile, traffic
from .topology import BpfnetDaemon, Host, Pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScalePlan:
    levels: tuple[int, ...]  # endpoint counts visited (up, then down)
    pps_at: tuple[int, ...]
    scrape_at: tuple[int, ...]
    scrapes: int
    pps_seconds: float
    profile_endpoints: int  # 0: no profile pass
    window: int = 0  # endpoints added and removed under cProfile at the top level (0: none)
    perf_seconds: float = 0.0  # perf pass at the lowest and highest level (0: none)
    probe_limit: int = 0  # at the top level, try this many more adds to find the per-network limit


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def _timed_get(url: str) -> tuple[float, int]:
    """Seconds for one GET (connect to last byte) and the body size."""
    u = urllib.parse.urlsplit(url)
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=30)
    try:
        conn.request("GET", u.path or "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {resp.status}")
    finally:
        conn.close()
    return time.perf_counter() - t0, len(body)


def _timed_stats(d: BpfnetDaemon) -> float:
    t0 = time.perf_counter()
    d.client.get("/v1/stats")
    return time.perf_counter() - t0


def measure(requested: str, plan: ScalePlan) -> dict[str, Any]:
    """Grow and shrink one daemon; see the module docstring."""
    d = BpfnetDaemon("sc", requested, "fd00:b0:5::/64", profile=bool(plan.window))
    d.start()
    try:
        out = _measure(d, plan)
    finally:
        d.close()  # SIGTERM: the shim dumps the window's profiles
    if plan.window:
        out["window_profile"] = read_profiles(str(d.profile_prefix), {
            "add": plan.window, "remove": plan.window, "scrape": plan.scrapes})
    return out


def _probe_limit(d: BpfnetDaemon, extra: int) -> dict[str, Any]:
    """Add up to ``extra`` more endpoints (untimed) until one fails; remove them again.
    A Linux bridge has 1023 ports, so the 1024th endpoint of a network should fail."""
    from bpfnet.client import ClientError

    first = len(d.endpoints)
    result: dict[str, Any] = {"tried_up_to": first + extra, "failed_at": None, "error": None}
    try:
        for i in range(extra):
            try:
                d.add_endpoint(d.endpoint_name(first + i))
            except ClientError as exc:
                result.update(failed_at=first + i + 1, error=str(exc), status=exc.status)
                break
    finally:
        while len(d.endpoints) > first:
            d.remove_endpoint(d.endpoints[-1])
    log.info("limit probe: %s", result)
    return result


def _window(d: BpfnetDaemon, plan: ScalePlan, url: str | None) -> dict[str, Any]:
    """With the last plan.window endpoints removed beforehand: add that many, scrape, and
    remove them again, all under cProfile (not timed). Staying at or below the top level
    matters: a Linux bridge takes at most 1023 ports (``add`` then fails with EXFULL)."""
    first = len(d.endpoints)
    d.profile_gate.touch()
    try:
        for i in range(plan.window):
            d.add_endpoint(d.endpoint_name(first + i))
        for _ in range(plan.scrapes if url else 0):
            _timed_get(str(url))
        while len(d.endpoints) > first:
            d.remove_endpoint(d.endpoints[-1])
    finally:
        d.profile_gate.unlink(missing_ok=True)
    return {"from": first + 1, "to": first + plan.window}


def _measure(d: BpfnetDaemon, plan: ScalePlan) -> dict[str, Any]:
    out: dict[str, Any] = {"requested": d.requested, "mode": d.mode, "rss_bytes": {"0": d.rss_bytes()},
                           "scrape": {}, "pps": {}}
    metrics_url = d.info.get("metrics_url")
    add_s: list[float] = []
    rm_s: list[float] = []
    add_at: list[int] = []  # endpoint count after each add / before each remove
    rm_at: list[int] = []
    pps: dict[int, list[float]] = {}
    hosts: list[Host] = []

    def at_level(n: int) -> None:
        out["rss_bytes"][str(n)] = max(out["rss_bytes"].get(str(n), 0), d.rss_bytes())
        if n in plan.pps_at:
            # removing hundreds of endpoints leaves the kernel destroying their namespaces
            # in the background for a while; packet_rate waits for CPU 0 to be quiet
            pair = Pair("scale", hosts[0], hosts[1])
            out.setdefault("quiet_wait_s", {}).setdefault(str(n), []).append(round(env.wait_quiet(), 2))
            pps.setdefault(n, []).append(traffic.packet_rate(pair, 4, plan.pps_seconds))
        if n in plan.scrape_at and str(n) not in out["scrape"]:
            entry: dict[str, Any] = {}
            if metrics_url:
                times, size = [], 0
                for _ in range(plan.scrapes):
                    t, size = _timed_get(metrics_url)
                    times.append(t)
                entry["metrics_ms"] = {"p50": statistics.median(times) * 1e3, "max": max(times) * 1e3,
                                       "bytes": size}
            st = [_timed_stats(d) for _ in range(plan.scrapes)]
            entry["stats_ms"] = {"p50": statistics.median(st) * 1e3, "max": max(st) * 1e3}
            out["scrape"][str(n)] = entry
        log.info("scale: %d endpoints, rss %.1f MiB", n, d.rss_bytes() / 2**20)

    top, low = max(plan.levels), min(plan.levels)
    perf: list[dict[str, Any]] = []
    perf_why = kprofile.available() if plan.perf_seconds else "not planned"

    def perf_at(n: int) -> None:
        if perf_why is None:
            perf.append(kprofile.profile_pair(Pair(f"{n} endpoints", hosts[0], hosts[1]), 4,
                                              plan.perf_seconds))

    def grow_to(n: int) -> None:
        while len(d.endpoints) < n:
            name = d.endpoint_name(len(d.endpoints))
            t0 = time.perf_counter()
            host = d.add_endpoint(name)
            add_s.append(time.perf_counter() - t0)
            add_at.append(len(d.endpoints))
            if len(hosts) < 2:
                hosts.append(host)

    def shrink_to(n: int) -> None:
        while len(d.endpoints) > n:
            name = d.endpoints[-1]
            t0 = time.perf_counter()
            d.remove_endpoint(name)
            rm_s.append(time.perf_counter() - t0)
            rm_at.append(len(d.endpoints) + 1)

    for level in sorted(plan.levels):
        grow_to(level)
        at_level(level)
        if level in (low, top):
            perf_at(level)
        if level == top:
            if plan.window:
                shrink_to(top - plan.window)  # timed removes, like any other
                out["window"] = _window(d, plan, metrics_url)
                grow_to(top)  # timed adds (not part of the create-all time)
            at_level(level)  # the top level measured twice too, after the passes above
            if plan.probe_limit:
                out["limit_probe"] = _probe_limit(d, plan.probe_limit)
    for level in sorted(plan.levels, reverse=True)[1:]:
        shrink_to(level)
        at_level(level)
    out["endpoints_max"] = top
    out["create_all_s"] = sum(add_s[:top])
    out["add_ms"] = _dist(add_s)
    out["rm_ms"] = _dist(rm_s)
    out["add_ms_by_size"] = _by_size(add_s, add_at, plan.levels)
    out["rm_ms_by_size"] = _by_size(rm_s, rm_at, plan.levels)
    out["pps"] = {str(n): {"median": statistics.median(v), "runs": v} for n, v in sorted(pps.items())}
    if perf:
        out["kprofile"] = {"seconds": plan.perf_seconds, "profiles": perf,
                           "compare": kprofile.compare(perf, focus=f"{top} endpoints", base=f"{low} endpoints")}
    elif perf_why != "not planned":
        out["kprofile"] = {"skipped": perf_why}
    return out


def _by_size(samples: list[float], sizes: list[int], levels: tuple[int, ...]) -> dict[str, dict[str, float]]:
    """Distribution per band of endpoint counts (lo, hi] between consecutive levels."""
    bounds = [0, *sorted(levels)]
    out = {}
    for lo, hi in itertools.pairwise(bounds):
        band = [s for s, n in zip(samples, sizes) if lo < n <= hi]
        if band:
            out[f"{lo + 1}-{hi}"] = _dist(band)
    return out


def _dist(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ms = [s * 1e3 for s in samples]
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99), "max": max(ms),
            "mean": statistics.fmean(ms)}


def profile(requested: str, n: int, top: int = 80) -> dict[str, Any]:
    """cProfile of n endpoint adds, 5 scrapes of /metrics at n endpoints, and n removes
    in a fresh daemon (not timed): top functions per operation."""
    d = BpfnetDaemon("pf", requested, "fd00:b0:6::/64", profile=True)
    d.start()
    scrapes = 5
    try:
        d.profile_gate.touch()
        names = [d.endpoint_name(i) for i in range(n)]
        t0 = time.perf_counter()
        for name in names:
            d.add_endpoint(name)
        add_wall = time.perf_counter() - t0
        url = d.info.get("metrics_url")
        for _ in range(scrapes):
            if url:
                _timed_get(str(url))
        t0 = time.perf_counter()
        for name in names:
            d.remove_endpoint(name)
        rm_wall = time.perf_counter() - t0
    finally:
        d.close()  # SIGTERM: the shim dumps the profiles
    out: dict[str, Any] = {"mode": d.mode, "endpoints": n, "add_wall_s": add_wall, "rm_wall_s": rm_wall}
    out.update(read_profiles(str(d.profile_prefix), {"add": n, "remove": n, "scrape": scrapes}, top))
    return out


def read_profiles(prefix: str, ops: dict[str, int], top: int = 80) -> dict[str, Any]:
    """PREFIX.<what> pstats files as top-function tables, per operation."""
    out: dict[str, Any] = {}
    for what, n in ops.items():
        path = f"{prefix}.{what}"
        try:
            stats = pstats.Stats(path)
        except (OSError, TypeError, EOFError):
            out[what] = {"error": f"no profile in {path}"}
            continue
        rows = []
        for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
            rows.append({"function": f"{_short(file)}:{line}({func})", "calls_per_op": nc / n,
                         "tottime_ms_per_op": tt * 1e3 / n, "cumtime_ms_per_op": ct * 1e3 / n})
        text = StringIO()
        pstats.Stats(path, stream=text).sort_stats("cumulative").print_stats(40)
        out[what] = {"by_cumtime": sorted(rows, key=lambda r: -r["cumtime_ms_per_op"])[:top],
                     "by_tottime": sorted(rows, key=lambda r: -r["tottime_ms_per_op"])[:top],
                     "pstats_text": text.getvalue()}
    return out


def _short(path: str) -> str:
    for marker in ("/controller/", "/site-packages/", "/dist-packages/", "/lib/python3"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path
