"""netkit endpoints vs veth endpoints vs a direct veth pair: packet rate, side by side.

Boundary: ``python -m bench.netkit [ROUNDS [SECONDS [WARMUP [PROFILE_SECONDS]]]]``, JSON on
stdout (with PROFILE_SECONDS, a ``bench.kprofile`` pass of each variant after the rounds). Needs a
kernel with netkit (Linux 6.7+ with CONFIG_NETKIT): ``make vm-bench KERNEL=6.12``
runs it in the qemu VM of ``vagrant/run-kernel`` and keeps the JSON.

Three variants, each two endpoints exchanging 64-byte UDP/IPv4 frames
(``bench.traffic.packet_rate``, everything on CPU 0), measured ROUNDS times,
alternating, so drift hits all alike:

- ``direct``: one veth pair straight between two namespaces (the issue's yardstick);
- ``veth/redirect-peer``: ``bpfnet daemon --endpoint-device veth`` in its best mode;
- ``netkit/redirect``: ``bpfnet daemon --endpoint-device netkit`` (redirect, the
  one mode netkit supports).

Under emulation (TCG) absolute rates mean nothing; the ratios between variants
of one run are what the report shows (``emulated`` says which it was:
run-kernel passes BPFNET_VM_ACCEL).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
from typing import Any

from bpfnet.datapath import bpffs

log = logging.getLogger(__name__)


def packet_rates(rounds: int = 3, seconds: float = 2.0, warmup: float = 0.5,
                 profile_seconds: float = 0.0) -> dict[str, Any]:
    from . import kprofile, traffic
    from .topology import BpfnetDaemon, DirectPair, Pair

    pairs: dict[str, Pair] = {"direct": DirectPair().start()}
    for i, (device, mode) in enumerate((("veth", "redirect-peer"), ("netkit", "redirect"))):
        d = BpfnetDaemon(f"nk{device}", mode, f"fd00:b0:c{i}::/64", extra=("--endpoint-device", device))
        d.start(timeout=1800.0)  # compiling the datapath under TCG takes minutes
        got = d.info.get("datapath", {})
        if d.mode != mode or got.get("endpoint_device") != device:
            raise RuntimeError(f"daemon for {device} runs {d.mode} with {got.get('endpoint_device')} endpoints")
        pairs[f"{device}/{mode}"] = d.pair(f"{device}/{mode}")
    rates: dict[str, list[float]] = {v: [] for v in pairs}
    for _ in range(rounds):
        for variant, pair in pairs.items():
            # trafgen preprocesses its config with cpp before it sends: seconds under emulation
            rates[variant].append(traffic.packet_rate(pair, 4, seconds, warmup=warmup))
    out: dict[str, Any] = {v: {"best_pps": round(max(r)), "median_pps": round(statistics.median(r)),
                               "runs": [round(x) for x in r]} for v, r in rates.items()}
    base = out["direct"]["best_pps"] or 1
    out["ratio_to_direct_best"] = {v: round(out[v]["best_pps"] / base, 3) for v in rates}
    if profile_seconds > 0:  # where netkit's time goes next to the direct pair (untimed pass)
        # the rates first, on stderr: a profile that hangs under emulation must not take them along
        log.warning("packet rates (profiling next): %s", json.dumps(out))
        out["kprofile"] = kprofile.run(pairs, 4, profile_seconds, focus="netkit/redirect")
    return out


OUT_JSON = "netkit_vm.json"  # where make vm-bench puts the guest's JSON


def markdown(doc: dict[str, Any]) -> list[str]:
    """The RESULTS.md section for the JSON of one ``make vm-bench`` run."""
    title = "## netkit vs veth endpoints (`make vm-bench KERNEL=6.12`)"
    if "pps" not in doc:
        return [title, "", f"Kernel {doc['kernel']} in the VM (qemu {doc.get('accel')}): {doc['error']}", ""]
    pps = doc["pps"]
    ratio = pps["ratio_to_direct_best"]
    rows = [f"| {v} | {pps[v]['best_pps']} | {pps[v]['median_pps']} | {ratio[v]:.3f}x |" for v in ratio]
    where = "EMULATED (qemu TCG): absolute rates mean nothing, only the ratios" if doc.get("emulated") \
        else f"accel {doc.get('accel')}"
    nk = ratio.get("netkit/redirect", 0.0)
    lines = [title, "",
             (f"One run in the VM on kernel {doc['kernel']}, {doc.get('cpus')} guest CPUs, **{where}**. "
              f"64-byte UDP/IPv4 between two endpoints, {doc['rounds']} alternating rounds of {doc['seconds']} s "
              "after a warm-up, packets counted at the receiver's UDP layer (`bench/netkit.py`)."), "",
             "| variant | best packets/s | median packets/s | best / direct |", "| --- | --- | --- | --- |",
             *rows, "",
             (f"Goal (issue 16): netkit endpoint to endpoint ≥ 1.0x a direct veth pair: "
              f"**{'met' if nk >= 1.0 else 'missed'}** ({nk:.3f}x, emulated)."), ""]
    lines += [f"- {n}" for n in doc.get("notes", [])] + ([""] if doc.get("notes") else [])
    kp = pps.get("kprofile")
    if kp and "skipped" in kp:
        lines += [f"Kernel profile skipped: {kp['skipped']}", ""]
    elif kp and kp.get("profiles"):
        from .report import kprofile_tables

        lines += [(f"Kernel profile in the same VM (`perf record -e cpu-clock -C 0`, {kp['seconds']} s per "
                   "variant, an untimed pass; emulated, so a symbol's cost is TCG's cost of its code): ns per "
                   "delivered packet, the symbols where netkit differs most from the direct pair."), "",
                  *kprofile_tables(kp)]
    return lines


def main(argv: list[str]) -> int:
    from . import env

    logging.basicConfig(level=logging.WARNING)
    rounds = int(argv[0]) if argv else 3
    seconds = float(argv[1]) if len(argv) > 1 else 2.0
    warmup = float(argv[2]) if len(argv) > 2 else 0.5
    profile_seconds = float(argv[3]) if len(argv) > 3 else 0.0
    env.install_handlers()
    env.sweep_dead_runs()
    try:
        with bpffs.mounted():
            doc = {"kernel": os.uname().release, "accel": os.environ.get("BPFNET_VM_ACCEL", "host"),
                   "emulated": os.environ.get("BPFNET_VM_ACCEL") == "tcg",
                   "cpus": os.cpu_count(), "rounds": rounds, "seconds": seconds,
                   "warmup": warmup, "pps": packet_rates(rounds, seconds, warmup, profile_seconds)}
            print(json.dumps(doc, indent=2))
    finally:
        env.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
