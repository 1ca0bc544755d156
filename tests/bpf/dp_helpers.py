"""Running bpfnet programs with BPF_PROG_TEST_RUN and reading counter deltas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bpf_packets import sk_buff_ctx
from bpfnet.datapath import bpfsys, counters

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7

FIELDS = counters.COUNTER_KEYS


def flat(c: dict[str, Any]) -> dict[str, int]:
    """Counters of one endpoint as a flat dict, drops as "tx_drop_<reason>"."""
    out = {f: c[f] for f in FIELDS}
    for d, reasons in c["drops"].items():
        for r, v in reasons.items():
            out[f"{d}_drop_{r}"] = v
    return out


def delta(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]) -> dict[int, dict[str, int]]:
    """Non-zero counter changes: {endpoint id: {field: increase}}."""
    out: dict[int, dict[str, int]] = {}
    for eid, c in after.items():
        a = flat(c)
        b = flat(before[eid]) if eid in before else dict.fromkeys(a, 0)
        d = {k: a[k] - b[k] for k in a if a[k] != b[k]}
        if d:
            out[eid] = d
    return out


@dataclass
class Run:
    verdict: int
    data: bytes
    cb: tuple[int, ...]
    counts: dict[int, dict[str, int]]


def run(dp: Any, prog: str, pkt: bytes, ifindex: int, ingress_ifindex: int = 0,
        cb: tuple[int, ...] = (), gso_segs: int = 0, gso_size: int = 0) -> Run:
    from bpf_packets import ctx_cb

    before = dp.counters()
    r = bpfsys.prog_test_run(dp.program_fd(prog), pkt,
                             sk_buff_ctx(ifindex, ingress_ifindex, cb, gso_segs, gso_size))
    after = dp.counters()
    return Run(r.retval, r.data, ctx_cb(r.ctx), delta(before, after))
