"""bpffs on /sys/fs/bpf: mounted when missing, unmounted again by whoever mounted it.

Boundary: the mount only; what is pinned inside is loader.py's and maps.py's.

Every bpffs mount gets two entries from the kernel (CONFIG_BPF_PRELOAD:
``progs.debug`` and ``maps.debug``) that nobody can unlink; only unmounting
removes them. So a test run, the demo or the bench that had to mount bpffs
unmounts it again when nothing but those entries is left (:func:`mounted`).
The daemon mounts it when missing and leaves it mounted, as Cilium's agent
does: its pins must outlive it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

BPFFS = "/sys/fs/bpf"
KERNEL_ENTRIES = frozenset({"progs.debug", "maps.debug"})  # the kernel's preload iterators


def is_mounted(path: str = BPFFS) -> bool:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1:3] == [path, "bpf"] for line in f)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def ensure_mounted(path: str = BPFFS) -> bool:
    """Mount bpffs on PATH unless it is there; True if this call mounted it."""
    if is_mounted(path):
        return False
    if _libc().mount(b"bpf", path.encode(), b"bpf", 0, b"mode=0700") != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount bpffs on {path}: {os.strerror(err)} "
                           "(needs root and a kernel with CONFIG_BPF_SYSCALL)")
    log.info("mounted bpffs on %s", path)
    return True


@contextmanager
def mounted(path: str = BPFFS) -> Iterator[None]:
    """bpffs on PATH for the duration; unmounted afterwards (also on error) if
    this mounted it and only the kernel's own entries are left in it."""
    mine = ensure_mounted(path)
    try:
        yield
    finally:
        if mine:
            left = set(os.listdir(path)) - KERNEL_ENTRIES
            if left:
                log.warning("leaving bpffs mounted on %s: still pinned there: %s", path, sorted(left))
            elif _libc().umount2(path.encode(), 0) != 0:
                log.warning("cannot unmount bpffs on %s: %s", path, os.strerror(ctypes.get_errno()))
