"""``python -m bench.hardening``: the reliability figures of the README (issue 10).

Boundary: drives one real daemon per experiment (``bench.topology.BpfnetDaemon``,
in a namespace of its own, removed afterwards) and reports what happened; it
asserts nothing (tests do that). Three experiments:

- ``parallel``: N ``bpfnet endpoint add`` CLI processes at once, then N ``rm``:
  every call must succeed or fail with a one-line error, never a socket error.
- ``kills``: K times, SIGKILL the daemon at a random moment while endpoints are
  being added, start it again, and compare the state with the kernel: every
  endpoint the API lists has its namespace and veth, and no veth, namespace or
  lease is left that the state does not list.
- ``soak``: C add/remove cycles through the API; the daemon's RSS, open file
  descriptors and threads at the end against their values after the first 500.

Results go to stdout and, with ``--out``, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bpfnet.datapath import bpffs

from . import env
from .topology import BpfnetDaemon

log = logging.getLogger("bench.hardening")
SOCKET_ERRORS = ("Errno", "Resource temporarily unavailable", "Connection refused", "Broken pipe",
                 "Connection reset", "timed out")


def _cli(d: BpfnetDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([env.PYTHON, "-m", "bpfnet", "-H", d.sock, *args], capture_output=True,
                          text=True, timeout=300, check=False)


def _classify(r: subprocess.CompletedProcess[str]) -> str:
    if r.returncode == 0:
        return "ok"
    err = r.stderr.strip()
    if any(s in err for s in SOCKET_ERRORS):
        return "socket error"
    if "\n" in err or "Traceback" in err:
        return "unclear error"
    return "clear error"


def _kernel_view(d: BpfnetDaemon) -> tuple[set[str], set[str]]:
    """(host veths bnvN in the managed namespace, endpoint namespaces of this daemon)."""
    out = subprocess.run(["ip", "-n", d.netns, "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    veths = {link["ifname"].split("@")[0] for link in json.loads(out)
             if link["ifname"].startswith("bnv")}
    prefix = env.ns_name(f"{d.tag}-")
    return veths, {n for n in env.our_namespaces() if n.startswith(prefix)}


def _consistent(d: BpfnetDaemon) -> tuple[bool, str]:
    eps = d.client.get("/v1/endpoints")
    veths, spaces = _kernel_view(d)
    want_veths = {e["host_ifname"] for e in eps}
    want_ns = {e["netns"] for e in eps}
    not_ready = [e["name"] for e in eps if e["state"] != "ready"]
    leases = sum(n["ipam"]["ipv4"]["in_use"] for n in d.client.get("/v1/networks"))
    problems = []
    if not_ready:
        problems.append(f"not ready: {not_ready}")
    if veths != want_veths:
        problems.append(f"veths {sorted(veths ^ want_veths)} differ")
    if spaces != want_ns:
        problems.append(f"namespaces {sorted(spaces ^ want_ns)} differ")
    if leases != len(eps):
        problems.append(f"{leases} IPv4 leases for {len(eps)} endpoints")
    return not problems, "; ".join(problems)


def parallel(n: int, requested: str) -> dict[str, Any]:
    d = BpfnetDaemon("hp", requested, "fd00:b2::/64")
    d.start()
    names = [d.endpoint_name(i) for i in range(n)]
    out: dict[str, Any] = {"calls": n}
    try:
        for verb in ("add", "rm"):
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=n) as pool:
                results = list(pool.map(lambda name, v=verb: _cli(d, "endpoint", v, name), names))
            kinds: dict[str, int] = {}
            for r in results:
                kinds[_classify(r)] = kinds.get(_classify(r), 0) + 1
            odd = [r.stderr.strip()[:200] for r in results if _classify(r) not in ("ok", "clear error")]
            out[verb] = {"outcomes": kinds, "seconds": round(time.monotonic() - t0, 1), "examples": odd[:3]}
            log.info("parallel %s: %s", verb, out[verb])
        ok, why = _consistent(d)
        out["left_behind"] = why or "nothing"
        out["consistent"] = ok
    finally:
        d.close()
    return out


def kills(k: int, requested: str, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    d = BpfnetDaemon("hk", requested, "fd00:b3::/64")
    d.start()
    passed, failures = 0, []
    try:
        for trial in range(k):
            stop = threading.Event()

            def churn(trial: int = trial, stop: threading.Event = stop) -> None:
                i = 0
                while not stop.is_set():
                    name = d.endpoint_name(trial * 1000 + i)
                    try:
                        d.client.post("/v1/endpoints", {"name": name})
                        if i % 2:
                            d.client.delete(f"/v1/endpoints/{name}")
                    except Exception:  # noqa: BLE001 - the daemon is being killed under it
                        return
                    i += 1

            t = threading.Thread(target=churn, daemon=True)
            t.start()
            time.sleep(rnd.uniform(0.05, 0.6))
            assert d.proc is not None
            d.proc.kill()
            d.proc.wait()
            stop.set()
            t.join(timeout=30)
            d.start()
            ok, why = _consistent(d)
            if ok:
                passed += 1
            else:
                failures.append(f"trial {trial}: {why}")
                log.warning("kill trial %d: %s", trial, why)
        for e in d.client.get("/v1/endpoints"):
            d.client.delete(f"/v1/endpoints/{e['name']}")
        ok, why = _consistent(d)
        if not ok:
            failures.append(f"after removing everything: {why}")
    finally:
        d.close()
    return {"trials": k, "passed": passed, "failures": failures}


def _proc_figures(pid: int) -> dict[str, int]:
    rss = threads = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"rss_bytes": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": threads}


def soak(cycles: int, requested: str) -> dict[str, Any]:
    d = BpfnetDaemon("hs", requested, "fd00:b4::/64")
    d.start()
    out: dict[str, Any] = {"cycles": cycles}
    try:
        t0 = time.monotonic()
        for i in range(cycles):
            name = d.endpoint_name(i % 7)
            d.client.post("/v1/endpoints", {"name": name})
            d.client.delete(f"/v1/endpoints/{name}")
            if i + 1 == min(500, cycles):
                out["after_500"] = _proc_figures(d.pid)
            if (i + 1) % 1000 == 0:
                log.info("soak: %d cycles, %s", i + 1, _proc_figures(d.pid))
        out["end"] = _proc_figures(d.pid)
        out["seconds"] = round(time.monotonic() - t0, 1)
        out["growth_percent"] = {k: round(100.0 * (out["end"][k] - v) / v, 1) if v else 0.0
                                 for k, v in out["after_500"].items()}
        _, why = _consistent(d)
        out["left_behind"] = why or "nothing"
    finally:
        d.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hardening", description=__doc__.split("\n\n")[0])
    p.add_argument("--parallel", type=int, default=200, help="parallel CLI calls (0: skip)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILL trials (0: skip)")
    p.add_argument("--soak", type=int, default=5000, help="add/remove cycles (0: skip)")
    p.add_argument("--datapath", default="auto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("python -m bench.hardening: must run as root", file=sys.stderr)
        return 1
    env.install_handlers()
    results: dict[str, Any] = {}
    try:
        with bpffs.mounted():
            if args.parallel:
                results["parallel"] = parallel(args.parallel, args.datapath)
            if args.kills:
                results["kills"] = kills(args.kills, args.datapath, args.seed)
            if args.soak:
                results["soak"] = soak(args.soak, args.datapath)
    finally:
        env.cleanup()
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
