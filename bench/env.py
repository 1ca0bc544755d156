"""Processes, namespaces and clean-up for the harness, plus machine facts.

Boundary: every network namespace and long-running child process the harness
makes is registered here, and ``cleanup()`` removes them all (idempotent; run
from ``finally``, ``atexit`` and the SIGTERM/SIGINT handlers). Namespaces are
only ever created with the run's prefix (``bpfnet-b<run id>``), and the final
sweep deletes only namespaces carrying that prefix. A run killed with SIGKILL
cannot clean up: its children die with it (parent-death signal), and the next
run's ``sweep_dead_runs()`` removes its namespaces and BPF pins, recognising a
dead run by its pid file in ``RUNS_DIR``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "bpfnet-b"
RUNS_DIR = "/run/bpfnet-bench"  # <run id> -> pid of the harness, while it runs
PIN_ROOT = "/sys/fs/bpf/bpfnet"  # the daemon pins maps in PIN_ROOT/<its netns>
RUN_ID = uuid.uuid4().hex[:5]
RUN_PREFIX = f"{PREFIX}{RUN_ID}"
PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_namespaces: list[str] = []
_procs: list[subprocess.Popen[bytes]] = []
_finalizers: list[Callable[[], None]] = []
_tmpdirs: list[str] = []
_installed = False


def ns_name(suffix: str) -> str:
    """A namespace name of this run (the only names the harness creates)."""
    return f"{RUN_PREFIX}-{suffix}"


def run(cmd: Sequence[str], ns: str | None = None, check: bool = True, timeout: float = 120.0,
        cpu: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (in namespace ns, pinned to cpu) and capture its output."""
    full = _wrap(cmd, ns, cpu)
    r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r


def spawn(cmd: Sequence[str], ns: str | None = None, cpu: int | None = None,
          stdout: Any = subprocess.DEVNULL, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running child (registered: killed at clean-up), in cwd if given."""
    # setpriv --pdeathsig: clean-up covers SIGTERM/SIGINT and normal exits,
    # but not a SIGKILL of the harness (e.g. a test runner's timeout); without
    # it a trafgen would go on saturating CPU 0 and starve every later run.
    # ip netns exec, taskset and setpriv all exec the next command, so the
    # setting reaches the real process. (The kernel sends it when the spawning
    # thread exits: the harness spawns from its main thread.)
    proc = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", *_wrap(cmd, ns, cpu)], stdout=stdout,
                            stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=cwd)
    _procs.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stop one child we started (by its process group), escalating to SIGKILL."""
    if proc.poll() is None:
        # Each child leads its own process group (start_new_session): signal the
        # group, so helpers it forked (trafgen's per-CPU workers) stop too.
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()
    if proc in _procs:
        _procs.remove(proc)
    return proc.returncode if proc.returncode is not None else -1


def _wrap(cmd: Sequence[str], ns: str | None, cpu: int | None) -> list[str]:
    full = list(cmd)
    if cpu is not None:
        full = ["taskset", "-c", str(cpu)] + full
    if ns is not None:
        full = ["ip", "netns", "exec", ns] + full
    return full


def add_netns(name: str) -> str:
    """Create a fresh namespace (must carry the run prefix) with lo up."""
    if not name.startswith(RUN_PREFIX):
        raise ValueError(f"refusing to create namespace {name!r} without prefix {RUN_PREFIX}")
    _namespaces.append(name)
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


def tmpdir(tag: str) -> str:
    path = tempfile.mkdtemp(prefix=f"{RUN_PREFIX}-{tag}-")
    _tmpdirs.append(path)
    return path


def on_cleanup(fn: Callable[[], None]) -> None:
    """Run fn at clean-up (before namespaces go), most recent first."""
    _finalizers.append(fn)


def remove_namespaces(names: Sequence[str]) -> None:
    """Delete namespaces (ours only), quietly skipping missing ones."""
    from pyroute2 import netns as pnetns

    for name in names:
        if not name.startswith(RUN_PREFIX):
            continue
        try:
            pnetns.remove(name)
        except OSError:
            pass


def our_namespaces() -> list[str]:
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return []
    return [n for n in names if n.startswith(RUN_PREFIX)]


def _run_file(run_id: str) -> str:
    return os.path.join(RUNS_DIR, run_id)


def _alive(run_id: str) -> bool:
    """Whether the harness run run_id is still running (its pid file names a live bench)."""
    try:
        with open(_run_file(run_id), encoding="ascii") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"bench" in f.read()
    except (OSError, ValueError):
        return False


def sweep_dead_runs() -> list[str]:
    """Remove the namespaces and BPF pins of earlier runs that died without
    cleaning up (SIGKILL, power loss). Runs still alive, such as a bench
    started concurrently by the test suite, are left alone. Returns what was removed."""
    from pyroute2 import netns as pnetns

    removed: list[str] = []
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        names = []
    try:
        pins = [os.path.join(PIN_ROOT, n) for n in os.listdir(PIN_ROOT)]
    except FileNotFoundError:
        pins = []
    for path in [*names, *pins]:
        base = os.path.basename(path)
        if not base.startswith(PREFIX):
            continue
        run_id = base[len(PREFIX):].split("-", 1)[0]
        if run_id == RUN_ID or _alive(run_id):
            continue
        try:
            if path in pins:
                shutil.rmtree(path)
            else:
                pnetns.remove(base)
        except OSError as exc:
            log.warning("could not remove %s of dead run %s: %s", path, run_id, exc)
            continue
        removed.append(path)
    for run_id in os.listdir(RUNS_DIR) if os.path.isdir(RUNS_DIR) else []:
        if run_id != RUN_ID and not _alive(run_id):
            os.unlink(_run_file(run_id))
    if removed:
        log.warning("removed %d namespace(s)/pin dir(s) left by dead bench runs: %s", len(removed),
                    " ".join(sorted(removed)))
    return removed


def cleanup() -> None:
    """Undo everything this run made. Safe to call more than once."""
    while _finalizers:
        fn = _finalizers.pop()
        try:
            fn()
        except Exception:
            log.exception("clean-up step failed")
    while _procs:
        stop(_procs[0], timeout=5)  # stop() unregisters it
    remove_namespaces(list(dict.fromkeys(_namespaces + our_namespaces())))
    _namespaces.clear()
    for path in _tmpdirs:
        shutil.rmtree(path, ignore_errors=True)
    _tmpdirs.clear()
    try:
        os.unlink(_run_file(RUN_ID))
    except FileNotFoundError:
        pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_handlers() -> None:
    """atexit + SIGTERM/SIGINT -> KeyboardInterrupt, so ``finally`` clean-up runs."""
    global _installed
    if _installed:
        return
    _installed = True
    os.makedirs(RUNS_DIR, exist_ok=True)
    with open(_run_file(RUN_ID), "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def wait_until(pred: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cpu_times(cpu: int) -> tuple[int, int]:
    """(idle + iowait, total) jiffies of one CPU from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[3] + v[4], sum(v[:8])
    return 0, 0


# How long wait_quiet() waits at most: the plan sets it (a quick smoke run on a
# loaded machine must not spend 20 s before every fraction-of-a-second measurement).
quiet_timeout = 20.0


def wait_quiet(cpu: int = 0, idle: float = 0.85, window: float = 0.2, timeout: float | None = None) -> float:
    """Wait until cpu is at least ``idle`` idle over ``window`` seconds (e.g. the kernel has
    finished tearing down namespaces in the background); returns the seconds waited.
    Gives up after timeout (default ``quiet_timeout``, logged): the measurement then
    runs on a busy CPU."""
    timeout = quiet_timeout if timeout is None else timeout
    start = time.monotonic()
    while True:
        i0, t0 = _cpu_times(cpu)
        time.sleep(window)
        i1, t1 = _cpu_times(cpu)
        waited = time.monotonic() - start
        if t1 == t0 or (i1 - i0) / (t1 - t0) >= idle:
            return waited
        if waited > timeout:
            log.warning("CPU %d still busy after %.0f s (%.0f%% idle); measuring anyway", cpu, waited,
                        100 * (i1 - i0) / (t1 - t0))
            return waited


def machine() -> dict[str, Any]:
    """CPU model, cores, kernel, distribution, tool versions: the context of the numbers."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hyper = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Hypervisor vendor:"):
                hyper = line.split(":", 1)[1].strip()
    except OSError:
        pass
    distro = ""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    mem_kb = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "hypervisor": hyper or None,
        "kernel": platform.release(),
        "distribution": distro,
        "memory_gib": round(mem_kb / 1048576, 1),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "tools": {t: _version(t) for t in ("trafgen", "iperf3", "sockperf")},
    }


def _version(tool: str) -> str | None:
    if shutil.which(tool) is None:
        return None
    flag = {"trafgen": "-v", "iperf3": "--version", "sockperf": "--version"}[tool]
    try:
        out = subprocess.run([tool, flag], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip()[:80] if text else None


def measure_and_keep(measure: Callable[[], dict[str, Any]], out_json: str, write: bool) -> dict[str, Any]:
    """The run of one side bench (``python -m bench.X ... [--write]``): MEASURE inside bpffs with this
    run's namespaces swept and removed whatever happens, the document on stdout; with WRITE, kept
    in bench/OUT_JSON and RESULTS.md rendered again from bench/results.json with it."""
    from bpfnet.datapath import bpffs

    install_handlers()
    sweep_dead_runs()
    try:
        with bpffs.mounted():
            doc = measure()
    finally:
        cleanup()
    print(json.dumps(doc, indent=2))
    if write:
        from . import report

        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, out_json), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        with open(os.path.join(here, "results.json"), encoding="utf-8") as f:
            report.write(json.load(f), here)
    return doc
