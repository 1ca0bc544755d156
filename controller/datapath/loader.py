"""Compiling bpfnet's C programs with bcc.

Boundary: turns ``bpf/*.c`` into loaded sched_cls program fds with maps
pinned under a pin directory; no tc, no map contents. Every load checks the
binary interface (``abi.py``) against C field by field: pins first
(``maps.check_pins``), then the compiler (checks appended to the source),
then the BTF of the maps the module ended up with; a drift raises
``layout.AbiMismatch`` with one line naming struct, field and both values.

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
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from . import abi, bpffs, bpfsys, layout
from .maps import check_pins, map_drift, map_specs

log = logging.getLogger(__name__)

# entry program -> its source file; each file holds one thin entry program.
PROGRAMS = {
    "ep_ingress": "ep_ingress.c",
    "ep_egress": "ep_egress.c",
    "bridge_egress": "bridge_egress.c",
    "tunnel_ingress": "tunnel_ingress.c",
    "uplink_ingress": "uplink_ingress.c",
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
    """The pin directory, and the limits and mode from abi.py (C has no defaults)."""
    return [f'-DBPFNET_PIN_DIR="{pin_dir}"', *abi.cflags(mode, max_endpoints),
            "-Wno-unused-function"]


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collect what is written to fd 2 in the block (bcc prints clang's
    diagnostics there, not into its exception), then write it on to fd 2 as
    before. The list gets the text once the block is done."""
    out: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            data = tmp.read()
            if data:
                os.write(2, data)
            out.append(data.decode(errors="replace"))


def compile_checked(text: str, flags: list[str], checks: list[abi.Check]) -> Any:
    """bcc.BPF of text with abi.py's layout checks appended. A check that fails
    raises AbiMismatch naming it; any other compile error is re-raised as is."""
    from bcc import BPF  # Debian's python3-bpfcc; imported late so bridge mode needs no bcc

    try:
        with _stderr_captured() as diagnostics:
            return BPF(text=(text + abi.compile_checks(checks)).encode(), cflags=flags)
    except Exception:
        problems = layout.drift_from_compiler("".join(diagnostics), checks)
        if problems:
            raise layout.mismatch(problems, "the C structs") from None
        raise


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
    there with the right shape and layout, created and pinned otherwise."""
    from bcc import BPF

    if pin_dir.startswith(bpffs.BPFFS + "/"):
        bpffs.ensure_mounted()  # left mounted: the pins must outlive the daemon
    os.makedirs(pin_dir, mode=0o700, exist_ok=True)
    check_pins(pin_dir, max_endpoints)
    t0 = time.monotonic()
    b = compile_checked(render_source(), cflags(mode, pin_dir, max_endpoints), abi.checks())
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
    """The maps the module uses (created from the C structs, or reused pins) must
    match abi.py: shape from the kernel's map info, layout field by field from
    the maps' BTF. (bcc's own ctypes mirrors are not used: bcc 0.26 gets
    two-dimensional arrays such as struct endpoint.ipv6 wrong.)"""
    btfs: dict[int, layout.Btf] = {}
    problems: list[str] = []
    for spec in map_specs(max_endpoints):
        info = bpfsys.map_info(int(b[spec.name.encode()].map_fd))
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        want = (spec.type, spec.key_size, spec.value_size, spec.max_entries)
        if have != want:
            problems.append(f"map {spec.name} (type, key, value, entries): C {have}, "
                            f"abi.py {want}")
        else:
            problems.extend(map_drift(info, spec.abi, btfs))
    if problems:
        raise layout.mismatch(problems, "the loaded maps")
