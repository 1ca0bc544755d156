"""Byte layouts of bpfnet's BPF maps and access to the pinned maps.

Boundary: this module knows ``bpf/maps.h`` (it mirrors every struct byte for
byte) and talks to pinned maps through raw fds; it knows nothing about tc or
program loading. Addresses are packed in network byte order, as the programs
compare them with packet fields directly; everything else is host order.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from ..addressing import link_local_from_mac
from ..model import EndpointSpec, NetworkSpec
from . import bpfsys
from . import counters as counters_mod
from .counters import EndpointCounters
from .drop_reasons import DropReason

log = logging.getLogger(__name__)

MAX_EP_IPV6 = 4  # struct endpoint.ipv6[] length (MAX_EP_IPV6 in maps.h)
MAX_NETWORKS = 1024

# "=": no padding; the C structs are laid out so that none is needed.
ENDPOINT_FMT = "=III6sBx4s64s"  # struct endpoint
NETWORK_FMT = "=IIBB6s4s32s"  # struct network
EP_IPV4_KEY_FMT = "=I4s"  # struct ep_ipv4_key
EP_IPV6_KEY_FMT = "=I16s"  # struct ep_ipv6_key
U32_FMT = "=I"

N_REASONS = len(DropReason)
COUNTERS_SIZE = counters_mod.COUNTERS_SIZE


@dataclass(frozen=True)
class MapSpec:
    """What a pinned map must look like to be reused after a restart."""

    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int


def map_specs(max_endpoints: int) -> tuple[MapSpec, ...]:
    """The pinned maps of this version. A map whose values change meaning keeps
    its shape, so it must get a new name here and in maps.h: check_pins()
    removes pins whose name is not listed (e.g. endpoint_by_ipv4, whose values
    were ifindexes before they were endpoint ids). endpoint_by_ifindex and
    endpoint_by_id hold the same records: the sender's is found by ifindex, the
    destination's by the id an address map yields."""
    h, a, pa = (bpfsys.BPF_MAP_TYPE_HASH, bpfsys.BPF_MAP_TYPE_ARRAY,
                bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY)
    return (
        MapSpec("endpoint_by_ifindex", h, 4, struct.calcsize(ENDPOINT_FMT), max_endpoints),
        MapSpec("endpoint_id_by_ipv4", h, struct.calcsize(EP_IPV4_KEY_FMT), 4, max_endpoints),
        MapSpec("endpoint_id_by_ipv6", h, struct.calcsize(EP_IPV6_KEY_FMT), 4,
                max_endpoints * MAX_EP_IPV6),
        MapSpec("endpoint_by_id", a, 4, struct.calcsize(ENDPOINT_FMT), max_endpoints),
        MapSpec("network_by_id", a, 4, struct.calcsize(NETWORK_FMT), MAX_NETWORKS),
        MapSpec("network_by_bridge_ifindex", h, 4, 4, MAX_NETWORKS),
        MapSpec("endpoint_counters", pa, 4, COUNTERS_SIZE, max_endpoints),
    )


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
    if len(addrs) > MAX_EP_IPV6:
        raise ValueError(f"endpoint {ep.name}: at most {MAX_EP_IPV6 - 1} IPv6 addresses "
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
    return struct.pack(ENDPOINT_FMT, ep.id, ep.network_id, ep.host_ifindex, mac_bytes(ep.mac),
                       len(v6), ep.ipv4.packed, b"".join(a.packed for a in v6))


def unpack_endpoint(raw: bytes) -> EndpointEntry:
    eid, nid, ifindex, mac, n, v4, v6 = struct.unpack(ENDPOINT_FMT, raw)
    addrs = tuple(IPv6Address(v6[i * 16:(i + 1) * 16]) for i in range(min(n, MAX_EP_IPV6)))
    return EndpointEntry(eid, nid, ifindex, mac, IPv4Address(v4), addrs)


def pack_network(net: NetworkSpec) -> bytes:
    gw6 = net.gateway6[:2]
    return struct.pack(NETWORK_FMT, net.id, net.bridge_ifindex, 1 if net.icc else 0, len(gw6),
                       mac_bytes(net.bridge_mac), net.gateway4.packed,
                       b"".join(a.packed for a in gw6))


def ipv4_key(network_id: int, addr: IPv4Address) -> bytes:
    return struct.pack(EP_IPV4_KEY_FMT, network_id, addr.packed)


def ipv6_key(network_id: int, addr: IPv6Address) -> bytes:
    return struct.pack(EP_IPV6_KEY_FMT, network_id, addr.packed)


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
        """host ifindex -> endpoint id, one batch lookup (id is the record's first field)."""
        return {struct.unpack(U32_FMT, k)[0]: struct.unpack_from(U32_FMT, v)[0]
                for k, v in self.items("endpoint_by_ifindex")}

    def endpoint(self, ifindex: int) -> EndpointEntry | None:
        """The endpoint record behind a host ifindex, as the map says."""
        raw = self.get("endpoint_by_ifindex", u32(ifindex))
        return None if raw is None else unpack_endpoint(raw)

    def zero_counters(self, slot: int) -> None:
        # Per-CPU array elements cannot be deleted; writing zeros for every CPU resets them.
        self.put("endpoint_counters", u32(slot), self._zero_counters)

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
        nq = COUNTERS_SIZE // 8
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


def check_pins(pin_dir: str, max_endpoints: int) -> None:
    """Unlink pins in pin_dir that are not part of this version's layout (maps
    renamed or dropped by an upgrade) and pinned maps whose shape no longer
    matches (e.g. max_endpoints or the drop-reason list changed): bcc would
    otherwise fail to reuse them. Their contents are lost; the controller
    re-adds every entry in start()."""
    specs = map_specs(max_endpoints)
    for name in stale_pins(pin_dir, specs):
        path = os.path.join(pin_dir, name)
        log.warning("pinned object %s is not part of this version's map layout: removing it",
                    path)
        os.unlink(path)
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


def stale_pins(pin_dir: str, specs: tuple[MapSpec, ...]) -> list[str]:
    """Names of the pins in pin_dir (ours alone) that specs do not list."""
    if not os.path.isdir(pin_dir):
        return []
    want = {s.name for s in specs}
    return sorted(f for f in os.listdir(pin_dir)
                  if f not in want and os.path.isfile(os.path.join(pin_dir, f)))
