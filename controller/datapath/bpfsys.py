"""Thin ctypes wrappers around the bpf(2) syscall commands bpfnet needs beyond bcc.

Boundary: raw kernel interface only (no knowledge of bpfnet's maps or
programs). Used for pinned-object access without compiling anything (a
fresh process cleaning up, tests, the pin check before a load), batch map
reads, program info (id, tag), map BTF (the layout check), BPF_PROG_TEST_RUN
for tests, and the feature probe. The attribute structs follow ``union
bpf_attr`` in include/uapi/linux/bpf.h; fields we do not set stay zero, as the
kernel requires.

Why not bcc's ``TableBase.items_lookup_batch()`` (Debian's bcc 0.26 has it):
it needs a bcc table object, i.e. a compiled module, while we read pinned maps
by fd without compiling; its Key/Leaf ctypes come from bcc's own mirror of the
C types, which gets two-dimensional arrays such as ``struct endpoint.ipv6``
wrong; in 0.26 the batch token and the element count are one and the same
``c_uint32`` (``ct_out_batch = ct_cnt = ...``), so a read that needs a second
call resumes from a wrong position; and it yields one ctypes object per
element, where ``maps.PinnedMaps.counters`` sums per-CPU u64s straight from
one buffer.

The syscall number differs per architecture and has no portable source in
Python: ``_SYS_BPF`` lists the ones we know, and any other machine gets a
clear error on first use (never a guessed number, which would call some
other syscall).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import lru_cache

# __NR_bpf per `uname -m` (include/uapi/asm-generic/unistd.h and the arch tables).
_SYS_BPF = {
    "x86_64": 321,
    "i386": 357, "i686": 357,
    "aarch64": 280, "riscv64": 280, "loongarch64": 280,
    "armv7l": 386, "armv6l": 386,
    "ppc64le": 361, "ppc64": 361,
    "s390x": 351,
}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_PROG_LOAD = 5
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_BTF_GET_FD_BY_ID = 19
BPF_MAP_LOOKUP_BATCH = 24
BPF_OBJ_PIN = 6
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_LINK_UPDATE = 29
BPF_LINK_DETACH = 34

# enum bpf_attach_type: tcx (Linux 6.6+), links on the ingress/egress hooks without a qdisc.
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_LINK_TYPE_TCX = 11
# netkit (Linux 6.7+): the programs of a netkit pair, both attached through the primary's ifindex.
BPF_NETKIT_PRIMARY = 54
BPF_NETKIT_PEER = 55
BPF_LINK_TYPE_NETKIT = 13

BPF_PROG_TYPE_SCHED_CLS = 3
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) command failed; errno tells why."""


class UnknownMachine(BpfError):
    """No bpf(2) syscall number known for this architecture."""


def syscall_number(machine: str | None = None) -> int:
    """__NR_bpf for machine (default: this one); UnknownMachine if not in _SYS_BPF."""
    machine = machine or os.uname().machine
    try:
        return _SYS_BPF[machine]
    except KeyError:
        raise UnknownMachine(errno.ENOSYS, f"bpf(2): no syscall number known for machine "
                                           f"{machine!r}; add it to bpfnet.datapath.bpfsys"
                                           f"._SYS_BPF") from None


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = int(_libc.syscall(syscall_number(), cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


class _ObjGetAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class _TestRunAttr(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32),
                ("insns", ctypes.c_uint64), ("license", ctypes.c_uint64),
                ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32),
                ("prog_flags", ctypes.c_uint32), ("prog_name", ctypes.c_char * 16)]


class _ProgInfo(ctypes.Structure):
    # Prefix of struct bpf_prog_info; info_len tells the kernel how much we read.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("tag", ctypes.c_uint8 * 8), ("jited_prog_len", ctypes.c_uint32),
                ("xlated_prog_len", ctypes.c_uint32), ("jited_prog_insns", ctypes.c_uint64),
                ("xlated_prog_insns", ctypes.c_uint64), ("load_time", ctypes.c_uint64),
                ("created_by_uid", ctypes.c_uint32), ("nr_map_ids", ctypes.c_uint32),
                ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


class _MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32),
                ("btf_vmlinux_value_type_id", ctypes.c_uint32), ("netns_dev", ctypes.c_uint64),
                ("netns_ino", ctypes.c_uint64), ("btf_id", ctypes.c_uint32),
                ("btf_key_type_id", ctypes.c_uint32), ("btf_value_type_id", ctypes.c_uint32)]


class _LinkCreateAttr(ctypes.Structure):
    # link_create with the tcx (or the identical netkit) member of its trailing union (relative_fd, expected_revision):
    # both zero = append after the programs already on the hook, any revision.
    _fields_ = [("prog_fd", ctypes.c_uint32), ("target_ifindex", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("flags", ctypes.c_uint32),
                ("relative_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("expected_revision", ctypes.c_uint64)]


class _QueryAttr(ctypes.Structure):
    _fields_ = [("target_ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("count", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("prog_attach_flags", ctypes.c_uint64),
                ("link_ids", ctypes.c_uint64), ("link_attach_flags", ctypes.c_uint64),
                ("revision", ctypes.c_uint64)]


class _LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", ctypes.c_uint32), ("new_prog_fd", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("old_prog_fd", ctypes.c_uint32)]


class _LinkInfo(ctypes.Structure):
    # Prefix of struct bpf_link_info: the union starts 8-aligned (it holds u64s),
    # and its tcx member is {ifindex, attach_type}.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("ifindex", ctypes.c_uint32), ("attach_type", ctypes.c_uint32)]


class _IdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _BtfInfo(ctypes.Structure):
    _fields_ = [("btf", ctypes.c_uint64), ("btf_size", ctypes.c_uint32),
                ("id", ctypes.c_uint32), ("name", ctypes.c_uint64),
                ("name_len", ctypes.c_uint32), ("kernel_btf", ctypes.c_uint32)]


@dataclass(frozen=True)
class ProgInfo:
    id: int
    tag: str
    name: str


@dataclass(frozen=True)
class LinkInfo:
    type: int
    id: int
    prog_id: int
    ifindex: int  # tcx: 0 once the device is gone (the kernel detached the link)
    attach_type: int


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    btf_id: int = 0  # 0: created without BTF
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0


@dataclass(frozen=True)
class TestRunResult:
    retval: int
    data: bytes
    ctx: bytes
    duration_ns: int


@lru_cache(maxsize=1)
def possible_cpus() -> int:
    """Number of possible CPUs: per-CPU map values come in this many copies."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        spec = f.read().strip()
    n = 0
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        n = max(n, int(hi or lo) + 1)
    return n


def obj_get(path: str) -> int:
    """Open a pinned map or program; returns a new fd the caller must close."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = _ObjGetAttr(pathname=ctypes.addressof(p))
    return _bpf(BPF_OBJ_GET, attr)


def obj_pin(fd: int, path: str) -> None:
    """Pin a map, program or link at path (a new name on bpffs)."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _ObjGetAttr(pathname=ctypes.addressof(p), bpf_fd=fd))


def link_create(prog_fd: int, ifindex: int, attach_type: int) -> int:
    """BPF_LINK_CREATE on a device hook (tcx); returns the link fd."""
    return _bpf(BPF_LINK_CREATE, _LinkCreateAttr(prog_fd=prog_fd, target_ifindex=ifindex,
                                                 attach_type=attach_type))


def link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the link's program atomically (no moment without one)."""
    _bpf(BPF_LINK_UPDATE, _LinkUpdateAttr(link_fd=link_fd, new_prog_fd=prog_fd))


def link_detach(link_fd: int) -> None:
    """Detach the link from its hook now, whoever else still holds it."""
    class _Attr(ctypes.Structure):
        _fields_ = [("link_fd", ctypes.c_uint32)]
    _bpf(BPF_LINK_DETACH, _Attr(link_fd=link_fd))


def tcx_query(ifindex: int, attach_type: int, max_progs: int = 64) -> list[tuple[int, int]]:
    """(program id, link id) of every program on a device's tcx hook, in run
    order (BPF_PROG_QUERY); the kernel's own view, independent of our pins."""
    progs = (ctypes.c_uint32 * max_progs)()
    links = (ctypes.c_uint32 * max_progs)()
    attr = _QueryAttr(target_ifindex=ifindex, attach_type=attach_type,
                      prog_ids=ctypes.addressof(progs), count=max_progs,
                      link_ids=ctypes.addressof(links))
    _bpf(BPF_PROG_QUERY, attr)
    return [(progs[i], links[i]) for i in range(attr.count)]


def link_info(fd: int) -> LinkInfo:
    info = _LinkInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return LinkInfo(info.type, info.id, info.prog_id, info.ifindex, info.attach_type)


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.name.decode(errors="replace"), info.btf_id, info.btf_key_type_id,
                   info.btf_value_type_id)


def btf_data(btf_id: int) -> bytes:
    """The raw BTF blob (header, types, strings) of a loaded BTF object."""
    fd = _bpf(BPF_BTF_GET_FD_BY_ID, _IdAttr(id=btf_id))
    try:
        info = _BtfInfo()
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)  # first call: the size only
        buf = ctypes.create_string_buffer(info.btf_size)
        info = _BtfInfo(btf=ctypes.addressof(buf), btf_size=len(buf))
        attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
        return buf.raw[: info.btf_size]
    finally:
        os.close(fd)


def prog_info(fd: int) -> ProgInfo:
    info = _ProgInfo()
    attr = _InfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return ProgInfo(info.id, bytes(info.tag).hex(), info.name.decode(errors="replace"))


def prog_fd_by_id(prog_id: int) -> int:
    """Open a loaded program by its kernel id; returns a new fd the caller must close."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _IdAttr(id=prog_id))


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=fd, key=_addr(k), value=_addr(v)))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Value for key (all CPUs' copies for per-CPU maps), or None if absent."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=fd, key=_addr(k), value=_addr(v)))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete key; False if it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _ElemAttr(map_fd=fd, key=_addr(k)))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup_batch(fd: int, key_size: int, value_size: int,
                     max_entries: int) -> tuple[bytes, bytes, int]:
    """Read a whole map with BPF_MAP_LOOKUP_BATCH.

    value_size is the size of one value as the syscall returns it (for per-CPU
    maps: round_up(value_size, 8) * possible_cpus()). Returns (keys, values,
    count) as packed buffers. Asking for max_entries at once means a single
    syscall for arrays and, in practice, for hash maps; the loop only covers
    a hash map growing while we read.
    """
    keys = ctypes.create_string_buffer(key_size * max_entries)
    values = ctypes.create_string_buffer(value_size * max_entries)
    # The batch token is opaque; hash maps use a u32 bucket index, arrays the key.
    token_in = ctypes.create_string_buffer(max(key_size, 8))
    token_out = ctypes.create_string_buffer(max(key_size, 8))
    total = 0
    first = True
    while total < max_entries:
        attr = _BatchAttr(
            in_batch=0 if first else ctypes.addressof(token_in),
            out_batch=ctypes.addressof(token_out),
            keys=ctypes.addressof(keys) + total * key_size,
            values=ctypes.addressof(values) + total * value_size,
            count=max_entries - total, map_fd=fd)
        done = False
        try:
            _bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except BpfError as e:
            if e.errno != errno.ENOENT:  # ENOENT: reached the end (count still valid)
                raise
            done = True
        total += attr.count
        if done or attr.count == 0:
            break
        ctypes.memmove(token_in, token_out, len(token_out.raw))
        first = False
    return keys.raw[: total * key_size], values.raw[: total * value_size], total


def prog_test_run(fd: int, data: bytes, ctx: bytes | None = None, data_out_size: int = 0,
                  repeat: int = 1) -> TestRunResult:
    """Run a loaded program once on data (BPF_PROG_TEST_RUN); for tests.

    For sched_cls programs ctx is a struct __sk_buff (ifindex must name a
    device of the caller's network namespace).
    """
    din = ctypes.create_string_buffer(data, len(data))
    out_size = data_out_size or len(data) + 256
    dout = ctypes.create_string_buffer(out_size)
    cin = ctypes.create_string_buffer(ctx, len(ctx)) if ctx is not None else None
    cout = ctypes.create_string_buffer(len(ctx)) if ctx is not None else None
    attr = _TestRunAttr(prog_fd=fd, data_size_in=len(data), data_size_out=out_size,
                        data_in=_addr(din), data_out=_addr(dout), repeat=repeat,
                        ctx_size_in=len(ctx) if ctx else 0,
                        ctx_size_out=len(ctx) if ctx else 0,
                        ctx_in=_addr(cin), ctx_out=_addr(cout))
    _bpf(BPF_PROG_TEST_RUN, attr)
    return TestRunResult(attr.retval, dout.raw[: attr.data_size_out],
                         cout.raw[: attr.ctx_size_out] if cout is not None else b"",
                         attr.duration)


def prog_load(prog_type: int, insns: bytes, name: str = "") -> int:
    """Load raw instructions (8 bytes each); returns the program fd."""
    buf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = _ProgLoadAttr(prog_type=prog_type, insn_cnt=len(insns) // 8,
                         insns=ctypes.addressof(buf), license=ctypes.addressof(lic),
                         prog_name=name.encode()[:15])
    return _bpf(BPF_PROG_LOAD, attr)
