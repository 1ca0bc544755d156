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

from typing import TypedDict

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


def decode(sums: list[int]) -> EndpointCounters:
    """sums: the u64 fields of one struct endpoint_counters, summed over CPUs."""
    vals: dict[str, int] = {}
    drops: dict[str, dict[str, int]] = {}
    for di, d in enumerate(DIRECTIONS):
        base = di * U64_PER_DIR
        for fi, f in enumerate(PATH_FIELDS):
            vals[f"{d}_{f}"] = sums[base + fi]
        drops[d] = {label: sums[base + len(PATH_FIELDS) + ri]
                    for ri, label in enumerate(DROP_REASON_LABELS)}
    return EndpointCounters(
        tx_fast_packets=vals["tx_fast_packets"], tx_fast_bytes=vals["tx_fast_bytes"],
        tx_kernel_packets=vals["tx_kernel_packets"], tx_kernel_bytes=vals["tx_kernel_bytes"],
        rx_fast_packets=vals["rx_fast_packets"], rx_fast_bytes=vals["rx_fast_bytes"],
        rx_kernel_packets=vals["rx_kernel_packets"], rx_kernel_bytes=vals["rx_kernel_bytes"],
        drops=Drops(tx=drops["tx"], rx=drops["rx"]))


def empty() -> EndpointCounters:
    return decode([0] * (len(DIRECTIONS) * U64_PER_DIR))
