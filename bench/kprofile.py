"""Where the CPU goes per packet: ``perf`` samples on CPU 0 during a packet-rate run.

Boundary: an optional, untimed pass (its packet rates are not reported as
results). For each pair it runs the UDP generator as ``traffic.packet_rate``
does, samples CPU 0 with ``perf record -e cpu-clock -C 0`` (a software
clock: works in guests without a PMU), and turns each kernel symbol's share
of the samples into ns per delivered packet (share x 1e9 / rate). The
difference between variants, symbol by symbol, is where a slower datapath
spends its extra time. Skipped (with a reason) when ``perf`` is missing or
cannot sample.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from . import env, traffic
from .topology import Pair

log = logging.getLogger(__name__)
# vagrant/run-kernel sets this under emulation (TCG): perf's start-up (it reads every
# process's maps and the kernel's symbols) and its report take minutes there, not seconds.
SLOW = float(os.environ.get("BPFNET_TEST_SLOWDOWN", "1"))
_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[([k.])\]\s+(.+?)\s*$")


def available() -> str | None:
    """None when perf can sample CPU 0, else why not."""
    if shutil.which("perf") is None:
        return "perf is not installed"
    try:
        r = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-C", "0", "-o", "/dev/null", "--",
                            "sleep", "0.05"], capture_output=True, text=True, check=False, timeout=30 * SLOW)
    except subprocess.TimeoutExpired:
        return f"perf record of 0.05 s did not finish within {30 * SLOW:.0f} s"
    if r.returncode != 0:
        return f"perf record failed: {r.stderr.strip()[-200:]}"
    return None


def profile_pair(pair: Pair, family: int, seconds: float, top: int = 80,
                 comms: tuple[str, ...] = ()) -> dict[str, Any]:
    """perf samples of CPU 0 while the generator runs; symbols as ns per delivered packet.
    comms: count only samples of these commands (e.g. the generator and ksoftirqd, whose
    contexts carry the packets through the stack): "path_ns_per_packet" is then what the
    packets' own path costs, whatever else shares the CPU."""
    out_dir = env.tmpdir("perf")
    data = os.path.join(out_dir, f"{pair.variant.replace('/', '_')}-{family}.data")  # netkit.py: veth/redirect-peer
    cfg = os.path.join(out_dir, f"udp{family}.cfg")
    with open(cfg, "w", encoding="ascii") as f:
        f.write(traffic.trafgen_config(pair.sender, pair.receiver, family))
    traffic.udp_delivered(pair.receiver.ns, family)
    env.wait_quiet(traffic.CPU)
    gen = traffic.start_trafgen(pair, cfg)
    try:
        time.sleep(0.5)
        c0, t0 = traffic.udp_delivered(pair.receiver.ns, family), time.monotonic()
        env.run(["perf", "record", "-q", "-e", "cpu-clock", "-C", str(traffic.CPU), "-o", data, "--",
                 "sleep", str(seconds)], timeout=seconds + 60 * SLOW)
        c1, t1 = traffic.udp_delivered(pair.receiver.ns, family), time.monotonic()
    finally:
        env.stop(gen, signal.SIGINT)
    rate = (c1 - c0) / (t1 - t0)
    only = ["--comms", ",".join(comms), "--percentage", "absolute"] if comms else []
    rep = env.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym",
                   "--percent-limit", "0.01" if comms else "0.1", *only], timeout=120 * SLOW)
    symbols: list[dict[str, Any]] = []
    for line in rep.stdout.splitlines():
        m = _LINE.match(line)
        if m:
            pct, dso, _kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
            symbols.append({"symbol": sym, "dso": dso, "pct": pct,
                            "ns_per_packet": pct / 100 * 1e9 / rate if rate else 0.0})
    out = {"variant": pair.variant, "family": family, "rate_pps": rate, "ns_per_packet": 1e9 / rate if rate else 0,
           "symbols": symbols[:top]}
    if comms:
        out["path_ns_per_packet"] = sum(s["ns_per_packet"] for s in symbols)
    return out


def compare(profiles: list[dict[str, Any]], focus: str, base: str = "direct",
            top: int = 18) -> list[dict[str, Any]]:
    """Per symbol: ns/packet in each variant; the rows where focus differs most from base."""
    by = {p["variant"]: {s["symbol"]: s["ns_per_packet"] for s in p["symbols"]} for p in profiles}
    names = sorted({s for per in by.values() for s in per})
    rows = []
    for sym in names:
        row: dict[str, Any] = {"symbol": sym, **{v: per.get(sym, 0.0) for v, per in by.items()}}
        row["extra"] = by.get(focus, {}).get(sym, 0.0) - by.get(base, {}).get(sym, 0.0)
        rows.append(row)
    rows.sort(key=lambda r: -abs(r["extra"]))
    return rows[:top]


def run(pairs: dict[str, Pair], family: int, seconds: float, focus: str = "") -> dict[str, Any]:
    """Profile every pair (one after another), or say why not. focus: the variant compared
    with "direct" (default: the first of redirect-peer, redirect, bridge that ran)."""
    why = available()
    if why:
        return {"skipped": why}
    profiles = []
    for pair in pairs.values():
        try:
            profiles.append(profile_pair(pair, family, seconds))
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            log.warning("perf profile of %s failed: %s", pair.variant, exc)
    variants = [p["variant"] for p in profiles]
    focus = focus or next((v for v in ("redirect-peer", "redirect", "bridge") if v in variants), "")
    return {"family": family, "seconds": seconds, "profiles": profiles, "focus": focus,
            "compare": compare(profiles, focus)}
