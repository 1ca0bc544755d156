"""Checking the C side of the binary interface against ``abi.py``, field by field.

Boundary: comparison only. Two sources of C truth are read here:

- clang's answer to the checks ``abi.compile_checks()`` appends to the
  rendered source (``drift_from_compiler()``): a drifted build does not
  compile, and its diagnostics give both numbers;
- the BTF the kernel keeps for every map bcc creates (``btf_drift()``): member
  names, offsets and sizes of the key and value types. Pinned maps outlive the
  daemon, so this is what tells a pinned map written by an older build with
  the same total size but another field order from one we may reuse.

Everything found is reported as ``AbiMismatch``, one line naming the struct,
the field, C's value and abi.py's.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from ..errors import BpfnetError
from . import abi


class AbiMismatch(BpfnetError):
    """The C structs (bpf/maps.h) and controller/datapath/abi.py disagree."""

    status = 500


# -- compile-time checks -----------------------------------------------------------
_DIAG = re.compile(rf'^{re.escape(abi.CHECK_FILE)}:(\d+):\d+: error: typedef redefinition with '
                   r"different types \('char\[(\d+)\]' vs 'char\[(\d+)\]'\)", re.MULTILINE)


def drift_from_compiler(diagnostics: str, checks: list[abi.Check]) -> list[str]:
    """What the compiler said about the appended checks, one sentence each."""
    out = []
    for line, want, have in _DIAG.findall(diagnostics):
        c = checks[int(line) - 1]
        out.append(f"{c.what}: C (bpf/maps.h) says {have}, abi.py says {want}")
    return out


def mismatch(problems: list[str], where: str) -> AbiMismatch:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return AbiMismatch(f"datapath ABI drift in {where}: {problems[0]}{more}; "
                       "bpf/maps.h and controller/datapath/abi.py must declare the same layout")


# -- BTF -----------------------------------------------------------------------------
# Kinds (include/uapi/linux/btf.h) and the bytes each adds after struct btf_type.
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM = 1, 2, 3, 4, 5, 6
_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 8, 9, 10, 11, 18
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)
_FIXED_EXTRA = {_INT: 4, _ARRAY: 12, 14: 4, 17: 4}  # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, 13: 8, 15: 12, 19: 12}


@dataclass(frozen=True)
class BtfType:
    kind: int
    name: str
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM, referenced type otherwise
    members: tuple[tuple[str, int, int], ...] = ()  # (name, type id, bit offset)
    array: tuple[int, int] = (0, 0)  # (element type id, nelems)


class Btf:
    """The types of one raw BTF blob (as BPF_OBJ_GET_INFO_BY_FD returns it)."""

    def __init__(self, raw: bytes) -> None:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "=HBBIIIII", raw)
        if magic != 0xEB9F:
            raise ValueError(f"not BTF (magic {magic:#x})")
        types = raw[hdr_len + type_off: hdr_len + type_off + type_len]
        strings = raw[hdr_len + str_off: hdr_len + str_off + str_len]

        def name(off: int) -> str:
            return strings[off: strings.index(b"\0", off)].decode()

        self.types: list[BtfType | None] = [None]  # id 0 is void
        pos = 0
        while pos < len(types):
            name_off, info, size_or_type = struct.unpack_from("=III", types, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: tuple[tuple[str, int, int], ...] = ()
            array = (0, 0)
            if kind in (_STRUCT, _UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("=III", types, pos + 12 * i)
                    ms.append((name(m_name), m_type, m_off & 0xFFFFFF if kflag else m_off))
                members = tuple(ms)
            elif kind == _ARRAY:
                elem, _index, nelems = struct.unpack_from("=III", types, pos)
                array = (elem, nelems)
            pos += _FIXED_EXTRA.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
            self.types.append(BtfType(kind, name(name_off), size_or_type, members, array))

    def resolve(self, tid: int) -> BtfType:
        """The type behind typedefs and qualifiers."""
        t = self.types[tid]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        if t is None:
            raise ValueError(f"BTF type {tid} is void")
        return t

    def size(self, tid: int) -> int:
        t = self.resolve(tid)
        if t.kind == _ARRAY:
            return t.array[1] * self.size(t.array[0])
        if t.kind == _PTR:
            return 8
        return t.size_or_type

    def element(self, tid: int) -> tuple[int, tuple[int, ...]]:
        """(element type id, array dimensions) of a possibly multi-dimensional array."""
        dims: list[int] = []
        t = self.resolve(tid)
        while t.kind == _ARRAY:
            dims.append(t.array[1])
            tid = t.array[0]
            t = self.resolve(tid)
        return tid, tuple(dims)


def type_drift(btf: Btf, tid: int, want: abi.Scalar | abi.Struct) -> list[str]:
    """Differences between BTF type tid and abi.py's declaration, recursively."""
    t = btf.resolve(tid)
    if isinstance(want, abi.Scalar):
        have = btf.size(tid)
        return [] if have == want.size else [f"{want.name}: C size {have}, abi.py {want.size}"]
    if t.kind != _STRUCT or t.name != want.name:
        return [f"struct {want.name}: C has {t.name or 'an unnamed type'} (BTF kind {t.kind})"]
    out: list[str] = []
    members = {m[0]: m for m in t.members}
    for f in want.fields:
        m = members.get(f.name)
        if m is None:
            continue
        ref = f"struct {want.name} field {f.name}"
        off, size = m[2] // 8, btf.size(m[1])
        if off != want.offsets[f.name]:
            out.append(f"{ref} offset: C says {off}, abi.py says {want.offsets[f.name]}")
        if size != f.size:
            out.append(f"{ref} size: C says {size}, abi.py says {f.size}")
        elem, dims = btf.element(m[1])
        if dims != f.dims:
            out.append(f"{ref} dimensions: C {list(dims)}, abi.py {list(f.dims)}")
        if isinstance(f.type, abi.Struct):
            out.extend(type_drift(btf, elem, f.type))
    have_names = [m[0] for m in t.members]
    want_names = [f.name for f in want.fields]
    if have_names != want_names:
        out.append(f"struct {want.name} fields: C {have_names}, abi.py {want_names}")
    if btf.size(tid) != want.size:
        out.append(f"struct {want.name} size: C says {btf.size(tid)}, abi.py says {want.size}")
    return out


def map_drift(btf: Btf | None, key_type_id: int, value_type_id: int,
              m: abi.MapDef) -> list[str]:
    """Differences between a map's BTF key/value types and its abi.py declaration.
    A map without BTF cannot be checked: that is a difference too."""
    if btf is None or not value_type_id:
        return [f"map {m.name} has no BTF, its layout cannot be checked"]
    return type_drift(btf, key_type_id, m.key) + type_drift(btf, value_type_id, m.value)
