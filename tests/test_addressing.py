"""Address derivation: MAC from IPv4, EUI-64 link-local, MAC-embedded IPv6."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest
from bpfnet.addressing import (
    eui64_interface_id,
    int_to_mac,
    ipv6_from_mac,
    link_local_from_mac,
    mac_from_ipv4,
    mac_to_int,
    parse_mac,
)
from bpfnet.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st


def test_docker_documentation_example() -> None:
    # docs.docker.com, "IPv6 with Docker": container MAC 02:42:ac:11:00:01 on 1553:ba3:2::/64
    mac = mac_from_ipv4(IPv4Address("172.17.0.1"))
    assert mac == "02:42:ac:11:00:01"
    assert link_local_from_mac(mac) == IPv6Address("fe80::42:acff:fe11:1")
    assert ipv6_from_mac(IPv6Network("1553:ba3:2::/64"), mac) == IPv6Address("1553:ba3:2::242:ac11:1")


@pytest.mark.parametrize(
    ("ip", "mac"),
    [("172.17.0.2", "02:42:ac:11:00:02"), ("10.0.0.1", "02:42:0a:00:00:01"), ("0.0.0.0", "02:42:00:00:00:00"),
     ("255.255.255.255", "02:42:ff:ff:ff:ff"), ("172.30.1.0", "02:42:ac:1e:01:00")],
)
def test_mac_from_ipv4(ip: str, mac: str) -> None:
    assert mac_from_ipv4(IPv4Address(ip)) == mac


def test_link_local_eui64_universal_bit_flipped() -> None:
    # 00:... has U/L bit 0 -> 02 in the interface id; 02:... -> 00
    assert link_local_from_mac("00:11:22:33:44:55") == IPv6Address("fe80::211:22ff:fe33:4455")
    assert link_local_from_mac("02:42:ac:1e:01:05") == IPv6Address("fe80::42:acff:fe1e:105")
    assert eui64_interface_id("ff:ff:ff:ff:ff:fe") == 0xFDFF_FFFF_FEFF_FFFE


def test_ipv6_from_mac_rejects_long_prefix() -> None:
    with pytest.raises(InvalidArgument, match="/80"):
        ipv6_from_mac(IPv6Network("fd00::/96"), "02:42:ac:11:00:01")
    assert ipv6_from_mac(IPv6Network("fd00:1:2:3:4::/80"), "02:42:ac:11:00:01") == IPv6Address(
        "fd00:1:2:3:4:242:ac11:1"
    )


@pytest.mark.parametrize(
    "text",
    ["02:42:ac:11:00", "02:42:ac:11:00:01:02", "02-42-ac-11-00-01", "0242.ac11.0001", "zz:42:ac:11:00:01", "",
     "2:42:ac:11:0:1", " 02:42:ac:11:00:01"],
)
def test_parse_mac_malformed(text: str) -> None:
    with pytest.raises(InvalidArgument, match="malformed MAC"):
        parse_mac(text)


def test_parse_mac_multicast_and_zero_rejected() -> None:
    with pytest.raises(InvalidArgument, match="multicast"):
        parse_mac("01:00:5e:00:00:01")
    with pytest.raises(InvalidArgument, match="multicast"):
        parse_mac("ff:ff:ff:ff:ff:ff")
    with pytest.raises(InvalidArgument, match="not usable"):
        parse_mac("00:00:00:00:00:00")


def test_parse_mac_normalises_case() -> None:
    assert parse_mac("02:42:AC:11:00:0A") == "02:42:ac:11:00:0a"


# --- properties --------------------------------------------------------------
macs = st.integers(0, 2**48 - 1).map(int_to_mac)
v4s = st.integers(0, 2**32 - 1).map(IPv4Address)


@given(v4s)
def test_property_mac_from_ipv4(ip: IPv4Address) -> None:
    mac = mac_from_ipv4(ip)
    assert mac.startswith("02:42:")
    assert parse_mac(mac) == mac  # unicast, locally administered, well-formed
    assert IPv4Address(bytes(int(b, 16) for b in mac.split(":")[2:])) == ip


@given(st.integers(0, 2**48 - 1))
def test_property_mac_int_roundtrip(value: int) -> None:
    assert mac_to_int(int_to_mac(value)) == value
    assert len(int_to_mac(value)) == 17


def _reverse_eui64(address: IPv6Address) -> str:
    iid = address.packed[8:]
    assert iid[3:5] == b"\xff\xfe"
    raw = bytes([iid[0] ^ 0x02]) + iid[1:3] + iid[5:8]
    return ":".join(f"{b:02x}" for b in raw)


@given(macs)
def test_property_link_local_roundtrip(mac: str) -> None:
    ll = link_local_from_mac(mac)
    assert ll.is_link_local and ll in IPv6Network("fe80::/64")
    assert _reverse_eui64(ll) == mac


@st.composite
def prefixes(draw: st.DrawFn) -> IPv6Network:
    length = draw(st.integers(8, 80))
    high = draw(st.integers(0, 2**length - 1))
    return IPv6Network((high << (128 - length), length))


@given(prefixes(), macs)
def test_property_ipv6_from_mac(prefix: IPv6Network, mac: str) -> None:
    a = ipv6_from_mac(prefix, mac)
    assert a in prefix
    assert int(a) & (2**48 - 1) == mac_to_int(mac)
    assert int(a) >> 48 == int(prefix.network_address) >> 48
    # round trip: the low 48 bits give the MAC back
    assert int_to_mac(int(a) & (2**48 - 1)) == mac


@given(v4s)
def test_property_docker_rule_end_to_end(ip: IPv4Address) -> None:
    """IPv4 -> MAC -> global IPv6 in a /64: low 32 bits are the IPv4 address, then 0x0242."""
    a = ipv6_from_mac(IPv6Network("1553:ba3:2::/64"), mac_from_ipv4(ip))
    assert int(a) & 0xFFFFFFFF == int(ip)
    assert (int(a) >> 32) & 0xFFFF == 0x0242
