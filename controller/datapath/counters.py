"""Shape of the per-endpoint counters returned by ``Datapath.counters()``.

Boundary: pure data: field names, the TypedDict the controller and the
exporter can rely on, and decoding of one summed ``struct endpoint_counters``
(bpf/maps.h). Reading the map is ``maps.PinnedMaps.counters``.

Packets and bytes include the Ethernet header (skb->len at tc). A GSO
super-packet counts once with its full length. "fast" = redirected by bpfnet,
"kernel" = handed to the kernel bridge/stack; tx = sent by the endpoint,
rx = delivered to it. Drops count packets per reason name
(``drop_reasons.DropReason``, lower case).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict, cast

from .drop_reasons import DROP_REASON_LABELS

PATH_FIELDS = ("fast_packets", "fast_bytes", "kernel_packets", "kernel_bytes")
DIRECTIONS = ("tx", "rx")
COUNTER_FIELDS = tuple(f"{d}_{f}" for d in DIRECTIONS for f in PATH_FIELDS)
# struct path_counters: the 4 fields above + drops[DROP_REASON_COUNT], all u64
U64_PER_DIR = len(PATH_FIELDS) + len(DROP_REASON_LABELS)
COUNTERS_SIZE = len(DIRECTIONS) * U64_PER_DIR * 8  # sizeof(struct endpoint_counters)


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
    drops: Drops


# (key, index in the summed u64s) of every path field, and (direction, index of
# its drops[0]): computed once, because decode() runs for every endpoint on
# every scrape.
_FIELD_AT = tuple((f"{d}_{f}", di * U64_PER_DIR + fi)
                  for di, d in enumerate(DIRECTIONS) for fi, f in enumerate(PATH_FIELDS))
_DROPS_AT = tuple((d, di * U64_PER_DIR + len(PATH_FIELDS)) for di, d in enumerate(DIRECTIONS))


def decode(sums: list[int]) -> EndpointCounters:
    """sums: the u64 fields of one struct endpoint_counters, summed over CPUs."""
    n = len(DROP_REASON_LABELS)
    out: dict[str, object] = {key: sums[i] for key, i in _FIELD_AT}
    out["drops"] = {d: dict(zip(DROP_REASON_LABELS, sums[base:base + n], strict=True))
                    for d, base in _DROPS_AT}
    return cast(EndpointCounters, out)


def empty() -> EndpointCounters:
    return decode([0] * (len(DIRECTIONS) * U64_PER_DIR))


# Names for readers of the counters dict (API, CLI, top, metrics): they build
# keys from these instead of spelling "tx_fast_packets" themselves.
PATHS = ("fast", "kernel")  # the path half of PATH_FIELDS, in its order
UNITS = ("packets", "bytes")  # the unit half of PATH_FIELDS, in its order


def key(direction: str, path: str, unit: str) -> str:
    """The counters-dict key of one direction, path and unit: ``key("tx", "fast", "bytes")``."""
    return f"{direction}_{path}_{unit}"


def total(c: Mapping[str, Any], direction: str, unit: str) -> int:
    """Fast + kernel path of one direction and unit; a missing key counts 0."""
    return sum(int(c.get(key(direction, path, unit)) or 0) for path in PATHS)
