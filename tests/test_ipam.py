"""IPAM: ipam.Pool unit tests and hypothesis properties."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import pytest
from bpfnet.config import NetworkConfig
from bpfnet.errors import BpfnetError, Conflict, Exhausted, InvalidArgument
from bpfnet.ipam import Pool, parse_address
from bpfnet.networks import pools
from hypothesis import assume, given, settings
from hypothesis import strategies as st


def pool(subnet: str, rng: str | None = None, gateway: str | None = "auto", name: str = "net1") -> Pool:
    s = ip_network(subnet)
    gw = ip_address(int(s.network_address) + 1) if gateway == "auto" else (ip_address(gateway) if gateway else None)
    return Pool(name, s, ip_network(rng) if rng else s, gw)  # type: ignore[arg-type]


def drain(p: Pool) -> list[object]:
    used: set[object] = set()
    out = []
    while True:
        try:
            a = p.allocate(used)  # type: ignore[arg-type]
        except Exhausted:
            return out
        used.add(a)
        out.append(a)


# --- unit -------------------------------------------------------------------
def test_first_address_skips_network_and_gateway() -> None:
    p = pool("10.1.0.0/24")
    assert p.allocate(set()) == IPv4Address("10.1.0.2")


def test_gateway_not_first_address_is_still_skipped() -> None:
    p = pool("10.1.0.0/29", gateway="10.1.0.3")
    got = drain(p)
    assert IPv4Address("10.1.0.3") not in got
    assert got == [IPv4Address(f"10.1.0.{i}") for i in (1, 2, 4, 5, 6)]


def test_slash30_has_one_address_besides_gateway() -> None:
    p = pool("10.1.0.0/30")
    assert p.capacity() == 1
    assert drain(p) == [IPv4Address("10.1.0.2")]


def test_fixed_cidr_range_is_honoured() -> None:
    p = pool("172.30.0.0/16", "172.30.1.0/25", gateway="172.30.0.1")
    got = drain(p)
    assert len(got) == p.capacity() == 128
    assert all(a in IPv4Network("172.30.1.0/25") for a in got)  # type: ignore[operator]


def test_range_at_end_of_subnet_excludes_broadcast() -> None:
    p = pool("10.2.0.0/24", "10.2.0.128/25")
    got = drain(p)
    assert IPv4Address("10.2.0.255") not in got
    assert p.capacity() == 127 and len(got) == 127


def test_range_at_start_excludes_network_and_gateway() -> None:
    p = pool("10.2.0.0/24", "10.2.0.0/28")
    assert p.capacity() == 14
    assert drain(p)[0] == IPv4Address("10.2.0.2")


def test_range_outside_subnet_rejected() -> None:
    with pytest.raises(InvalidArgument, match="not inside subnet"):
        pool("10.2.0.0/24", "10.3.0.0/25")
    with pytest.raises(InvalidArgument):
        Pool("n", IPv4Network("10.2.0.0/24"), IPv6Network("fd00::/120"), None)


def test_exhaustion_message_names_network_and_size() -> None:
    p = pool("10.9.0.0/29", name="tiny")
    used = set(drain(p))
    with pytest.raises(Exhausted) as err:
        p.allocate(used)  # type: ignore[arg-type]
    msg = str(err.value)
    assert "tiny" in msg and "5" in msg and "10.9.0.0/29" in msg
    assert err.value.status == 507


def test_search_starts_at_offset() -> None:
    p = pool("10.1.0.0/24", rng="10.1.0.8/29")
    assert p.offset(IPv4Address("10.1.0.11")) == 3
    assert p.allocate(set(), start=3) == IPv4Address("10.1.0.11")
    assert p.allocate({IPv4Address("10.1.0.11")}, start=3) == IPv4Address("10.1.0.12")
    with pytest.raises(Exhausted):
        p.allocate(set(), start=8)


def test_static_inside_subnet_outside_range_allowed() -> None:
    p = pool("172.30.0.0/16", "172.30.1.0/25", gateway="172.30.0.1")
    assert p.allocate(set(), requested=IPv4Address("172.30.200.7")) == IPv4Address("172.30.200.7")


@pytest.mark.parametrize(
    ("address", "error", "fragment"),
    [
        ("10.1.1.5", InvalidArgument, "outside"),
        ("10.1.0.0", InvalidArgument, "reserved"),
        ("10.1.0.255", InvalidArgument, "reserved"),
        ("10.1.0.1", Conflict, "gateway"),
        ("10.1.0.9", Conflict, "in use"),
    ],
)
def test_static_request_checked(address: str, error: type[BpfnetError], fragment: str) -> None:
    p = pool("10.1.0.0/24")
    with pytest.raises(error, match=fragment):
        p.allocate({IPv4Address("10.1.0.9")}, requested=IPv4Address(address))


def test_static_wrong_family_rejected() -> None:
    with pytest.raises(InvalidArgument):
        pool("10.1.0.0/24").check_static(IPv6Address("fd00::5"), set())


def test_preferred_used_when_free_else_next() -> None:
    p = pool("fd00:1::/64")
    pref = IPv6Address("fd00:1::242:ac11:2")
    assert p.allocate(set(), preferred=pref) == pref
    assert p.allocate({pref}, preferred=pref) == IPv6Address("fd00:1::2")
    # outside the range: ignored
    assert p.allocate(set(), preferred=IPv6Address("fd00:2::5")) == IPv6Address("fd00:1::2")


def test_ipv6_no_broadcast_but_network_address_reserved() -> None:
    p = pool("fd00::/126")
    assert p.capacity() == 2  # ::0 reserved (subnet-router anycast), ::1 gateway
    assert drain(p) == [IPv6Address("fd00::2"), IPv6Address("fd00::3")]


def test_huge_ipv6_capacity() -> None:
    p = pool("1553:ba3:2::/64")
    assert p.capacity() == 2**64 - 2
    assert p.allocate(set()) == IPv6Address("1553:ba3:2::2")


def test_pools_from_network_config() -> None:
    cfg = NetworkConfig.from_json({"name": "n", "bridge": "br-n", "subnet4": "172.30.0.0/16",
                                   "gateway4": "172.30.0.1", "ip_range4": "172.30.1.0/25",
                                   "subnet6": "1553:ba3:2::/64"})
    p4, p6 = pools(cfg)
    assert p4.range == IPv4Network("172.30.1.0/25") and p4.gateway == IPv4Address("172.30.0.1")
    assert p6 is not None and p6.gateway == IPv6Address("1553:ba3:2::1")


def test_parse_address() -> None:
    assert parse_address("10.0.0.1", "--ip") == IPv4Address("10.0.0.1")
    with pytest.raises(InvalidArgument, match="--ip"):
        parse_address("10.0.0.256", "--ip")


# --- properties --------------------------------------------------------------
@st.composite
def v4_pools(draw: st.DrawFn) -> tuple[Pool, set[IPv4Address]]:
    prefix = draw(st.integers(24, 30))
    base = draw(st.integers(0, 2**32 - 1)) >> (32 - prefix) << (32 - prefix)
    subnet = IPv4Network((base, prefix))
    rprefix = draw(st.integers(prefix, 32))
    offset = draw(st.integers(0, 2 ** (rprefix - prefix) - 1)) << (32 - rprefix)
    rng = IPv4Network((base + offset, rprefix))
    gw_off = draw(st.one_of(st.none(), st.integers(1, subnet.num_addresses - 2)))
    gw = None if gw_off is None else IPv4Address(base + gw_off)
    p = Pool("prop", subnet, rng, gw)
    used = draw(st.sets(st.integers(0, rng.num_addresses - 1).map(lambda i: IPv4Address(int(rng[0]) + i)),
                        max_size=8))
    return p, used


@st.composite
def v6_pools(draw: st.DrawFn) -> tuple[Pool, set[IPv6Address]]:
    prefix = draw(st.integers(119, 126))
    base = draw(st.integers(0, 2**128 - 1)) >> (128 - prefix) << (128 - prefix)
    subnet = IPv6Network((base, prefix))
    rprefix = draw(st.integers(prefix, 128))
    offset = draw(st.integers(0, 2 ** (rprefix - prefix) - 1)) << (128 - rprefix)
    rng = IPv6Network((base + offset, rprefix))
    gw_off = draw(st.one_of(st.none(), st.integers(1, subnet.num_addresses - 1)))
    gw = None if gw_off is None else IPv6Address(base + gw_off)
    return Pool("prop6", subnet, rng, gw), set()


def _check_drain(p: Pool, used: set[object]) -> None:
    reserved = p.reserved()
    got = []
    taken = set(used)
    while True:
        try:
            a = p.allocate(taken)  # type: ignore[arg-type]
        except Exhausted as exc:
            assert "prop" in exc.message
            break
        assert a in p.range, f"{a} outside {p.range}"
        assert a not in reserved, f"{a} is reserved"
        assert a not in taken, f"{a} handed out twice"
        assert a != p.subnet.network_address
        if p.subnet.version == 4:
            assert a != p.subnet.broadcast_address
        assert a != p.gateway
        taken.add(a)
        got.append(a)
        assert len(got) <= p.capacity()
    # exhaustion exactly at capacity, counting what was pre-used (only usable pre-used addresses count)
    usable_used = {u for u in used if u not in reserved}
    assert len(got) + len(usable_used) == p.capacity()
    # brute-force capacity
    expected = sum(1 for a in p.range if a not in reserved)
    assert p.capacity() == expected


@settings(max_examples=150, deadline=None)
@given(v4_pools())
def test_property_v4_drain(case: tuple[Pool, set[IPv4Address]]) -> None:
    p, used = case
    _check_drain(p, used)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(v6_pools())
def test_property_v6_drain(case: tuple[Pool, set[IPv6Address]]) -> None:
    p, used = case
    _check_drain(p, used)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(v4_pools(), st.integers(0, 2**32 - 1))
def test_property_static_request(case: tuple[Pool, set[IPv4Address]], raw: int) -> None:
    """A static request either comes back unchanged or is refused for the documented reason."""
    p, used = case
    # bias half of the requests into the subnet
    addr = IPv4Address(raw) if raw % 2 else IPv4Address(int(p.subnet.network_address) + raw % p.subnet.num_addresses)
    try:
        got = p.allocate(used, requested=addr)  # type: ignore[arg-type]
    except InvalidArgument:
        assert addr not in p.subnet or addr in p.reserved()
    except Conflict:
        assert addr == p.gateway or addr in used
    else:
        assert got == addr and addr in p.subnet and addr not in p.reserved() and addr not in used


@settings(max_examples=100, deadline=None)
@given(v4_pools(), st.integers(0, 2**32 - 1))
def test_property_preferred(case: tuple[Pool, set[IPv4Address]], raw: int) -> None:
    p, used = case
    pref = IPv4Address(int(p.range.network_address) + raw % p.range.num_addresses)
    assume(len(used) < p.capacity())
    got = p.allocate(used, preferred=pref)  # type: ignore[arg-type]
    if pref not in p.reserved() and pref not in used:
        assert got == pref
    else:
        assert got != pref and got not in used and got not in p.reserved()


def test_pool_accepts_leases_kept_as_strings() -> None:
    from bpfnet.endpoints import LeasedAddresses

    pool = Pool("n", IPv4Network("10.9.0.0/29"), IPv4Network("10.9.0.0/29"), IPv4Address("10.9.0.1"))
    used = LeasedAddresses(["10.9.0.2", "10.9.0.3"])
    assert IPv4Address("10.9.0.2") in used and IPv4Address("10.9.0.4") not in used and len(used) == 2
    assert pool.allocate(used) == IPv4Address("10.9.0.4")
    with pytest.raises(Conflict):
        pool.allocate(used, requested=IPv4Address("10.9.0.3"))
    v6 = LeasedAddresses(["1553:ba3:2::242:ac11:2"])
    assert IPv6Address("1553:ba3:2:0:0:242:ac11:2") in v6  # canonical form, whatever the spelling
