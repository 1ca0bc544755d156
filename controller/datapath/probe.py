"""Which forwarding mode this kernel supports.

Boundary: feature detection only. Loads a tiny sched_cls program that calls
the helper in question straight from raw instructions (no compiler, a few
milliseconds); the verifier refuses helpers the kernel does not have.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from collections.abc import Callable
from functools import lru_cache

from . import bpfsys
from .abi import (
    ATTACH_TC,
    ATTACH_TCX,
    ENDPOINT_NETKIT,
    ENDPOINT_VETH,
    MODE_BRIDGE,
    MODE_REDIRECT,
    MODE_REDIRECT_PEER,
)

log = logging.getLogger(__name__)

BPF_FUNC_REDIRECT = 23
BPF_FUNC_REDIRECT_PEER = 155
CLONE_NEWNET = 0x40000000


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _helper_prog(helper: int) -> bytes:
    """r1 = 0; r2 = 0; call helper; exit  (ifindex 0, flags 0)."""
    mov64_imm, call, exit_ = 0xB7, 0x85, 0x95
    return (_insn(mov64_imm, dst=1) + _insn(mov64_imm, dst=2) + _insn(call, imm=helper)
            + _insn(exit_))


def helper_available(helper: int) -> bool:
    try:
        fd = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, _helper_prog(helper), "bpfnet_probe")
    except OSError as e:
        log.debug("helper %d not usable: %s", helper, e)
        return False
    os.close(fd)
    return True


def _tcx_link_on_lo() -> None:
    """Attach a "return 0" program with a tcx link on lo (ifindex 1) of the
    calling thread's namespace, then drop it again."""
    mov64_imm, exit_ = 0xB7, 0x95
    prog = bpfsys.prog_load(bpfsys.BPF_PROG_TYPE_SCHED_CLS, _insn(mov64_imm) + _insn(exit_),
                            "bpfnet_probe")
    try:
        os.close(bpfsys.link_create(prog, 1, bpfsys.BPF_TCX_INGRESS))
    finally:
        os.close(prog)


def in_throwaway_netns(fn: Callable[[], None]) -> None:
    """Run fn on a fresh thread that first moves into a new, unnamed network
    namespace (setns/unshare change only the calling thread; the namespace
    dies with the thread). Re-raises fn's exception."""
    error: list[BaseException] = []

    def body() -> None:
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    t = threading.Thread(target=body, name="bpfnet-probe-netns")
    t.start()
    t.join()
    if error:
        raise error[0]


@lru_cache(maxsize=1)
def tcx_available() -> bool:
    """Whether this kernel attaches tcx links (6.6+). Tried on lo of a
    throwaway namespace, never on a device of a namespace in use."""
    try:
        in_throwaway_netns(_tcx_link_on_lo)
    except OSError as e:
        log.info("tcx links not available (%s): programs go on clsact + cls_bpf", e)
        return False
    return True


def probe_attach() -> str:
    """How programs attach: "tcx" where the kernel has it, else "tc"."""
    return ATTACH_TCX if tcx_available() else ATTACH_TC


def probe_endpoint_device() -> str:
    """What endpoints' device pairs are: "netkit" where the kernel has it, else "veth"."""
    from .netkit import netkit_available

    return ENDPOINT_NETKIT if netkit_available() else ENDPOINT_VETH


def bcc_available() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


def probe_mode() -> str:
    """Best mode the kernel offers: "redirect-peer", "redirect" or "bridge"."""
    if not bcc_available():
        log.warning("bcc (Debian's python3-bpfcc) is not importable: bridge mode only")
        return MODE_BRIDGE
    try:
        bpfsys.syscall_number()
    except bpfsys.UnknownMachine as e:
        log.warning("%s: bridge mode only", e.strerror)
        return MODE_BRIDGE
    if helper_available(BPF_FUNC_REDIRECT_PEER):
        return MODE_REDIRECT_PEER
    if helper_available(BPF_FUNC_REDIRECT):
        return MODE_REDIRECT
    return MODE_BRIDGE
