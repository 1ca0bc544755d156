"""Pure pieces of the underlay drivers: --parent IFACE[.VLAN] parsing, routed block arithmetic."""

from __future__ import annotations

import random
from ipaddress import IPv4Network, IPv6Network

import pytest
from bpfnet.cluster.blocks import block_key, blocks_prefix, check_host_prefix, pick
from bpfnet.config import NetworkConfig, check_parent, split_parent
from bpfnet.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("text, parts", [("eth0", ("eth0", None)), ("eth0.10", ("eth0", 10)),
                                         ("bond0.4094", ("bond0", 4094)), ("a.b", ("a.b", None)),
                                         ("a.b.7", ("a.b", 7))])
def test_split_parent(text: str, parts: tuple[str, int | None]) -> None:
    assert split_parent(text) == parts


@pytest.mark.parametrize("text, words", [("eth0.0", "VLAN id 0 out of range 1-4094"),
                                         ("eth0.4095", "VLAN id 4095 out of range"),
                                         ("averyveryverylongname.5", "Linux allows at most 15"),
                                         ("", "empty"), ("eth 0", "invalid parent interface")])
def test_bad_parent(text: str, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        check_parent(text)


def test_parent_belongs_to_the_underlay_drivers() -> None:
    base = {"name": "n", "subnet4": "10.0.0.0/24"}
    with pytest.raises(InvalidArgument, match="needs a parent interface"):
        NetworkConfig.from_json({**base, "driver": "macvlan"})
    with pytest.raises(InvalidArgument, match="only the macvlan and ipvlan drivers take a parent"):
        NetworkConfig.from_json({**base, "parent": "eth0"})
    with pytest.raises(InvalidArgument, match="only for the routed driver"):
        NetworkConfig.from_json({**base, "host_prefix": 24})
    cfg = NetworkConfig.from_json({**base, "driver": "ipvlan", "parent": "eth0.5", "ipvlan_mode": "l3"})
    assert NetworkConfig.from_json(cfg.to_json()) == cfg
    assert "parent" not in NetworkConfig.from_json(base).to_json()  # bridge networks' JSON is unchanged


@pytest.mark.parametrize("subnet, prefix", [("10.0.0.0/24", 24), ("10.0.0.0/24", 23), ("10.0.0.0/16", 31),
                                            ("fd00::/64", 64), ("fd00::/64", 121)])
def test_subnet_too_small_for_its_blocks(subnet: str, prefix: int) -> None:
    net = IPv4Network(subnet) if "." in subnet else IPv6Network(subnet)
    with pytest.raises(InvalidArgument, match="too small for its host blocks"):
        check_host_prefix(net, prefix)


def test_block_keys() -> None:
    assert block_key("rn", IPv4Network("10.96.3.0/24")) == "/bpfnet/v1/routed/rn/blocks/10.96.3.0_24"
    assert block_key("rn", IPv4Network("10.96.3.0/24")).startswith(blocks_prefix("rn"))


@given(plen=st.integers(8, 22), extra=st.integers(1, 8), taken_bits=st.sets(st.integers(0, 255), max_size=40),
       seed=st.integers(0, 2**32))
def test_pick_returns_a_free_block_of_the_subnet(plen: int, extra: int, taken_bits: set[int], seed: int) -> None:
    subnet = IPv4Network(f"10.0.0.0/{plen}")
    host_prefix = plen + extra
    blocks = list(subnet.subnets(new_prefix=host_prefix))
    taken = {blocks[i] for i in taken_bits if i < len(blocks)}
    got = pick(subnet, host_prefix, taken, rng=random.Random(seed))
    if len(taken) == len(blocks):
        assert got is None
    else:
        assert got is not None and got not in taken and got.subnet_of(subnet) and got.prefixlen == host_prefix


def test_pick_prefers_a_free_preferred_block() -> None:
    subnet = IPv4Network("10.96.0.0/16")
    want = IPv4Network("10.96.42.0/24")
    assert pick(subnet, 24, set(), preferred=want) == want
    assert pick(subnet, 24, {want}, preferred=want) != want
    assert pick(subnet, 24, set(), preferred=IPv4Network("10.97.0.0/24")) != IPv4Network("10.97.0.0/24")
