"""``bpfnet top``: a live, iftop-like terminal view of per-endpoint traffic.

Boundary: this module knows nothing about HTTP, the daemon or the kernel. The
CLI passes :func:`run_top` a ``fetch`` callable returning the stats document the
API serves (``{"endpoints": [{"name", "network", "counters"}]}``, see
``bpfnet.snapshot.stats_document``) and a rich console to draw on. Counter
key names come from ``bpfnet.datapath.counters``.
:func:`compute_rates` is the pure arithmetic between two such documents.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .datapath.counters import COUNTER_KEYS, DIRECTIONS, key, total_bytes, total_packets

log = logging.getLogger(__name__)

StatsDoc = Mapping[str, Any]


@dataclass(frozen=True)
class EndpointRates:
    """Rates of one endpoint over one interval. Bits, not bytes, per second."""

    network: str
    name: str
    rx_pps: float
    rx_bps: float
    tx_pps: float
    tx_bps: float
    fast_share: float | None  # % of packets (both directions) on the fast path; None if idle
    drops_ps: float
    drops_total: int
    top_drop: str | None  # reason with the most drops in the interval

    @property
    def total_bps(self) -> float:
        return self.rx_bps + self.tx_bps


def _delta(prev: Mapping[str, Any] | None, cur: Mapping[str, Any], key: str) -> int:
    """Increase of one counter; a decrease means the counter was reset -> 0."""
    now = int(cur.get(key, 0) or 0)
    if prev is None:
        return 0
    before = int(prev.get(key, 0) or 0)
    return now - before if now >= before else 0


def _drops(c: Mapping[str, Any]) -> dict[str, int]:
    """Drops summed per "direction/reason" key."""
    out: dict[str, int] = {}
    for direction, reasons in (c.get("drops") or {}).items():
        for reason, n in (reasons or {}).items():
            out[f"{direction}/{reason}"] = int(n or 0)
    return out


def _by_key(doc: StatsDoc | None) -> dict[tuple[str, str], Mapping[str, Any]]:
    if not doc:
        return {}
    return {
        (str(e.get("network", "")), str(e.get("name", ""))): e.get("counters") or {}
        for e in doc.get("endpoints") or ()
    }


def compute_rates(prev: StatsDoc | None, cur: StatsDoc, elapsed: float) -> list[EndpointRates]:
    """Per-endpoint rates between two stats documents taken ``elapsed`` s apart.

    Endpoints only in ``cur`` (new, or first sample) get rate 0; endpoints only
    in ``prev`` (removed) are dropped; a counter that went backwards (endpoint
    re-created, datapath reloaded) is treated as a reset and contributes 0.
    Sorted by total bit rate, busiest first, then by network and name.
    """
    before = _by_key(prev)
    out: list[EndpointRates] = []
    per_s = 1.0 / elapsed if elapsed > 0 else 0.0
    for (network, name), c in _by_key(cur).items():
        p = before.get((network, name))
        d = {k: _delta(p, c, k) for k in COUNTER_KEYS}
        rx_p, tx_p = total_packets(d, "rx"), total_packets(d, "tx")
        rx_b, tx_b = total_bytes(d, "rx"), total_bytes(d, "tx")
        fast = sum(d[key(dr, "fast", "packets")] for dr in DIRECTIONS)
        pkts = rx_p + tx_p
        drops_now = _drops(c)
        drops_before = _drops(p) if p is not None else None
        drop_deltas = {k: _delta(drops_before, drops_now, k) for k in drops_now}
        top = max(drop_deltas.items(), key=lambda kv: (kv[1], kv[0]), default=None)
        out.append(
            EndpointRates(
                network=network,
                name=name,
                rx_pps=rx_p * per_s,
                rx_bps=rx_b * 8 * per_s,
                tx_pps=tx_p * per_s,
                tx_bps=tx_b * 8 * per_s,
                # int / int is correctly rounded, so the share never exceeds 100 (100.0 * fast / pkts
                # could, by rounding, once the counts pass 2**53).
                fast_share=100.0 * (fast / pkts) if pkts else None,
                drops_ps=sum(drop_deltas.values()) * per_s,
                drops_total=sum(drops_now.values()),
                top_drop=top[0] if top is not None and top[1] > 0 else None,
            )
        )
    out.sort(key=lambda r: (-r.total_bps, r.network, r.name))
    return out


def format_bits(bps: float) -> str:
    """SI bit rate: ``0 b/s``, ``12.3 kb/s``, ``1.50 Gb/s``."""
    for unit, scale in (("Gb/s", 1e9), ("Mb/s", 1e6), ("kb/s", 1e3)):
        if bps >= scale:
            v = bps / scale
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"
    return f"{bps:.0f} b/s"


def format_rate(pps: float) -> str:
    """Compact events per second: ``0``, ``3.5``, ``12.3k``, ``1.2M``."""
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if pps >= scale:
            return f"{pps / scale:.1f}{unit}"
    return f"{pps:.1f}" if 0 < pps < 10 else f"{pps:.0f}"


def render_table(rates: list[EndpointRates], interval: float, error: str | None = None) -> Table:
    """The rich Table for one refresh (with a totals row)."""
    stamp = datetime.now().strftime("%H:%M:%S")
    table = Table(
        title=f"bpfnet top  {stamp}  every {interval:g}s  (Ctrl-C to quit)",
        caption=Text(error, style="bold red") if error else None,
        expand=False,
    )
    table.add_column("network", style="cyan")
    table.add_column("endpoint", style="bold")
    for col in ("RX pkt/s", "RX bit/s", "TX pkt/s", "TX bit/s", "fast %", "drops/s", "drops"):
        table.add_column(col, justify="right")
    table.add_column("top drop reason")
    for r in rates:
        share = "-" if r.fast_share is None else f"{r.fast_share:.1f}"
        drop_style = "red" if r.drops_ps > 0 else ""
        table.add_row(
            r.network,
            r.name,
            format_rate(r.rx_pps),
            format_bits(r.rx_bps),
            format_rate(r.tx_pps),
            format_bits(r.tx_bps),
            share,
            Text(format_rate(r.drops_ps), style=drop_style),
            str(r.drops_total),
            r.top_drop or "",
        )
    if not rates:
        table.add_row("", Text("no endpoints", style="dim"), *[""] * 8)
    else:
        table.add_section()
        table.add_row(
            "",
            Text("total", style="bold"),
            format_rate(sum(r.rx_pps for r in rates)),
            format_bits(sum(r.rx_bps for r in rates)),
            format_rate(sum(r.tx_pps for r in rates)),
            format_bits(sum(r.tx_bps for r in rates)),
            "",
            format_rate(sum(r.drops_ps for r in rates)),
            str(sum(r.drops_total for r in rates)),
            "",
        )
    return table


def run_top(
    fetch: Callable[[], StatsDoc],
    interval: float,
    iterations: int | None,
    console: Console,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Refresh a live table every ``interval`` s, ``iterations`` times (None:
    until Ctrl-C, which returns normally).

    The first ``fetch`` failing raises (the daemon is unreachable); later
    failures are shown under the table and the previous sample is kept.
    """
    if interval <= 0:
        raise ValueError("interval must be > 0")
    prev = fetch()
    t_prev = clock()
    rates = compute_rates(None, prev, 0.0)
    try:
        with Live(render_table(rates, interval), console=console, auto_refresh=False) as live:
            done = 0
            while iterations is None or done < iterations:
                sleep(interval)
                done += 1
                try:
                    cur = fetch()
                except Exception as exc:  # show and keep going
                    log.debug("top: fetch failed", exc_info=True)
                    live.update(render_table(rates, interval, f"fetch failed: {exc}"), refresh=True)
                    continue
                now = clock()
                rates = compute_rates(prev, cur, now - t_prev)
                prev, t_prev = cur, now
                live.update(render_table(rates, interval), refresh=True)
    except KeyboardInterrupt:
        return
