"""Tests of bpfnet.top: rate arithmetic and the live view."""

from __future__ import annotations

import io
import itertools
from typing import Any

import pytest
from bpfnet.top import compute_rates, format_bits, format_rate, run_top
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

KEYS = [
    f"{d}_{p}_{u}" for d in ("rx", "tx") for p in ("fast", "kernel") for u in ("packets", "bytes")
]


def ep(
    name: str, network: str = "n1", drops: dict[str, Any] | None = None, **c: int
) -> dict[str, Any]:
    counters: dict[str, Any] = {k: 0 for k in KEYS}
    counters.update(c)
    counters["drops"] = drops or {"tx": {}, "rx": {}}
    return {"name": name, "network": network, "counters": counters}


def doc(*eps: dict[str, Any]) -> dict[str, Any]:
    return {"endpoints": list(eps)}


def test_rates_basic() -> None:
    a = doc(
        ep(
            "web",
            rx_fast_packets=100,
            rx_fast_bytes=10_000,
            tx_kernel_packets=10,
            tx_kernel_bytes=1_000,
            drops={"tx": {"policy": 1}, "rx": {}},
        )
    )
    b = doc(
        ep(
            "web",
            rx_fast_packets=300,
            rx_fast_bytes=30_000,
            tx_kernel_packets=30,
            tx_kernel_bytes=3_000,
            drops={"tx": {"policy": 5}, "rx": {"ttl": 1}},
        )
    )
    [r] = compute_rates(a, b, 2.0)
    assert (r.network, r.name) == ("n1", "web")
    assert r.rx_pps == 100
    assert r.rx_bps == 20_000 * 8 / 2
    assert r.tx_pps == 10
    assert r.tx_bps == 2_000 * 8 / 2
    assert r.fast_share == pytest.approx(100 * 200 / 220)
    assert r.drops_ps == 2.5
    assert r.drops_total == 6
    assert r.top_drop == "tx/policy"


def test_counter_going_backwards_is_a_reset() -> None:
    a = doc(
        ep(
            "web",
            rx_fast_packets=1000,
            rx_fast_bytes=10**6,
            tx_fast_packets=5,
            drops={"tx": {"policy": 9}, "rx": {}},
        )
    )
    b = doc(
        ep(
            "web",
            rx_fast_packets=10,
            rx_fast_bytes=1000,
            tx_fast_packets=7,
            drops={"tx": {"policy": 2}, "rx": {}},
        )
    )
    [r] = compute_rates(a, b, 1.0)
    assert r.rx_pps == 0
    assert r.rx_bps == 0
    assert r.tx_pps == 2  # the other counter still counts
    assert r.drops_ps == 0
    assert r.top_drop is None


def test_new_removed_and_idle_endpoints() -> None:
    a = doc(ep("old", rx_fast_packets=5), ep("idle", rx_fast_packets=5))
    b = doc(ep("new", rx_fast_packets=10**9), ep("idle", rx_fast_packets=5))
    rates = {r.name: r for r in compute_rates(a, b, 1.0)}
    assert set(rates) == {"new", "idle"}
    assert rates["new"].rx_pps == 0  # no previous sample: unknown, shown as 0
    assert rates["idle"].fast_share is None


def test_same_name_in_two_networks_and_sorting() -> None:
    a = doc(ep("x", "n1"), ep("x", "n2"), ep("y", "n1"))
    b = doc(ep("x", "n1", rx_fast_bytes=10), ep("x", "n2", tx_kernel_bytes=1000), ep("y", "n1"))
    rates = compute_rates(a, b, 1.0)
    assert [(r.network, r.name) for r in rates] == [("n2", "x"), ("n1", "x"), ("n1", "y")]


def test_first_sample_and_zero_elapsed() -> None:
    b = doc(ep("web", rx_fast_packets=10))
    assert compute_rates(None, b, 1.0)[0].rx_pps == 0
    assert compute_rates(b, doc(ep("web", rx_fast_packets=20)), 0.0)[0].rx_pps == 0
    assert compute_rates(None, {"endpoints": []}, 1.0) == []


def test_missing_keys_are_zero() -> None:
    a = {"endpoints": [{"name": "e", "network": "n", "counters": {}}]}
    b = {"endpoints": [{"name": "e", "network": "n", "counters": {"rx_fast_packets": 4}}]}
    assert compute_rates(a, b, 2.0)[0].rx_pps == 2


counter = st.integers(min_value=0, max_value=2**64 - 1)


@given(
    st.lists(counter, min_size=8, max_size=8),
    st.lists(counter, min_size=8, max_size=8),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_rates_never_negative(before: list[int], after: list[int], elapsed: float) -> None:
    a = doc(ep("e", **dict(zip(KEYS, before, strict=True))))
    b = doc(ep("e", **dict(zip(KEYS, after, strict=True))))
    [r] = compute_rates(a, b, elapsed)
    assert min(r.rx_pps, r.rx_bps, r.tx_pps, r.tx_bps, r.drops_ps) >= 0
    assert r.fast_share is None or 0 <= r.fast_share <= 100


def test_formatting() -> None:
    assert format_bits(0) == "0 b/s"
    assert format_bits(999) == "999 b/s"
    assert format_bits(1500) == "1.50 kb/s"
    assert format_bits(25e6) == "25.0 Mb/s"
    assert format_bits(9.41e9) == "9.41 Gb/s"
    assert format_rate(0) == "0"
    assert format_rate(2.5) == "2.5"
    assert format_rate(12_345) == "12.3k"
    assert format_rate(1.5e6) == "1.5M"


def make_console(terminal: bool = False) -> tuple[Console, io.StringIO]:
    """A console writing to a buffer; a terminal one shows every refresh."""
    buf = io.StringIO()
    return Console(file=buf, width=160, force_terminal=terminal, color_system=None), buf


def test_run_top_renders_rates() -> None:
    n = itertools.count()

    def fetch() -> dict[str, Any]:
        i = next(n)
        return doc(
            ep(
                "web",
                rx_fast_packets=1000 * i,
                rx_fast_bytes=125_000 * i,
                tx_kernel_packets=10 * i,
                drops={"rx": {"policy": 3 * i}},
            ),
            ep("db", "back"),
        )

    clock = itertools.count(0.0, 1.0)
    console, buf = make_console()
    sleeps: list[float] = []
    run_top(fetch, 1.0, 3, console, sleep=sleeps.append, clock=lambda: next(clock))
    out = buf.getvalue()
    assert sleeps == [1.0, 1.0, 1.0]
    assert "web" in out and "db" in out
    assert "1.00 Mb/s" in out  # 125 kB/s
    assert "99.0" in out  # fast share 1000/1010
    assert "rx/policy" in out


def test_run_top_survives_fetch_errors_and_ctrl_c() -> None:
    calls = itertools.count()

    def fetch() -> dict[str, Any]:
        i = next(calls)
        if i == 1:
            raise ConnectionRefusedError("daemon gone")
        if i == 3:
            raise KeyboardInterrupt
        return doc(ep("web", rx_fast_packets=i))

    console, buf = make_console(terminal=True)
    run_top(fetch, 0.5, None, console, sleep=lambda s: None)
    assert "fetch failed: daemon gone" in buf.getvalue()


def test_run_top_first_fetch_error_raises() -> None:
    def fetch() -> dict[str, Any]:
        raise ConnectionRefusedError("no daemon")

    console, _ = make_console()
    with pytest.raises(ConnectionRefusedError):
        run_top(fetch, 1.0, 1, console, sleep=lambda s: None)
    with pytest.raises(ValueError):
        run_top(lambda: doc(), 0, 1, console)


def test_fast_share_of_huge_counters_is_at_most_100() -> None:
    """Found by hypothesis: 100.0 * x / x is 100.00000000000001 for some x > 2**53."""
    x = 13_103_448_999_134_823
    a = doc(ep("e"))
    b = doc(ep("e", rx_fast_packets=x))
    [r] = compute_rates(a, b, 1.0)
    assert r.fast_share == 100.0
