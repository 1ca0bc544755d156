"""``python -m bench.bare_prog NS DEV PEER``: the floor of any tc design, for comparison.

Boundary: enters namespace NS (setns; a fresh namespace of the harness),
loads two 4-instruction sched_cls programs from raw bytecode (no compiler,
no maps, no counters) and attaches them at tc ingress, direct-action: on DEV
every packet goes ``bpf_redirect_peer(PEER)``, on PEER every packet goes
``bpf_redirect_peer(DEV)``. That is the "bare bpf_redirect_peer prototype"
of the issue: what a veth + tc ingress + redirect-peer path costs before
bpfnet's lookups, checks and counters. The filters hold the programs; the
namespace's removal frees them.
"""

from __future__ import annotations

import os
import struct
import sys

BPF_FUNC_REDIRECT_PEER = 155


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def redirect_peer_program(ifindex: int) -> bytes:
    """r1 = ifindex; r2 = 0; call bpf_redirect_peer; exit (r0 = TC_ACT_REDIRECT)."""
    mov64_imm, call, exit_ = 0xB7, 0x85, 0x95
    return (_insn(mov64_imm, dst=1, imm=ifindex) + _insn(mov64_imm, dst=2)
            + _insn(call, imm=BPF_FUNC_REDIRECT_PEER) + _insn(exit_))


def main(ns: str, dev: str, peer: str) -> int:
    from bpfnet.datapath import bpfsys
    from pyroute2 import IPRoute
    from pyroute2 import netns as pnetns

    pnetns.setns(ns, flags=0)
    with IPRoute() as ipr:
        a, b = ipr.link_lookup(ifname=dev)[0], ipr.link_lookup(ifname=peer)[0]
        for here, there in ((a, b), (b, a)):
            fd = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, redirect_peer_program(there),
                                  "bench_bare")
            ipr.tc("add", "clsact", here)
            ipr.tc("add-filter", "bpf", here, 1, fd=fd, name="bench-bare", parent="ffff:fff2",
                   classid=1, direct_action=True, prio=1)
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
