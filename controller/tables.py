"""Plain-text tables for a terminal: what ``bpfnet`` commands and ``bpfnet demo`` print.

Boundary: pure formatting of API documents into text; no I/O, no HTTP. Both
the CLI and the demo use it (the demo used to import these from the CLI, and
the CLI imports the demo: a cycle).
"""

from __future__ import annotations

from typing import Any

from .datapath.counters import key, total_bytes, total_packets


def table(rows: list[list[Any]], headers: list[str]) -> str:
    """Columns padded to their widest cell, two spaces apart; None prints as empty."""
    cells = [headers] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def stats_table(stats: dict[str, Any]) -> str:
    """The ``GET /v1/stats`` document as ``bpfnet stats`` prints it."""
    rows = []
    for e in stats["endpoints"]:
        k = e.get("counters") or {}
        drops = k.get("drops", {})
        ndrops = sum(sum(d.values()) for d in drops.values()) if drops else 0
        rows.append([e["name"], e["network"],
                     total_packets(k, "rx"), total_bytes(k, "rx"),
                     total_packets(k, "tx"), total_bytes(k, "tx"),
                     k.get(key("tx", "fast", "packets"), 0), k.get(key("tx", "tunnel", "packets"), 0),
                     k.get(key("tx", "routed", "packets"), 0), k.get(key("tx", "kernel", "packets"), 0), ndrops])
    head = f"datapath: {stats['mode']}\n"
    tunnel = stats.get("tunnel") or {}
    if tunnel:
        head += (f"tunnel: {tunnel.get('rx_packets', 0)} packets received for local endpoints, "
                 f"{tunnel.get('rx_unknown', 0)} for no endpoint, {tunnel.get('rx_not_ip', 0)} not unicast IP; "
                 f"encapsulated natively {tunnel.get('tx_native', 0)}, decapsulated natively "
                 f"{tunnel.get('rx_native', 0)}\n")
    return head + table(rows, ["ENDPOINT", "NETWORK", "RX PKTS", "RX BYTES", "TX PKTS", "TX BYTES",
                               "TX FAST", "TX TUNNEL", "TX ROUTED", "TX KERNEL", "DROPS"])
