"""Compiling bpfnet's C programs with bcc.

Boundary: turns ``bpf/*.c`` into loaded sched_cls program fds with maps
pinned under a pin directory; no tc, no map contents.

bcc only rewrites map accesses (``table.lookup(...)``) in its main file, so
map-using helpers in our headers would be left as calls bcc cannot link.
render_source() therefore inlines bpfnet's own ``#include "..."`` files into
one text (with #line markers so compiler errors still point at the right
file); system headers stay ordinary includes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.resources
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from . import bpffs, bpfsys
from .maps import check_pins, map_specs

log = logging.getLogger(__name__)

# entry program -> its source file; each file holds one thin entry program.
PROGRAMS = {
    "ep_ingress": "ep_ingress.c",
    "ep_egress": "ep_egress.c",
    "bridge_egress": "bridge_egress.c",
}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def bpf_source_dir() -> str:
    return str(importlib.resources.files("bpfnet.bpf"))


def render_source(src_dir: str | None = None) -> str:
    """All entry programs as one translation unit, local includes inlined once."""
    src_dir = src_dir or bpf_source_dir()
    seen: set[str] = set()

    def expand(fname: str) -> str:
        if fname in seen:
            return ""  # the headers have include guards; once is enough
        seen.add(fname)
        with open(os.path.join(src_dir, fname), encoding="utf-8") as f:
            lines = f.read().splitlines(keepends=True)
        out = [f'#line 1 "{fname}"\n']
        for no, line in enumerate(lines, 1):
            m = _INCLUDE.match(line)
            if m:
                out.append(expand(m.group(1)))
                out.append(f'#line {no + 1} "{fname}"\n')
            else:
                out.append(line)
        return "".join(out)

    return "".join(expand(f) for f in PROGRAMS.values())


def cflags(mode: str, pin_dir: str, max_endpoints: int) -> list[str]:
    if mode not in ("redirect-peer", "redirect"):
        raise ValueError(f"no eBPF programs for mode {mode!r}")
    return [
        f'-DBPFNET_PIN_DIR="{pin_dir}"',
        f"-DMAX_ENDPOINTS={max_endpoints}",
        f"-DBPFNET_REDIRECT_PEER={1 if mode == 'redirect-peer' else 0}",
        "-Wno-unused-function",
    ]


@dataclass
class LoadedPrograms:
    """A bcc module and its loaded entry programs."""

    bpf: Any  # bcc.BPF
    fds: dict[str, int]
    info: dict[str, bpfsys.ProgInfo]

    def close(self) -> None:
        # Frees bcc's fds only: tc filters hold their own program references
        # and the maps stay pinned, so nothing stops forwarding.
        self.bpf.cleanup()
        self.fds = {}


def load(mode: str, pin_dir: str, max_endpoints: int) -> LoadedPrograms:
    """Compile and load all programs; maps are reused from pin_dir when pinned
    there with the right shape, created and pinned otherwise."""
    from bcc import BPF  # Debian's python3-bpfcc; imported late so bridge mode needs no bcc

    if pin_dir.startswith(bpffs.BPFFS + "/"):
        bpffs.ensure_mounted()  # left mounted: the pins must outlive the daemon
    os.makedirs(pin_dir, mode=0o700, exist_ok=True)
    check_pins(pin_dir, max_endpoints)
    t0 = time.monotonic()
    b = BPF(text=render_source().encode(), cflags=cflags(mode, pin_dir, max_endpoints))
    try:
        _check_layouts(b, max_endpoints)
        fds: dict[str, int] = {}
        info: dict[str, bpfsys.ProgInfo] = {}
        for name in PROGRAMS:
            fn = b.load_func(name.encode(), BPF.SCHED_CLS)
            fds[name] = int(fn.fd)
            info[name] = bpfsys.prog_info(int(fn.fd))
    except BaseException:
        b.cleanup()
        raise
    log.info("compiled and loaded %d programs (mode %s) in %.2fs, maps pinned in %s",
             len(fds), mode, time.monotonic() - t0, pin_dir)
    release_free_heap()
    return LoadedPrograms(b, fds, info)


def release_free_heap() -> None:
    """Give the heap that clang/LLVM freed after compiling back to the kernel.

    Compiling the programs in-process grows the heap by ~80 MiB that is all
    free again afterwards, but glibc keeps freed memory mapped, so a
    long-running daemon would carry it in its RSS for ever. malloc_trim(0)
    returns it (measured: RSS 197 -> 114 MiB right after loading). Not glibc:
    nothing to do.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _check_layouts(b: Any, max_endpoints: int) -> None:
    """The maps as the kernel created them from the C structs must match
    maps.py's packing. (bcc's own ctypes mirrors are not used: bcc 0.26 gets
    two-dimensional arrays such as struct endpoint.ipv6 wrong.)"""
    for spec in map_specs(max_endpoints):
        info = bpfsys.map_info(int(b[spec.name.encode()].map_fd))
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        want = (spec.type, spec.key_size, spec.value_size, spec.max_entries)
        if have != want:
            raise RuntimeError(f"map {spec.name}: C layout (type, key, value, entries) {have}, "
                               f"maps.py expects {want}")
