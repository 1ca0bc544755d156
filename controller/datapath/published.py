"""Entries of the published ports' fast path (bpf/nat.h): packing, and reading its maps.

Boundary: pure data and packing with ``abi.py``'s layouts, plus reading the three maps
through ``maps.PinnedMaps``; what is published, and which slot counts it, is decided by
the outside service (``bpfnet.outside``). Addresses are 16 bytes in network byte order
(IPv4 in the first 4), ports network byte order, as the programs compare them with
packet fields.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from . import abi, bpfsys
from .maps import PinnedMaps

PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
UPLINK = "uplink"  # the attach direction name of uplink_ingress (tc ingress, tcx pin "<ifindex>-uplink")


@dataclass(frozen=True, order=True)
class PublishedPort:
    """One published_ports entry: a published port of one family. host_ip None: every
    address of the host; slot: its counters' index (shared by both families of one
    ``--publish`` mapping)."""

    proto: str
    family: int
    host_port: int
    endpoint_addr: IPv4Address | IPv6Address
    endpoint_port: int
    endpoint_id: int
    slot: int
    host_ip: IPv4Address | IPv6Address | None = None

    @property
    def key(self) -> bytes:
        return pack_key(self.proto, self.family, self.host_ip, self.host_port)

    @property
    def value(self) -> bytes:
        return abi.PUBLISHED_PORT.pack(addr=addr16(self.endpoint_addr), port=struct.pack("!H", self.endpoint_port),
                                       endpoint_id=self.endpoint_id, slot=self.slot)


def addr16(addr: IPv4Address | IPv6Address | None) -> bytes:
    """An address as the maps hold it: 16 bytes, IPv4 in the first 4; None: all zero."""
    return bytes(16) if addr is None else addr.packed.ljust(16, b"\0")


def unaddr16(raw: bytes, family: int) -> IPv4Address | IPv6Address:
    return IPv4Address(raw[:4]) if family == 4 else IPv6Address(raw)


def pack_key(proto: str, family: int, host_ip: IPv4Address | IPv6Address | None, port: int) -> bytes:
    if family not in (4, 6) or (host_ip is not None and host_ip.version != family):
        raise ValueError(f"published port {host_ip}:{port}/{proto}: family {family}")
    return abi.PUBLISHED_KEY.pack(addr=addr16(host_ip), port=struct.pack("!H", port), proto=PROTOS[proto],
                                  family=family)


def unpack_entry(key: bytes, value: bytes) -> PublishedPort:
    k, v = abi.PUBLISHED_KEY.unpack(key), abi.PUBLISHED_PORT.unpack(value)
    fam = k["family"]
    host = None if not any(k["addr"]) else unaddr16(k["addr"], fam)
    return PublishedPort(PROTO_NAMES.get(k["proto"], str(k["proto"])), fam, struct.unpack("!H", k["port"])[0],
                         unaddr16(v["addr"], fam), struct.unpack("!H", v["port"])[0], v["endpoint_id"],
                         v["slot"], host)


@dataclass(frozen=True)
class Flow:
    """One direction of a fast-pathed flow, decoded (``bpfnet`` shows and tests read them)."""

    direction: str  # "in": client -> host, "out": endpoint -> client
    state: str  # "new" | "established"
    proto: str
    saddr: IPv4Address | IPv6Address
    sport: int
    daddr: IPv4Address | IPv6Address
    dport: int
    to_addr: IPv4Address | IPv6Address  # what replaces daddr (in) or saddr (out)
    to_port: int
    endpoint_id: int
    slot: int
    last_ns: int
    key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "state": self.state, "proto": self.proto,
                "source": f"{self.saddr}:{self.sport}", "destination": f"{self.daddr}:{self.dport}",
                "translated": f"{self.to_addr}:{self.to_port}", "endpoint_id": self.endpoint_id}


def unpack_flow(key: bytes, value: bytes) -> Flow:
    k, v = abi.FLOW_KEY.unpack(key), abi.FLOW.unpack(value)
    fam = k["family"]
    return Flow(abi.FLOW_DIRS[v["dir"]] if v["dir"] < len(abi.FLOW_DIRS) else str(v["dir"]),
                abi.FLOW_STATES[v["state"]] if v["state"] < len(abi.FLOW_STATES) else str(v["state"]),
                PROTO_NAMES.get(k["proto"], str(k["proto"])), unaddr16(k["saddr"], fam),
                struct.unpack("!H", k["sport"])[0], unaddr16(k["daddr"], fam), struct.unpack("!H", k["dport"])[0],
                unaddr16(v["addr"], fam), struct.unpack("!H", v["port"])[0], v["endpoint_id"], v["slot"],
                v["last_ns"], key)


# -- the maps ------------------------------------------------------------------------------
def entries(maps: PinnedMaps) -> list[PublishedPort]:
    return sorted(unpack_entry(k, v) for k, v in maps.items("published_ports"))


def flows(maps: PinnedMaps) -> list[Flow]:
    return [unpack_flow(k, v) for k, v in maps.items("published_flows")]


def replace(maps: PinnedMaps, want: list[PublishedPort]) -> None:
    """Make published_ports hold exactly WANT; flows of entries that went or changed are
    removed (their packets take the kernel's path again), counters of slots no longer used
    are zeroed."""
    have = {k: v for k, v in maps.items("published_ports")}
    new = {p.key: p.value for p in want}
    for key, value in new.items():
        if have.get(key) != value:
            maps.put("published_ports", key, value)
    for key in set(have) - set(new):
        maps.delete("published_ports", key)
    live = {(p.endpoint_id, p.slot, addr16(p.endpoint_addr), p.endpoint_port) for p in want}
    for f in flows(maps):
        target = f.to_addr if f.direction == "in" else f.saddr
        port = f.to_port if f.direction == "in" else f.sport
        if (f.endpoint_id, f.slot, addr16(target), port) not in live:
            maps.delete("published_flows", f.key)
    prune_idle(maps)
    used = {p.slot for p in want}
    for key, value in have.items():
        slot = abi.PUBLISHED_PORT.unpack(value)["slot"]
        if new.get(key) != value and slot not in used:
            zero_counters(maps, slot)


def twin_key(f: Flow) -> bytes:
    """The key of the other direction of flow f (as bpf/nat.h's flow_twin_key())."""
    k = abi.FLOW_KEY.unpack(f.key)
    port = struct.pack("!H", f.to_port)
    if f.direction == "in":  # client -> host; out: endpoint -> client
        twin = {"saddr": addr16(f.to_addr), "sport": port, "daddr": k["saddr"], "dport": k["sport"]}
    else:  # endpoint -> client; in: client -> host
        twin = {"saddr": k["daddr"], "sport": k["dport"], "daddr": addr16(f.to_addr), "dport": port}
    return abi.FLOW_KEY.pack(**twin, proto=k["proto"], family=k["family"])


def prune_idle(maps: PinnedMaps, now_ns: int | None = None) -> int:
    """Remove flows whose two directions have both been idle longer than the protocol's
    timeout (the programs drop an entry only when its next packet comes, which may be never;
    a one-way flow keeps its unused reply direction). bpf_ktime_get_ns() and
    time.monotonic_ns() are both CLOCK_MONOTONIC. Returns how many entries went."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    by_key = {f.key: f for f in flows(maps)}

    def idle(f: Flow | None) -> bool:
        limit = abi.FLOW_TCP_IDLE if f is None or f.proto == "tcp" else abi.FLOW_UDP_IDLE
        return f is None or now - f.last_ns > limit * 1_000_000_000

    gone = 0
    for key, f in by_key.items():
        if idle(f) and idle(by_key.get(twin_key(f))):
            gone += int(maps.delete("published_flows", key))
    return gone


def zero_counters(maps: PinnedMaps, slot: int) -> None:
    maps.put("published_port_counters", struct.pack("=I", slot),
             bytes(abi.PORT_COUNTERS.size * bpfsys.possible_cpus()))


def counters(maps: PinnedMaps) -> dict[int, dict[str, int]]:
    """slot -> fast-pathed in/out packets and bytes (summed over CPUs), non-zero slots only."""
    s = maps.specs["published_port_counters"]
    ncpu = bpfsys.possible_cpus()
    per_key = abi.PORT_COUNTERS.size * ncpu
    keys, values, n = bpfsys.map_lookup_batch(maps.fds["published_port_counters"], s.key_size, per_key,
                                              s.max_entries)
    out: dict[int, dict[str, int]] = {}
    zero = bytes(per_key)
    for i in range(n):
        raw = values[i * per_key:(i + 1) * per_key]
        if raw == zero:
            continue
        sums = [0, 0, 0, 0]
        for c in range(ncpu):
            row = struct.unpack_from("=4Q", raw, c * abi.PORT_COUNTERS.size)
            sums = [a + b for a, b in zip(sums, row, strict=True)]
        slot = struct.unpack_from("=I", keys, i * s.key_size)[0]
        out[slot] = {"in_packets": sums[0], "out_packets": sums[1], "in_bytes": sums[2], "out_bytes": sums[3]}
    return out
