"""``python -m bench [--quick] [--out DIR] [--only NAME...]``: run the benchmarks.

Boundary: command line, logging set-up, the root/tool checks, and the
clean-up guarantee (handlers installed before anything is built, clean-up in
``finally``); the work is ``bench.runner`` and ``bench.report``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from typing import Any

from bpfnet.datapath import bpffs

from . import env, report, runner

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = ("ip", "taskset", "setpriv", "trafgen", "iperf3", "sockperf")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-seconds smoke run (what CI runs)")
    p.add_argument("--out", help="output directory (default: bench/ for a full run, bench/out/quick "
                                 "for --quick)")
    p.add_argument("--only", nargs="+", metavar="NAME", default=[],
                   help=f"measurements ({' '.join(runner.MEASUREMENTS)}) and/or variants "
                        f"({' '.join(runner.VARIANTS)}) to run")
    p.add_argument("--from-json", metavar="FILE",
                   help="only re-render RESULTS.md and the chart from an earlier results.json")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("bench")
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            doc = json.load(f)
        paths = report.write(doc, args.out or os.path.dirname(os.path.abspath(args.from_json)))
        _summary(doc, paths)
        return 0
    if os.geteuid() != 0:
        print("python -m bench: must run as root (namespaces, veths, BPF)", file=sys.stderr)
        return 1
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"python -m bench: missing tools: {', '.join(missing)} (run scripts/setup)", file=sys.stderr)
        return 1
    try:
        plan = runner.make_plan(args.quick, args.only)
    except ValueError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    out = args.out or _default_out(args.quick, bool(args.only))
    env.install_handlers()
    env.sweep_dead_runs()
    log.info("run %s: %s plan, measurements %s, variants %s, output %s", env.RUN_ID,
             "quick" if plan.quick else "full", " ".join(plan.measurements), " ".join(plan.variants), out)
    try:
        with bpffs.mounted():
            doc = runner.run(plan)
        paths = report.write(doc, out)
    except KeyboardInterrupt:
        log.warning("interrupted; cleaning up")
        return 130
    finally:
        env.cleanup()
    _summary(doc, paths)
    return 0


def _default_out(quick: bool, partial: bool) -> str:
    """bench/ only for a full run: a quick or partial run must not overwrite its results."""
    if quick:
        return os.path.join(HERE, "out", "quick")
    if partial:
        return os.path.join(HERE, "out", "only")
    return HERE


def _summary(doc: dict[str, Any], paths: dict[str, str]) -> None:
    print(f"\nbpfnet bench ({'quick' if doc['plan']['quick'] else 'full'}) in {doc['elapsed_s']:.0f} s")
    for metric, per in doc.get("medians", {}).items():
        cells = []
        for v, val in per.items():
            r = doc["ratios"][metric][v]
            ratio = f" ({r['vs_bridge']:.2f}x bridge)" if v != "bridge" and "vs_bridge" in r else ""
            cells.append(f"{v} {report._fmt(metric, val)}{ratio}")
        print(f"  {metric:11} " + "; ".join(cells))
    for g in report.goals(doc):
        status = {True: "met", False: "MISSED", None: "n/a"}[g.met]
        print(f"  [{status:6}] {g.goal}: {g.measured}{' — ' + g.note if g.note else ''}")
    if doc.get("errors"):
        print(f"  {len(doc['errors'])} error(s), see RESULTS.md")
    print("  wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    sys.exit(main())
