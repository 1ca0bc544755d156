"""``python -m bench --quick`` runs end to end and writes well-formed output.

Only the shape of the output is checked, never a speed: CI machines vary.
The harness works in namespaces named bpfnet-b<run id>-*; none of this run's may be left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("ip", "taskset", "setpriv", "trafgen", "iperf3", "sockperf")


def _namespaces(prefix: str) -> set[str]:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


def _run_bench(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the harness; on timeout SIGTERM it (its handler cleans up namespaces
    and children) instead of subprocess.run's SIGKILL, which would leave them."""
    cmd = [sys.executable, "-m", "bench", *args]
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            pytest.fail(f"python -m bench {' '.join(args)} took over {timeout:.0f} s "
                        f"(stopped with SIGTERM):\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    out = tmp_path_factory.mktemp("bench")
    r = _run_bench(["--quick", "--out", str(out)], timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    run_id = re.search(r"INFO bench: run ([0-9a-f]+):", r.stderr)
    assert run_id, r.stderr[-2000:]
    # only this run's namespaces: another bench may be running at the same time
    assert not _namespaces(f"bpfnet-b{run_id.group(1)}"), "the bench left namespaces behind"
    return out, r


def test_results_json_is_well_formed(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = quick_run
    doc = json.loads((out / "results.json").read_text())
    assert doc["plan"]["quick"] is True
    for key in ("cpu", "cores", "kernel"):
        assert doc["machine"][key]
    assert doc["variants"]["direct"]["available"]
    assert doc["variants"]["bridge"]["available"]
    for metric in ("udp4_pps", "udp6_pps", "tcp4_gbps", "rr4_p50_us", "rr4_p99_us"):
        per = doc["medians"][metric]
        assert {"direct", "bridge"} <= set(per), metric
        assert all(isinstance(v, float) and v > 0 for v in per.values()), (metric, per)
        assert doc["ratios"][metric]["bridge"]["vs_direct"] > 0
    sc = doc["scale"]
    assert sc["add_ms"]["n"] >= 2 and sc["add_ms"]["p50"] > 0
    assert sc["pps"] and sc["scrape"]
    goals = {g["goal"]: g for g in doc["goals"]}
    assert len(goals) == 7
    assert all(g["met"] in (True, False, None) for g in goals.values())
    if doc["kernel_best_mode"] != "bridge":
        assert doc["progrun"]["modes"]
        for mode in doc["progrun"]["modes"].values():
            assert all(c["ns_per_packet"] > 0 for c in mode["cases"])


def test_results_md_and_png(quick_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, r = quick_run
    md = (out / "RESULTS.md").read_text()
    for heading in ("# bpfnet benchmarks", "## Machine", "## Headline", "## Goals", "## Scale",
                    "## How it is measured"):
        assert heading in md
    assert "Quick smoke run" in md
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bpfnet bench (quick)" in r.stdout


def test_report_renders_a_partial_run(tmp_path: Path) -> None:
    """``--only progrun`` yields no traffic medians and no variants; the report must still render."""
    from bench import report

    doc = json.loads((REPO / "bench" / "results.json").read_text())
    doc["medians"], doc["ratios"], doc["variants"] = {}, {}, {}
    paths = report.write(doc, str(tmp_path))
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Goals" in Path(paths["RESULTS.md"]).read_text()


def test_sweep_removes_only_dead_runs(tmp_path: Path) -> None:
    """What a SIGKILLed run left is removed by the next run; a live run's namespaces stay."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from bench import env

    dead, live = "bpfnet-bdead0-x", "bpfnet-blive0-x"
    os.makedirs(env.RUNS_DIR, exist_ok=True)
    # a live harness: its pid file names a running process whose command line says bench
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "bench"])
    try:
        Path(env.RUNS_DIR, "live0").write_text(f"{holder.pid}\n")
        for name in (dead, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        removed = env.sweep_dead_runs()
        assert dead in removed
        assert dead not in _namespaces("bpfnet-bdead0")
        assert live in _namespaces("bpfnet-blive0")
    finally:
        holder.kill()
        holder.wait()
        for name in (dead, live):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        Path(env.RUNS_DIR, "live0").unlink(missing_ok=True)
