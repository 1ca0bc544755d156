"""Issue 17 without root: address pools (pure), and the network service with the fake kernel adopting
a user's bridge, --bridge none, subnets picked from pools and the ULA prefix, later overlaps."""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from bpfnet.config import (
    DEFAULT_ADDRESS_POOLS,
    DEFAULT_POOLS,
    AddressPool,
    load_daemon_config,
    parse_address_pool,
)
from bpfnet.errors import Conflict, Exhausted, InvalidArgument, NotFound
from bpfnet.metrics.controller_metrics import ControllerMetrics
from prometheus_client import CollectorRegistry
from test_services import Env, make_env

DEFAULT = {"name": "bridge", "bridge": "mybr0", "icc": True, "ipv6": False}


# pools: pure ---------------------------------------------------------------------------------------
def test_default_pools_are_dockerds() -> None:
    assert str(DEFAULT_ADDRESS_POOLS[0]) == "base=172.17.0.0/16,size=16"
    assert str(DEFAULT_ADDRESS_POOLS[-1]) == "base=192.168.0.0/16,size=20"
    assert len(DEFAULT_ADDRESS_POOLS) == 16 and sum(p.count for p in DEFAULT_ADDRESS_POOLS) == 31
    assert DEFAULT_POOLS[0] == IPv4Network("172.17.0.0/16") and DEFAULT_POOLS[15] == IPv4Network("192.168.0.0/20")


@pytest.mark.parametrize("value", ["base=10.10.0.0/16,size=24", " size=24 , base=10.10.0.0/16",
                                   {"base": "10.10.0.0/16", "size": 24}])
def test_pool_syntax(value: Any) -> None:
    pool = parse_address_pool(value)
    assert pool == AddressPool(IPv4Network("10.10.0.0/16"), 24) and pool.count == 256
    assert list(pool.subnets())[:2] == [IPv4Network("10.10.0.0/24"), IPv4Network("10.10.1.0/24")]


@pytest.mark.parametrize(("value", "message"), [
    ("base=10.10.0.0/16", "expected base=CIDR,size=N"),
    ("base=10.10.0.0/16,size=24,size=25", "expected base=CIDR,size=N"),
    ("base=10.10.0.0/16,colour=24", "expected base=CIDR,size=N"),
    ("base=10.10.0.0/16,size=x", "expected a prefix length"),
    ("base=10.10.0.0/16,size=8", "between the base's prefix length (16) and 30"),
    ("base=10.10.0.0/16,size=31", "between the base's prefix length (16) and 30"),
    ("base=10.10.1.0/16,size=24", "host bits set; did you mean 10.10.0.0/16"),
    ("base=127.0.0.0/16,size=24", "loopback"),
    ("base=fd00::/48,size=64", "expected an IPv4 CIDR"),
    ({"base": "10.10.0.0/16", "size": True}, "expected a prefix length"),
    ({"base": "10.10.0.0/16"}, "expected base=CIDR,size=N"),
])
def test_pool_refusals(value: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match="default-address-pool") as exc:
        parse_address_pool(value)
    assert message in exc.value.message and "\n" not in exc.value.message


def test_pools_from_flags_and_toml(tmp_path: Path) -> None:
    cfg = load_daemon_config(None, {"default_address_pool": ["base=10.10.0.0/16,size=24", "base=10.20.0.0/16,size=20"]})
    assert [str(p) for p in cfg.address_pools] == ["base=10.10.0.0/16,size=24", "base=10.20.0.0/16,size=20"]
    assert load_daemon_config(None, {}).address_pools == DEFAULT_ADDRESS_POOLS
    toml = tmp_path / "d.toml"
    toml.write_text('default-address-pool = [{base = "10.30.0.0/16", size = 24}, "base=10.40.0.0/16,size=26"]\n')
    assert [str(p) for p in load_daemon_config(str(toml), {}).address_pools] == [
        "base=10.30.0.0/16,size=24", "base=10.40.0.0/16,size=26"]
    with pytest.raises(InvalidArgument, match="overlaps"):
        load_daemon_config(None, {"default_address_pool": ["base=10.10.0.0/16,size=24", "base=10.10.0.0/20,size=24"]})


def test_bridge_none_flags() -> None:
    cfg = load_daemon_config(None, {"bridge": "none"})
    assert cfg.default_network() is None and not cfg.has_default_network
    with pytest.raises(InvalidArgument, match="--bip configures the default network"):
        load_daemon_config(None, {"bridge": "none", "bip": "10.1.0.1/24"})


# the service with the fake kernel --------------------------------------------------------------
@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    yield e
    e.store.close()


def test_networks_without_subnets_get_distinct_pool_subnets(env: Env) -> None:
    env.kernel.host_routes.append(IPv4Network("172.19.3.0/24"))  # a route the pick must skip
    got = [env.nets.create({"name": f"n{i}"}) for i in range(3)]
    assert [n["ipam"]["ipv4"]["subnet"] for n in got] == ["172.17.0.0/16", "172.18.0.0/16", "172.20.0.0/16"]
    assert [n["subnet_source"] for n in got] == ["pool 172.17.0.0/16", "pool 172.18.0.0/16", "pool 172.20.0.0/16"]
    assert got[0]["ipam"]["ipv4"]["gateway"] == "172.17.0.1"
    given = env.nets.create({"name": "g", "subnet4": "10.3.0.0/24"})
    assert given["subnet_source"] == "given"


def test_custom_pool_exhaustion(tmp_path: Path) -> None:
    e = make_env(tmp_path, address_pools=(parse_address_pool("base=10.5.0.0/23,size=24"),))
    try:
        assert e.nets.create({"name": "a"})["ipam"]["ipv4"]["subnet"] == "10.5.0.0/24"
        assert e.nets.create({"name": "b"})["ipam"]["ipv4"]["subnet"] == "10.5.1.0/24"
        before = e.kernel.objects()
        with pytest.raises(Exhausted) as exc:
            e.nets.create({"name": "c"})
        assert exc.value.status == 507
        assert "base=10.5.0.0/23,size=24" in exc.value.message and "hold 2 network(s)" in exc.value.message
        assert e.kernel.objects() == before and e.store.network("c") is None
        e.nets.remove("a")  # freed: the next network takes it
        assert e.nets.create({"name": "c"})["ipam"]["ipv4"]["subnet"] == "10.5.0.0/24"
    finally:
        e.store.close()


def test_ipv6_without_subnet6_gets_next_ula_64_and_the_prefix_is_kept(tmp_path: Path) -> None:
    e = make_env(tmp_path)
    a = e.nets.create({"name": "a", "ipv6": True})
    b = e.nets.create({"name": "b", "ipv6": True})
    prefix = IPv6Network(a["subnet6_source"].removeprefix("ula "))
    assert prefix.prefixlen == 48 and str(prefix).startswith("fd")
    s6 = [IPv6Network(n["ipam"]["ipv6"]["subnet"]) for n in (a, b)]
    assert all(s.prefixlen == 64 and s.subnet_of(prefix) for s in s6) and s6[0] != s6[1]
    assert s6[0] == next(prefix.subnets(new_prefix=64))
    e.store.close()
    e2 = make_env(tmp_path)  # the same state dir: the same prefix
    try:
        assert e2.nets.ula_prefix() == prefix
        c = e2.nets.create({"name": "c", "ipv6": True})
        assert IPv6Network(c["ipam"]["ipv6"]["subnet"]) == list(prefix.subnets(new_prefix=64))[2]
    finally:
        e2.store.close()
    other = make_env(tmp_path / "other")  # another host (state dir): another prefix
    try:
        assert other.nets.ula_prefix() != prefix
    finally:
        other.store.close()


def test_default_network_adopts_a_user_bridge(env: Env) -> None:
    user = env.kernel.add_user_bridge("mybr0", [("10.123.0.1", 24)], mtu=1400)
    env.nets.update_default(dict(DEFAULT))
    net = env.nets.describe(env.store.network("bridge"))  # type: ignore[arg-type]
    assert (net["ipam"]["ipv4"]["subnet"], net["ipam"]["ipv4"]["gateway"]) == ("10.123.0.0/24", "10.123.0.1")
    assert net["subnet_source"] == "bridge" and net["mtu"] == 1400
    assert net["config"]["owned"] == {"bridge": False, "addresses": [], "mac": "aa:bb:cc:00:00:01"}
    assert env.nets.spec(env.store.network("bridge")).bridge_mac == "aa:bb:cc:00:00:01"  # type: ignore[arg-type]
    env.nets.update_default(dict(DEFAULT))  # a restart with the same flags changes nothing
    assert env.store.network("bridge").config["subnet_source"] == "bridge"  # type: ignore[union-attr]
    env.nets.update_default(None)  # --bridge none: the default network goes, the user's bridge stays
    assert env.store.network("bridge") is None
    assert env.kernel.links["mybr0"] is user and user.addresses == {("10.123.0.1", 24)}


def test_adopted_dual_stack_bridge_keeps_its_addresses(env: Env) -> None:
    user = env.kernel.add_user_bridge("mybr0", [("10.124.0.1", 24), ("fd00:124::1", 64), ("fe80::77", 64)])
    env.nets.update_default({**DEFAULT, "ipv6": True, "mtu": 1500})
    net = env.nets.describe(env.store.network("bridge"))  # type: ignore[arg-type]
    assert net["ipam"]["ipv6"]["subnet"] == "fd00:124::/64" and net["ipam"]["ipv6"]["gateway"] == "fd00:124::1"
    assert net["subnet6_source"] == "bridge"
    assert net["config"]["owned"]["addresses"] == ["fe80::1/64"]  # all bpfnet added
    assert ("fe80::1", 64) in user.addresses
    env.nets.update_default({**DEFAULT, "ipv6": True, "mtu": 1500, "icc": False})  # icc only: kept
    env.nets.update_default({**DEFAULT, "ipv6": False, "mtu": 1500})  # recreated: removes only fe80::1
    assert ("fe80::1", 64) not in user.addresses
    assert user.addresses == {("10.124.0.1", 24), ("fd00:124::1", 64), ("fe80::77", 64)}


def test_conflicting_bip_is_refused(env: Env) -> None:
    env.kernel.add_user_bridge("mybr0", [("10.123.0.1", 24)])
    before = env.kernel.objects()
    with pytest.raises(Conflict) as exc:
        env.nets.update_default({**DEFAULT, "subnet4": "172.30.0.0/16", "gateway4": "172.30.0.1",
                                 "subnet_source": "given"})
    assert exc.value.message == ("--bip 172.30.0.1/16 differs from the address of bridge mybr0 (10.123.0.1/24): "
                                 "start without --bip to use the bridge's address, or give --bip 10.123.0.1/24")
    assert env.kernel.objects() == before and env.store.networks() == []
    env.nets.update_default({**DEFAULT, "subnet4": "10.123.0.0/24", "gateway4": "10.123.0.1"})  # the same: fine
    assert env.store.network("bridge").config["owned"]["addresses"] == []  # type: ignore[union-attr]


def test_network_on_a_user_bridge_removes_only_what_bpfnet_added(env: Env) -> None:
    user = env.kernel.add_user_bridge("mybr1", [("10.50.0.1", 24)])
    env.nets.create({"name": "own", "bridge": "mybr1", "subnet4": "10.60.0.0/24"})
    assert ("10.60.0.1", 24) in user.addresses
    env.nets.remove("own")
    assert env.kernel.links["mybr1"] is user and user.addresses == {("10.50.0.1", 24)}
    adopted = env.nets.create({"name": "adopt", "bridge": "mybr1"})  # no subnet: the bridge's
    assert adopted["ipam"]["ipv4"]["subnet"] == "10.50.0.0/24" and adopted["subnet_source"] == "bridge"
    env.nets.remove("adopt")
    assert user.addresses == {("10.50.0.1", 24)} and "mybr1" in env.kernel.links
    made = env.nets.create({"name": "made"})  # a bridge bpfnet makes is deleted with its network
    assert made["config"]["owned"] == {"bridge": True, "addresses": ["172.17.0.1/16"]}
    env.nets.remove("made")
    assert "br-made" not in env.kernel.links


def test_ipv6_range_route_on_a_user_bridge_is_removed_with_the_network(env: Env) -> None:
    user = env.kernel.add_user_bridge("mybr1", [("10.50.0.1", 24)])
    env.nets.create({"name": "r", "bridge": "mybr1", "subnet4": "10.61.0.0/24", "subnet6": "fd00:61::/64",
                     "ip_range6": "fd00:61::/80"})
    assert ("fd00:61::/80", user.index) in env.kernel.routes
    assert env.store.network("r").config["owned"]["routes"] == ["fd00:61::/80"]  # type: ignore[union-attr]
    env.nets.remove("r")
    assert env.kernel.routes == set() and user.addresses == {("10.50.0.1", 24)}


def test_failed_create_on_a_user_bridge_takes_back_its_address(env: Env) -> None:
    user = env.kernel.add_user_bridge("mybr1", [("10.50.0.1", 24)])
    env.datapath.attach_network = _fail  # type: ignore[method-assign]
    with pytest.raises(OSError):
        env.nets.create({"name": "x", "bridge": "mybr1", "subnet4": "10.60.0.0/24"})
    assert user.addresses == {("10.50.0.1", 24)} and env.store.network("x") is None


def _fail(*_: object) -> None:
    raise OSError("injected")


def test_legacy_network_without_owned_deletes_its_bridge(env: Env) -> None:
    env.nets.create({"name": "old", "subnet4": "10.70.0.0/24"})
    row = env.store.network("old")
    assert row is not None
    env.store.update_network("old", {k: v for k, v in row.config.items() if k not in ("owned", "subnet_source")})
    assert env.nets.describe(env.store.network("old"))["subnet_source"] is None  # type: ignore[arg-type]
    env.nets.remove("old")
    assert "br-old" not in env.kernel.links


def test_no_default_network_message(env: Env) -> None:
    env.nets.create({"name": "n", "subnet4": "10.80.0.0/24"})
    with pytest.raises(NotFound, match=r"the daemon runs with --bridge none\): pass --network NAME"):
        env.eps.add({"name": "e1"})
    assert env.eps.add({"name": "e2", "network": "n"})["network"] == "n"


def test_later_overlap_is_reported_not_changed(env: Env) -> None:
    env.nets.create({"name": "n", "subnet4": "10.90.0.0/24"})
    assert env.nets.report_overlaps() == {"n": []} and env.observer.overlaps == {"n": 0}
    env.kernel.host_routes.append(IPv4Network("10.90.0.128/25"))  # appeared after the network
    before = env.kernel.objects()
    assert env.nets.report_overlaps() == {"n": ["10.90.0.128/25"]} and env.observer.overlaps == {"n": 1}
    assert env.nets.describe(env.store.network("n"))["overlaps"] == ["10.90.0.128/25"]  # type: ignore[arg-type]
    assert env.kernel.objects() == before


def test_overlap_gauge() -> None:
    reg = CollectorRegistry()
    m = ControllerMetrics(reg)
    m.network_overlaps("n", 0)  # no series yet: nothing to drop
    assert reg.get_sample_value("bpfnet_network_overlaps", {"network": "n"}) is None
    m.network_overlaps("n", 2)
    assert reg.get_sample_value("bpfnet_network_overlaps", {"network": "n"}) == 2
    m.network_overlaps("n", 0)
    assert reg.get_sample_value("bpfnet_network_overlaps", {"network": "n"}) is None
