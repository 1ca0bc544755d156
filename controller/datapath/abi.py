"""The datapath's binary interface: the one definition of what C and Python share.

Boundary: pure declarations, no I/O. Every struct the programs and the
controller exchange through maps is declared here once, as an ordered list of
fields (name, C type, array dimensions); so are the limits, the datapath mode
names and the maps themselves. Everything else is derived or checked:

- Python packing (``Struct.fmt``, ``Struct.pack``, offsets) is computed from the
  fields with C's natural alignment rules, so it cannot disagree with itself.
- The limits reach C only as -D cflags (``cflags()``); ``bpf/maps.h`` stops with
  ``#error`` when one is missing instead of carrying its own default.
- The C structs stay hand-written in ``bpf/maps.h`` (readable, greppable) and are
  CHECKED against this module field by field, twice (``datapath/layout.py``):
  at compile time by checks appended to the rendered source
  (``compile_checks()``: offset and size of every field, sizeof every struct,
  the enum values), and at load time against the BTF the kernel keeps for
  every map, which also covers maps pinned by an older build whose total size
  still matches. That is Cilium's pkg/alignchecker, for bcc.

Changing a struct: edit ``bpf/maps.h`` and the declaration below together; a
build where they disagree refuses to load with a message naming the struct,
the field and both offsets.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from math import prod
from typing import Any

from .drop_reasons import DropReason

# -- datapath modes ------------------------------------------------------------
MODE_REDIRECT_PEER = "redirect-peer"  # bpf_redirect_peer into the endpoint's eth0
MODE_REDIRECT = "redirect"  # bpf_redirect out of the endpoint's host veth
MODE_BRIDGE = "bridge"  # no programs: the Linux bridge forwards everything
EBPF_MODES = (MODE_REDIRECT_PEER, MODE_REDIRECT)
MODES = (*EBPF_MODES, MODE_BRIDGE)
MODE_AUTO = "auto"
REQUESTABLE_MODES = (MODE_AUTO, *MODES)  # what --datapath accepts

# -- attach mechanisms (how the programs sit on a device's hook) ----------------
ATTACH_TCX = "tcx"  # BPF links on the tcx ingress/egress hooks (Linux 6.6+)
ATTACH_TC = "tc"  # clsact qdisc + direct-action cls_bpf filters (the fallback)
ATTACHES = (ATTACH_TCX, ATTACH_TC)
REQUESTABLE_ATTACHES = (MODE_AUTO, *ATTACHES)

# -- endpoint devices (what an endpoint's device pair is) ------------------------
ENDPOINT_VETH = "veth"  # a veth pair; programs on the host end's tc hooks
ENDPOINT_NETKIT = "netkit"  # a netkit pair, L2 mode (Linux 6.7+); ep_ingress inside the peer's transmit
ENDPOINT_DEVICES = (ENDPOINT_VETH, ENDPOINT_NETKIT)
REQUESTABLE_ENDPOINT_DEVICES = (MODE_AUTO, *ENDPOINT_DEVICES)

# -- limits --------------------------------------------------------------------
DEFAULT_MAX_ENDPOINTS = 4096  # endpoint slots (array sizes); configurable per daemon
MAX_ENDPOINTS_LIMIT = 65536  # the most max_endpoints may be
MAX_NETWORKS = 1024  # network ids 1 .. MAX_NETWORKS - 1 (0 is never used)
MAX_EP_IPV6 = 4  # IPv6 addresses per endpoint: global ones + the EUI-64 link-local
MAX_GATEWAY6 = 2  # IPv6 gateways per network
# The datapath's DNS answers (bpf/dns.h): a name's wire form (lowercase, with its final zero
# byte) in at most DNS_NAME_MAX bytes, at most DNS_MAX_ADDRS addresses per family; longer
# names and names with more addresses are answered by the resolver process alone.
DNS_NAME_MAX = 96
DNS_MAX_ADDRS = 2
DNS_NAMES_PER_ENDPOINT = 4  # dns_names entries per endpoint slot: name, NAME.NETWORK, hostname/alias ...

DIRECTIONS = ("tx", "rx")  # enum direction: DIR_TX = 0, DIR_RX = 1

# published ports' fast path (bpf/nat.h)
MAX_ROUTED = 8  # routed networks the uplink program walks (routed_networks slots)
MAX_PUBLISHED = 4096  # published_ports entries (one per mapping and family) and counter slots
MAX_FLOWS = 65536  # published_flows entries: two per flow (in, out); LRU beyond
FLOW_TCP_IDLE = 3600  # s: a TCP flow idle this long leaves the fast path (conntrack: 5 days)
FLOW_UDP_IDLE = 20  # s: < conntrack's 30 s UDP timeout minus FLOW_REFRESH (see nat.h)
FLOW_REFRESH = 5  # s: one UDP packet per direction this often goes the kernel's way
FLOW_STATES = ("new", "established")  # enum flow_state
FLOW_DIRS = ("in", "out")  # enum flow_dir


# -- C types -------------------------------------------------------------------
@dataclass(frozen=True)
class Scalar:
    """A fixed-size integer type as maps.h spells it."""

    name: str
    size: int
    code: str  # struct module code

    @property
    def align(self) -> int:
        return self.size


U8 = Scalar("__u8", 1, "B")
U16 = Scalar("__u16", 2, "H")
BE16 = Scalar("__be16", 2, "H")
U32 = Scalar("__u32", 4, "I")
BE32 = Scalar("__be32", 4, "I")
U64 = Scalar("__u64", 8, "Q")


@dataclass(frozen=True)
class Field:
    """One struct member. as_bytes: packed as raw bytes in Python (addresses in
    network byte order, MACs); pad: explicit padding the C struct names."""

    name: str
    type: Scalar | Struct
    dims: tuple[int, ...] = ()
    as_bytes: bool = False
    pad: bool = False

    @property
    def count(self) -> int:
        return prod(self.dims)

    @property
    def size(self) -> int:
        return self.type.size * self.count

    @property
    def align(self) -> int:
        return self.type.align

    def fmt(self) -> str:
        if self.pad:
            return f"{self.size}x"
        if isinstance(self.type, Struct):
            return self.type.fmt_body() * self.count
        if self.as_bytes or (self.type.size == 1 and self.dims):
            return f"{self.size}s"
        return f"{self.count}{self.type.code}" if self.dims else self.type.code


@dataclass(frozen=True)
class Struct:
    """A C struct: fields in declaration order, laid out as the C compiler does
    (each field at the next multiple of its alignment, size rounded up to the
    largest alignment)."""

    name: str
    fields: tuple[Field, ...]

    @cached_property
    def offsets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        off = 0
        for f in self.fields:
            off = -(-off // f.align) * f.align
            out[f.name] = off
            off += f.size
        return out

    @property
    def align(self) -> int:
        return max(f.align for f in self.fields)

    @cached_property
    def size(self) -> int:
        last = self.fields[-1]
        end = self.offsets[last.name] + last.size
        return -(-end // self.align) * self.align

    def fmt_body(self) -> str:
        """struct-module codes with explicit pad bytes wherever C pads."""
        parts: list[str] = []
        off = 0
        for f in self.fields:
            gap = self.offsets[f.name] - off
            if gap:
                parts.append(f"{gap}x")
            parts.append(f.fmt())
            off = self.offsets[f.name] + f.size
        if self.size > off:
            parts.append(f"{self.size - off}x")
        return "".join(parts)

    @cached_property
    def codec(self) -> struct.Struct:
        """Packs the non-pad fields in order; "=": native order, no implicit padding."""
        s = struct.Struct("=" + self.fmt_body())
        if s.size != self.size:  # a bug in this module, not a drift
            raise AssertionError(f"struct {self.name}: format {s.format} is {s.size} bytes, "
                                 f"C layout {self.size}")
        return s

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"struct {self.name} has no field {name!r}")

    def pack(self, **values: int | bytes) -> bytes:
        """Pack by field name (flat structs only: scalars and byte arrays)."""
        data = [f.name for f in self.fields if not f.pad]
        missing = set(data) ^ set(values)
        if missing:
            raise TypeError(f"struct {self.name}: fields {sorted(missing)} missing or unknown")
        return self.codec.pack(*(values[n] for n in data))

    def unpack(self, raw: bytes) -> dict[str, Any]:
        """Non-pad fields by name: ints, and bytes for byte arrays."""
        data = [f.name for f in self.fields if not f.pad]
        return dict(zip(data, self.codec.unpack(raw), strict=True))


# -- the structs of bpf/maps.h, in its order --------------------------------------
ENDPOINT = Struct("endpoint", (
    Field("id", U32),
    Field("network_id", U32),
    Field("ifindex", U32),
    Field("mac", U8, (6,), as_bytes=True),
    Field("n_ipv6", U8),
    Field("pad", U8, pad=True),
    Field("ipv4", BE32, as_bytes=True),
    Field("ipv6", U32, (MAX_EP_IPV6, 4), as_bytes=True),
))

NETWORK = Struct("network", (
    Field("id", U32),
    Field("bridge_ifindex", U32),
    Field("icc", U8),
    Field("n_gateway6", U8),
    Field("bridge_mac", U8, (6,), as_bytes=True),
    Field("gateway4", BE32, as_bytes=True),
    Field("gateway6", U32, (MAX_GATEWAY6, 4), as_bytes=True),
    Field("internal", U8),
    Field("vni", U32),  # overlay networks: the VXLAN network identifier; 0: not an overlay
    Field("routed4", BE32, as_bytes=True),  # routed networks: the cluster subnet
    Field("routed6", U32, (4,), as_bytes=True),  # ... and the IPv6 one
    Field("routed4_plen", U8),  # 0: not a routed network
    Field("routed6_plen", U8),  # 0: no routed IPv6
    Field("pad2", U8, (2,), pad=True),
))

EP_IPV4_KEY = Struct("ep_ipv4_key", (
    Field("network_id", U32),
    Field("addr", BE32, as_bytes=True),
))

EP_IPV6_KEY = Struct("ep_ipv6_key", (
    Field("network_id", U32),
    Field("addr", U32, (4,), as_bytes=True),
))

# The counters: plain u64s, so the controller sums them over CPUs as one array
# of u64 (see datapath/counters.py, which names them).
PATH_COUNTERS = Struct("path_counters", (
    Field("fast_packets", U64),
    Field("fast_bytes", U64),
    Field("kernel_packets", U64),
    Field("kernel_bytes", U64),
    Field("tunnel_packets", U64),
    Field("tunnel_bytes", U64),
    Field("routed_packets", U64),
    Field("routed_bytes", U64),
    Field("drops", U64, (len(DropReason),)),
))

ENDPOINT_COUNTERS = Struct("endpoint_counters", (
    Field("dir", PATH_COUNTERS, (len(DIRECTIONS),)),
))

# An endpoint of an overlay network on another host (bpf/tunnel.h), keyed like the local
# endpoints by (network id, address): where to send its packets.
REMOTE_ENDPOINT = Struct("remote_endpoint", (
    Field("vtep", BE32, as_bytes=True),  # its host's --advertise-addr, network byte order
    Field("mac", U8, (6,), as_bytes=True),  # its eth0's MAC
    Field("pad", U8, (2,), pad=True),
))

# The overlay's VXLAN device (one per managed namespace), this host's VTEP for the programs'
# own encapsulation, and what came in through the tunnel that no local endpoint took.
TUNNEL_CONFIG = Struct("tunnel_config", (
    Field("ifindex", U32),  # bpfnet_vx; 0: no overlay on this host
    Field("vtep", BE32, as_bytes=True),  # --advertise-addr; 0.0.0.0: encapsulate through bpfnet_vx only
    Field("uplink_ifindex", U32),  # the link holding it: where the outer route is looked up
    Field("pad", U32, pad=True),
))

TUNNEL_COUNTERS = Struct("tunnel_counters", (
    Field("rx_packets", U64),  # decapsulated and delivered to a local endpoint
    Field("rx_bytes", U64),
    Field("rx_unknown", U64),  # no network for the VNI, or no endpoint for the address
    Field("rx_not_ip", U64),  # ARP, broadcast, multicast: not carried across hosts
    Field("tx_native", U64),  # encapsulated by the endpoint program itself (not bpfnet_vx)
    Field("rx_native", U64),  # decapsulated by uplink_ingress itself (of rx_packets)
))

# Published ports' fast path: addresses as 16 bytes (IPv4 in the first 4, the rest zero),
# ports in network byte order (packed as 2 raw bytes).
PUBLISHED_KEY = Struct("published_key", (
    Field("addr", U32, (4,), as_bytes=True),
    Field("port", BE16, as_bytes=True),
    Field("proto", U8),
    Field("family", U8),
))

PUBLISHED_PORT = Struct("published_port", (
    Field("addr", U32, (4,), as_bytes=True),
    Field("port", BE16, as_bytes=True),
    Field("pad", U16, pad=True),
    Field("endpoint_id", U32),
    Field("slot", U32),
))

FLOW_KEY = Struct("flow_key", (
    Field("saddr", U32, (4,), as_bytes=True),
    Field("daddr", U32, (4,), as_bytes=True),
    Field("sport", BE16, as_bytes=True),
    Field("dport", BE16, as_bytes=True),
    Field("proto", U8),
    Field("family", U8),
    Field("pad", U8, (2,), pad=True),
))

FLOW = Struct("flow", (
    Field("addr", U32, (4,), as_bytes=True),
    Field("port", BE16, as_bytes=True),
    Field("state", U8),
    Field("dir", U8),
    Field("endpoint_id", U32),
    Field("slot", U32),
    Field("last_ns", U64),
    Field("kernel_ns", U64),
))

PORT_COUNTERS = Struct("port_counters", (
    Field("packets", U64, (len(FLOW_DIRS),)),
    Field("bytes", U64, (len(FLOW_DIRS),)),
))

# DNS: (network id, query name in wire form, lowercase, zero-padded) -> the name's addresses
DNS_NAME_KEY = Struct("dns_name_key", (
    Field("network_id", U32),
    Field("name", U8, (DNS_NAME_MAX,), as_bytes=True),
))

DNS_ADDRS = Struct("dns_addrs", (
    Field("n_ipv4", U8),
    Field("n_ipv6", U8),
    Field("pad", U8, (2,), pad=True),
    Field("ipv4", BE32, (DNS_MAX_ADDRS,), as_bytes=True),
    Field("ipv6", U32, (DNS_MAX_ADDRS, 4), as_bytes=True),
))

# per network id: queries the datapath answered (by type) and those it passed to the resolver
DNS_COUNTERS = Struct("dns_counters", (
    Field("answered_a", U64),
    Field("answered_aaaa", U64),
    Field("passed", U64),
))

STRUCTS = (ENDPOINT, NETWORK, EP_IPV4_KEY, EP_IPV6_KEY, PATH_COUNTERS, ENDPOINT_COUNTERS,
           PUBLISHED_KEY, PUBLISHED_PORT, FLOW_KEY, FLOW, PORT_COUNTERS, DNS_NAME_KEY, DNS_ADDRS, DNS_COUNTERS,
           REMOTE_ENDPOINT, TUNNEL_CONFIG, TUNNEL_COUNTERS)

# Enumerators C must number exactly like Python (checked by compile_checks()).
ENUMS: Mapping[str, int] = {
    **{f"DIR_{d.upper()}": i for i, d in enumerate(DIRECTIONS)},
    **{f"DROP_{r.name}": r.value for r in DropReason},
    "DROP_REASON_COUNT": len(DropReason),
    **{f"FLOW_{st.upper()}": i for i, st in enumerate(FLOW_STATES)},
    **{f"FLOW_{d.upper()}": i for i, d in enumerate(FLOW_DIRS)},
}


# -- the maps of bpf/maps.h ---------------------------------------------------------
@dataclass(frozen=True)
class MapDef:
    """One pinned map: name (= pin name), kind as BPF_TABLE_PINNED spells it
    ("hash", "lru_hash", "array", "percpu_array"), key and value type, and its number of
    entries as a function of max_endpoints."""

    name: str
    kind: str
    key: Scalar | Struct
    value: Scalar | Struct
    entries: Callable[[int], int]


MAPS = (
    MapDef("endpoint_by_ifindex", "hash", U32, ENDPOINT, lambda n: n),
    MapDef("endpoint_id_by_ipv4", "hash", EP_IPV4_KEY, U32, lambda n: n),
    MapDef("endpoint_id_by_ipv6", "hash", EP_IPV6_KEY, U32,
           lambda n: n * MAX_EP_IPV6),
    MapDef("endpoint_by_id", "array", U32, ENDPOINT, lambda n: n),
    MapDef("network_by_id", "array", U32, NETWORK, lambda n: MAX_NETWORKS),
    MapDef("network_by_bridge_ifindex", "hash", U32, U32, lambda n: MAX_NETWORKS),
    MapDef("endpoint_counters", "percpu_array", U32, ENDPOINT_COUNTERS, lambda n: n),
    MapDef("remote_by_ipv4", "hash", EP_IPV4_KEY, REMOTE_ENDPOINT, lambda n: n),
    MapDef("remote_by_ipv6", "hash", EP_IPV6_KEY, REMOTE_ENDPOINT, lambda n: n * MAX_EP_IPV6),
    MapDef("network_by_vni", "hash", U32, U32, lambda n: MAX_NETWORKS),
    MapDef("tunnel_config", "array", U32, TUNNEL_CONFIG, lambda n: 1),
    MapDef("tunnel_counters", "percpu_array", U32, TUNNEL_COUNTERS, lambda n: 1),
    MapDef("routed_networks", "array", U32, U32, lambda n: MAX_ROUTED),
    MapDef("published_ports", "hash", PUBLISHED_KEY, PUBLISHED_PORT, lambda n: MAX_PUBLISHED),
    MapDef("published_flows", "lru_hash", FLOW_KEY, FLOW, lambda n: MAX_FLOWS),
    MapDef("published_port_counters", "percpu_array", U32, PORT_COUNTERS, lambda n: MAX_PUBLISHED),
    MapDef("dns_names", "hash", DNS_NAME_KEY, DNS_ADDRS, lambda n: n * DNS_NAMES_PER_ENDPOINT),
    MapDef("dns_counters", "percpu_array", U32, DNS_COUNTERS, lambda n: MAX_NETWORKS),
)


def check_max_endpoints(max_endpoints: int) -> int:
    if not 0 < max_endpoints <= MAX_ENDPOINTS_LIMIT:
        raise ValueError(f"max_endpoints must be in [1, {MAX_ENDPOINTS_LIMIT}], "
                         f"got {max_endpoints}")
    return max_endpoints


# -- what C gets -----------------------------------------------------------------
def cflags(mode: str, max_endpoints: int) -> list[str]:
    """The limits and the mode as -D flags: C has no defaults of its own."""
    if mode not in EBPF_MODES:
        raise ValueError(f"no eBPF programs for mode {mode!r}; eBPF modes: {EBPF_MODES}")
    return [
        f"-DMAX_ENDPOINTS={check_max_endpoints(max_endpoints)}",
        f"-DMAX_NETWORKS={MAX_NETWORKS}",
        f"-DMAX_EP_IPV6={MAX_EP_IPV6}",
        f"-DMAX_GATEWAY6={MAX_GATEWAY6}",
        f"-DMAX_PUBLISHED={MAX_PUBLISHED}",
        f"-DMAX_ROUTED={MAX_ROUTED}",
        f"-DMAX_FLOWS={MAX_FLOWS}",
        f"-DFLOW_TCP_IDLE={FLOW_TCP_IDLE}",
        f"-DFLOW_UDP_IDLE={FLOW_UDP_IDLE}",
        f"-DFLOW_REFRESH={FLOW_REFRESH}",
        f"-DDNS_NAME_MAX={DNS_NAME_MAX}",
        f"-DDNS_MAX_ADDRS={DNS_MAX_ADDRS}",
        f"-DDNS_NAMES_PER_ENDPOINT={DNS_NAMES_PER_ENDPOINT}",
        f"-DBPFNET_REDIRECT_PEER={1 if mode == MODE_REDIRECT_PEER else 0}",
    ]


CHECK_FILE = "bpfnet-abi-check"  # the #line file name of the appended checks


@dataclass(frozen=True)
class Check:
    """One compile-time comparison: C expression c_expr must equal want."""

    what: str  # e.g. "struct endpoint field ipv6 offset"
    c_expr: str
    want: int


def checks(structs: tuple[Struct, ...] = STRUCTS,
           enums: Mapping[str, int] = ENUMS) -> list[Check]:
    """Every offset, member size, struct size and enumerator value to compare."""
    out: list[Check] = []
    for s in structs:
        for f in s.fields:
            ref = f"struct {s.name} field {f.name}"
            out.append(Check(f"{ref} offset", f"__builtin_offsetof(struct {s.name}, {f.name})",
                             s.offsets[f.name]))
            out.append(Check(f"{ref} size", f"sizeof(((struct {s.name} *)0)->{f.name})", f.size))
        out.append(Check(f"struct {s.name} size", f"sizeof(struct {s.name})", s.size))
    for name, value in enums.items():
        out.append(Check(f"enumerator {name}", f"(int){name}", value))
    return out


def compile_checks(items: list[Check]) -> str:
    """C text appended to the rendered source: line i+1 checks items[i].

    Each check is a pair of typedefs of char arrays sized by the C expression
    and by abi.py's value; if they differ, clang reports "typedef redefinition
    with different types ('char[<abi.py>]' vs 'char[<C>]')" at that line, so
    the loader can name both numbers (clang 14's _Static_assert cannot). Typedefs
    emit no code and no BTF.
    """
    lines = [f'#line 1 "{CHECK_FILE}"']
    for i, c in enumerate(items):
        t = f"bpfnet_abi_check_{i}"
        lines.append(f"typedef char {t}[{c.c_expr}]; typedef char {t}[{c.want}];")
    return "\n".join(lines) + "\n"
