"""The per-endpoint counter keys: the one module that names them.

Boundary: pure data and small helpers: the key names every reader uses (the
CLI, ``top``, the metrics), the TypedDict returned by ``Datapath.counters()``,
and decoding of one summed ``struct endpoint_counters``, whose layout is
``abi.ENDPOINT_COUNTERS`` (checked against bpf/maps.h at load time). Reading
the map is ``maps.PinnedMaps.counters``.

Packets and bytes include the Ethernet header (skb->len at tc). A GSO
super-packet counts as the segments it stands for, with its full length.
"fast" = redirected by bpfnet to a local endpoint, "tunnel" = encapsulated to
(tx) or decapsulated from (rx) another host of an overlay network by bpfnet,
"kernel" = handed to the kernel bridge/stack;
tx = sent by the endpoint, rx = delivered to it. Drops count packets per
reason name (``drop_reasons.DropReason``, lower case).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast

from . import abi
from .drop_reasons import DROP_REASON_LABELS

DIRECTIONS = abi.DIRECTIONS  # ("tx", "rx"), the order of enum direction
PATHS = ("fast", "kernel", "tunnel")
# u64 fields of struct path_counters other than drops[], in C order
PATH_FIELDS = tuple(f.name for f in abi.PATH_COUNTERS.fields if f.name != "drops")
# the flat keys of EndpointCounters besides "drops", e.g. "tx_fast_packets"
COUNTER_KEYS = tuple(f"{d}_{f}" for d in DIRECTIONS for f in PATH_FIELDS)
DROPS = "drops"  # the key of the per-direction, per-reason drop counts
U64_COUNT = abi.ENDPOINT_COUNTERS.size // 8  # struct endpoint_counters is all u64


class Drops(TypedDict):
    tx: dict[str, int]
    rx: dict[str, int]


class EndpointCounters(TypedDict):
    tx_fast_packets: int
    tx_fast_bytes: int
    tx_kernel_packets: int
    tx_kernel_bytes: int
    rx_fast_packets: int
    rx_fast_bytes: int
    rx_kernel_packets: int
    rx_kernel_bytes: int
    tx_tunnel_packets: int
    tx_tunnel_bytes: int
    rx_tunnel_packets: int
    rx_tunnel_bytes: int
    drops: Drops


def key(direction: str, path: str, unit: str) -> str:
    """Flat key name, e.g. key("rx", "fast", "packets") == "rx_fast_packets"."""
    k = f"{direction}_{path}_{unit}"
    if k not in COUNTER_KEYS:
        raise KeyError(f"no counter {k!r}; keys: {COUNTER_KEYS}")
    return k


def _get(c: Mapping[str, Any], k: str) -> int:
    return int(c.get(k, 0) or 0)


def total_packets(c: Mapping[str, Any], direction: str) -> int:
    """Fast + kernel packets of one direction ("tx" or "rx")."""
    return sum(_get(c, key(direction, p, "packets")) for p in PATHS)


def total_bytes(c: Mapping[str, Any], direction: str) -> int:
    """Fast + kernel bytes of one direction ("tx" or "rx")."""
    return sum(_get(c, key(direction, p, "bytes")) for p in PATHS)


def total_drops(c: Mapping[str, Any], direction: str | None = None) -> int:
    """Dropped packets over all reasons, of one direction or both."""
    drops = c.get(DROPS) or {}
    dirs = DIRECTIONS if direction is None else (direction,)
    return sum(int(n) for d in dirs for n in (drops.get(d) or {}).values())


# (key, index in the summed u64s) of every path field, and (direction, index of
# its drops[0]): computed once from abi.py's offsets, because decode() runs for
# every endpoint on every scrape.
def _u64_index(direction: int, name: str) -> int:
    dir_field = abi.ENDPOINT_COUNTERS.field("dir")
    off = abi.ENDPOINT_COUNTERS.offsets["dir"] + direction * dir_field.type.size
    return (off + abi.PATH_COUNTERS.offsets[name]) // 8


_FIELD_AT = tuple((f"{d}_{f}", _u64_index(di, f))
                  for di, d in enumerate(DIRECTIONS) for f in PATH_FIELDS)
_DROPS_AT = tuple((d, _u64_index(di, "drops")) for di, d in enumerate(DIRECTIONS))


def decode(sums: list[int]) -> EndpointCounters:
    """sums: the u64 fields of one struct endpoint_counters, summed over CPUs."""
    n = len(DROP_REASON_LABELS)
    out: dict[str, object] = {k: sums[i] for k, i in _FIELD_AT}
    out[DROPS] = {d: dict(zip(DROP_REASON_LABELS, sums[base:base + n], strict=True))
                  for d, base in _DROPS_AT}
    return cast(EndpointCounters, out)


def empty() -> EndpointCounters:
    return decode([0] * U64_COUNT)
