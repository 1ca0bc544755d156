"""Packing of bpfnet's map entries and access to the pinned maps.

Boundary: the layouts come from ``abi.py`` (the one definition C and Python
share; the C side is checked against it, see ``layout.py``); this module packs
and unpacks entries with them and talks to pinned maps through raw fds; it
knows nothing about tc or program loading. Addresses are packed in network
byte order, as the programs compare them with packet fields directly;
everything else is host order.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address

from ..addressing import link_local_from_mac
from ..model import EndpointSpec, NetworkSpec, RemoteEndpointSpec
from . import abi, bpfsys, layout
from . import counters as counters_mod
from .counters import EndpointCounters

log = logging.getLogger(__name__)

U32_FMT = "=I"
COUNTERS_SIZE = abi.ENDPOINT_COUNTERS.size

_MAP_TYPES = {"hash": bpfsys.BPF_MAP_TYPE_HASH, "array": bpfsys.BPF_MAP_TYPE_ARRAY,
              "percpu_array": bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY,
              "lru_hash": bpfsys.BPF_MAP_TYPE_LRU_HASH}


@dataclass(frozen=True)
class MapSpec:
    """What a pinned map must look like to be reused after a restart."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    abi: abi.MapDef


def map_specs(max_endpoints: int, maps: tuple[abi.MapDef, ...] = abi.MAPS) -> tuple[MapSpec, ...]:
    """The pinned maps of this version (abi.MAPS) at this max_endpoints. A map
    whose values change meaning keeps its layout, so it must get a new name in
    abi.py and maps.h: check_pins() removes pins whose name is not listed (e.g.
    endpoint_by_ipv4, whose values were ifindexes before they were endpoint
    ids). endpoint_by_ifindex and endpoint_by_id hold the same records: the
    sender's is found by ifindex, the destination's by the id an address map
    yields."""
    return tuple(MapSpec(d.name, _MAP_TYPES[d.kind], d.key.size, d.value.size,
                         d.entries(max_endpoints), d) for d in maps)


def is_array(spec: MapSpec) -> bool:
    """Array elements always exist: they are emptied by writing zeros, never deleted."""
    return spec.type in (bpfsys.BPF_MAP_TYPE_ARRAY, bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY)


def mac_bytes(mac: str) -> bytes:
    b = bytes(int(x, 16) for x in mac.split(":"))
    if len(b) != 6:
        raise ValueError(f"bad MAC address {mac!r}")
    return b


def endpoint_ipv6(ep: EndpointSpec) -> tuple[IPv6Address, ...]:
    """Addresses an endpoint may send from and receive on: its own plus the EUI-64
    link-local of its MAC (what the kernel configures on eth0 by default)."""
    addrs = list(dict.fromkeys(ep.ipv6))
    ll = link_local_from_mac(ep.mac)
    if ll not in addrs:
        addrs.append(ll)
    if len(addrs) > abi.MAX_EP_IPV6:
        raise ValueError(f"endpoint {ep.name}: at most {abi.MAX_EP_IPV6 - 1} IPv6 addresses "
                         f"besides the EUI-64 link-local, got {list(map(str, ep.ipv6))}")
    return tuple(addrs)


@dataclass(frozen=True)
class EndpointEntry:
    """A decoded struct endpoint."""

    id: int
    network_id: int
    ifindex: int
    mac: bytes
    ipv4: IPv4Address
    ipv6: tuple[IPv6Address, ...]


def pack_endpoint(ep: EndpointSpec) -> bytes:
    v6 = endpoint_ipv6(ep)
    return abi.ENDPOINT.pack(id=ep.id, network_id=ep.network_id, ifindex=ep.host_ifindex,
                             mac=mac_bytes(ep.mac), n_ipv6=len(v6), ipv4=ep.ipv4.packed,
                             ipv6=b"".join(a.packed for a in v6))


def unpack_endpoint(raw: bytes) -> EndpointEntry:
    f = abi.ENDPOINT.unpack(raw)
    v6, n = f["ipv6"], min(f["n_ipv6"], abi.MAX_EP_IPV6)
    addrs = tuple(IPv6Address(v6[i * 16:(i + 1) * 16]) for i in range(n))
    return EndpointEntry(f["id"], f["network_id"], f["ifindex"], f["mac"], IPv4Address(f["ipv4"]),
                         addrs)


def pack_network(net: NetworkSpec) -> bytes:
    gw6 = net.gateway6[:abi.MAX_GATEWAY6]
    return abi.NETWORK.pack(id=net.id, bridge_ifindex=net.bridge_ifindex,
                            icc=1 if net.icc else 0, n_gateway6=len(gw6),
                            bridge_mac=mac_bytes(net.bridge_mac), gateway4=net.gateway4.packed,
                            gateway6=b"".join(a.packed for a in gw6),
                            internal=1 if net.internal else 0, vni=net.vni)


def pack_remote(r: RemoteEndpointSpec) -> bytes:
    return abi.REMOTE_ENDPOINT.pack(vtep=r.vtep.packed, mac=mac_bytes(r.mac))


def remote_keys(r: RemoteEndpointSpec) -> list[tuple[str, bytes]]:
    """(map, key) of every entry of a remote endpoint: its IPv4 and IPv6 addresses."""
    return [("remote_by_ipv4", ipv4_key(r.network_id, r.ipv4)),
            *(("remote_by_ipv6", ipv6_key(r.network_id, a)) for a in r.ipv6[:abi.MAX_EP_IPV6])]


def ipv4_key(network_id: int, addr: IPv4Address) -> bytes:
    return abi.EP_IPV4_KEY.pack(network_id=network_id, addr=addr.packed)


def ipv6_key(network_id: int, addr: IPv6Address) -> bytes:
    return abi.EP_IPV6_KEY.pack(network_id=network_id, addr=addr.packed)


@lru_cache(maxsize=1 << 16)  # the DNS service hands over every name on every change
def dns_name_key(network_id: int, wire: bytes) -> bytes:
    """Key of dns_names: the network id and the name in wire form, zero-padded."""
    return abi.DNS_NAME_KEY.pack(network_id=network_id, name=wire)


@lru_cache(maxsize=1 << 16)
def pack_dns_addrs(v4: tuple[bytes, ...], v6: tuple[bytes, ...]) -> bytes:
    return abi.DNS_ADDRS.pack(n_ipv4=len(v4), n_ipv6=len(v6), ipv4=b"".join(v4), ipv6=b"".join(v6))


def u32(v: int) -> bytes:
    return struct.pack(U32_FMT, v)


class PinnedMaps:
    """File descriptors of the pinned maps under one pin directory."""

    def __init__(self, pin_dir: str, max_endpoints: int) -> None:
        self.pin_dir = pin_dir
        self.max_endpoints = max_endpoints
        self.specs = {s.name: s for s in map_specs(max_endpoints)}
        self.fds: dict[str, int] = {}
        try:
            for name in self.specs:
                self.fds[name] = bpfsys.obj_get(os.path.join(pin_dir, name))
        except BaseException:
            self.close()
            raise
        self._ncpu = bpfsys.possible_cpus()
        self._zero_counters = bytes(COUNTERS_SIZE * self._ncpu)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    # -- generic ----------------------------------------------------------
    def put(self, name: str, key: bytes, value: bytes) -> None:
        bpfsys.map_update(self.fds[name], key, value)

    def get(self, name: str, key: bytes) -> bytes | None:
        return bpfsys.map_lookup(self.fds[name], key, self.specs[name].value_size)

    def delete(self, name: str, key: bytes) -> bool:
        return bpfsys.map_delete(self.fds[name], key)

    def clear(self, name: str, key: bytes) -> None:
        """Empty one slot of an (non-per-CPU) array: all zeros, i.e. ifindex 0."""
        self.put(name, key, bytes(self.specs[name].value_size))

    def items(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """All entries of a hash map (every slot of an array), one batch lookup."""
        s = self.specs[name]
        keys, values, n = bpfsys.map_lookup_batch(self.fds[name], s.key_size, s.value_size,
                                                  s.max_entries)
        for i in range(n):
            yield (keys[i * s.key_size:(i + 1) * s.key_size],
                   values[i * s.value_size:(i + 1) * s.value_size])

    # -- endpoints --------------------------------------------------------
    def endpoint_ids(self) -> dict[int, int]:
        """host ifindex -> endpoint id, one batch lookup (only the id field is decoded)."""
        at = abi.ENDPOINT.offsets["id"]
        return {struct.unpack(U32_FMT, k)[0]: struct.unpack_from(U32_FMT, v, at)[0]
                for k, v in self.items("endpoint_by_ifindex")}

    def endpoint(self, ifindex: int) -> EndpointEntry | None:
        """The endpoint record behind a host ifindex, as the map says."""
        raw = self.get("endpoint_by_ifindex", u32(ifindex))
        return None if raw is None else unpack_endpoint(raw)

    def tunnel_counters(self) -> dict[str, int]:
        """tunnel_counters summed over CPUs, by field name."""
        s = abi.TUNNEL_COUNTERS
        raw = bpfsys.map_lookup(self.fds["tunnel_counters"], u32(0), s.size * self._ncpu)
        out = dict.fromkeys((f.name for f in s.fields), 0)
        if raw is not None:
            for c in range(self._ncpu):
                for k, v in s.unpack(raw[c * s.size:(c + 1) * s.size]).items():
                    out[k] += int(v)
        return out

    def zero_counters(self, slot: int) -> None:
        # Per-CPU array elements cannot be deleted; writing zeros for every CPU resets them.
        self.put("endpoint_counters", u32(slot), self._zero_counters)

    def dns_counters(self) -> dict[int, dict[str, int]]:
        """Per network id with any count: the per-CPU DNS counters summed."""
        s = self.specs["dns_counters"]
        fields = [f.name for f in abi.DNS_COUNTERS.fields]
        per_key = abi.DNS_COUNTERS.size * self._ncpu
        keys, values, n = bpfsys.map_lookup_batch(self.fds["dns_counters"], s.key_size, per_key, s.max_entries)
        q = memoryview(values).cast("Q")
        width = len(fields)
        out: dict[int, dict[str, int]] = {}
        for i in range(n):
            base = i * per_key // 8
            sums = [sum(q[base + c * width + f] for c in range(self._ncpu)) for f in range(width)]
            if any(sums):
                out[struct.unpack_from(U32_FMT, keys, i * s.key_size)[0]] = dict(zip(fields, sums, strict=True))
        return out

    def zero_dns_counters(self, network_id: int) -> None:
        self.put("dns_counters", u32(network_id), bytes(abi.DNS_COUNTERS.size * self._ncpu))

    def counters(self, wanted: set[int]) -> dict[int, EndpointCounters]:
        """Summed per-CPU counters of the slots in wanted and of any non-zero slot.

        One BPF_MAP_LOOKUP_BATCH for the whole array; all-zero slots are skipped
        by comparing raw bytes, so the Python work grows with the number of live
        endpoints, not with max_endpoints.
        """
        s = self.specs["endpoint_counters"]
        per_key = COUNTERS_SIZE * self._ncpu  # value_size is a multiple of 8
        keys, values, n = bpfsys.map_lookup_batch(self.fds["endpoint_counters"], s.key_size,
                                                  per_key, s.max_entries)
        mv = memoryview(values)
        zero = self._zero_counters
        q = mv.cast("Q")
        nq = counters_mod.U64_COUNT
        out: dict[int, EndpointCounters] = {}
        for i in range(n):
            slot = struct.unpack_from(U32_FMT, keys, i * s.key_size)[0]
            off = i * per_key
            if mv[off:off + per_key] == zero:
                if slot in wanted:
                    out[slot] = counters_mod.empty()
                continue
            base = off // 8
            sums = [0] * nq
            for c in range(self._ncpu):
                row = q[base + c * nq: base + (c + 1) * nq]
                sums = [a + b for a, b in zip(sums, row)]
            out[slot] = counters_mod.decode(sums)
        for slot in wanted:
            out.setdefault(slot, counters_mod.empty())
        return out


def check_pins(pin_dir: str, max_endpoints: int,
               maps: tuple[abi.MapDef, ...] = abi.MAPS) -> None:
    """Make pin_dir safe for bcc to reuse: unlink pins that are not part of this
    version's layout (maps renamed or dropped by an upgrade), pinned maps whose
    shape no longer matches (e.g. max_endpoints or the drop-reason list
    changed: bcc would fail to reuse them) and pinned maps whose BTF says their
    key or value layout differs from abi.py field by field (same size, other
    field order: bcc would reuse them and every reader would misread them).
    Their contents are lost; the controller re-adds every entry in start()."""
    specs = map_specs(max_endpoints, maps)
    for name in stale_pins(pin_dir, specs):
        path = os.path.join(pin_dir, name)
        log.warning("pinned object %s is not part of this version's map layout: removing it",
                    path)
        os.unlink(path)
    btfs: dict[int, layout.Btf] = {}
    for spec in specs:
        path = os.path.join(pin_dir, spec.name)
        if not os.path.exists(path):
            continue
        fd = bpfsys.obj_get(path)
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        want = (spec.type, spec.key_size, spec.value_size, spec.max_entries)
        if have != want:
            log.warning("pinned map %s has (type, key, value, entries) %s, want %s: "
                        "replacing it, its contents are lost", path, have, want)
            os.unlink(path)
            continue
        drift = map_drift(info, spec.abi, btfs)
        if drift:
            log.warning("pinned map %s was written with another layout (%s%s): replacing it, "
                        "its contents are lost", path, drift[0],
                        f"; {len(drift) - 1} more" if len(drift) > 1 else "")
            os.unlink(path)


def map_drift(info: bpfsys.MapInfo, d: abi.MapDef, btfs: dict[int, layout.Btf]) -> list[str]:
    """Differences between a map's BTF and its abi.py declaration (btfs caches
    the parsed BTF objects by id: all maps of one build share one)."""
    btf = None
    if info.btf_id:
        if info.btf_id not in btfs:
            try:
                btfs[info.btf_id] = layout.Btf(bpfsys.btf_data(info.btf_id))
            except (ValueError, IndexError, struct.error) as e:
                return [f"map {d.name}: its BTF cannot be read ({e})"]
        btf = btfs[info.btf_id]
    return layout.map_drift(btf, info.btf_key_type_id, info.btf_value_type_id, d)


def stale_pins(pin_dir: str, specs: tuple[MapSpec, ...]) -> list[str]:
    """Names of the pins in pin_dir (ours alone) that specs do not list."""
    if not os.path.isdir(pin_dir):
        return []
    want = {s.name for s in specs}
    return sorted(f for f in os.listdir(pin_dir)
                  if f not in want and os.path.isfile(os.path.join(pin_dir, f)))
