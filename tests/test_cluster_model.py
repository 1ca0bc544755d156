"""The cluster store's pure logic (bpfnet.cluster.model): keys, records, the view, flags.

No etcd here: tests/test_cluster_store.py runs the same records through a real etcd.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address

import pytest
from bpfnet.cluster.model import (
    VNI_FIRST,
    ClusterEndpoint,
    ClusterView,
    check_advertise_addr,
    check_vni,
    endpoint_key,
    lease_key,
    network_key,
    node_key,
    parse_store_url,
    pick_vni,
)
from bpfnet.config import NetworkConfig
from bpfnet.errors import InvalidArgument
from hypothesis import given
from hypothesis import strategies as st

names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
v4 = st.integers(min_value=0x0A000001, max_value=0x0AFFFFFE).map(IPv4Address)
v6 = st.integers(min_value=1, max_value=2**64).map(lambda i: IPv6Address((0xFD50 << 112) | i))
macs = st.integers(min_value=0, max_value=2**40 - 1).map(
    lambda i: "02:" + ":".join(f"{(i >> s) & 0xFF:02x}" for s in (32, 24, 16, 8, 0)))
endpoints = st.builds(ClusterEndpoint, network=names, node=names, name=names, ipv4=v4, mac=macs, vtep=v4,
                      ipv6=st.lists(v6, max_size=2).map(tuple))


@given(endpoints)
def test_endpoint_records_round_trip(ep: ClusterEndpoint) -> None:
    assert ClusterEndpoint.from_json(ep.to_json()) == ep
    assert ep.key == endpoint_key(ep.network, ep.node, ep.name)
    assert ep.addresses[0] == str(ep.ipv4) and len(ep.addresses) == 1 + len(ep.ipv6)


@given(st.lists(st.tuples(endpoints, st.booleans()), max_size=12), st.sets(names, max_size=4), names)
def test_view_folds_changes_like_a_dict(changes: list[tuple[ClusterEndpoint, bool]], alive: set[str],
                                        me: str) -> None:
    """Applying puts and deletes in order leaves exactly the last state of each key; remote()
    lists the endpoints of other live nodes only, mine() this node's."""
    view = ClusterView()
    want: dict[str, ClusterEndpoint] = {}
    for node in alive:
        view.apply(node_key(node), json.dumps({"name": node, "address": "10.0.0.1"}).encode())
    for ep, delete in changes:
        view.apply(ep.key, None if delete else ep.to_json().encode())
        if delete:
            want.pop(ep.key, None)
        else:
            want[ep.key] = ep
    assert view.endpoints == want
    assert view.remote(me) == {k: e for k, e in want.items() if e.node != me and e.node in alive}
    assert view.mine(me) == {k: e for k, e in want.items() if e.node == me}


def test_node_lease_expiry_hides_its_endpoints_but_keeps_them() -> None:
    view = ClusterView()
    ep = ClusterEndpoint("ov", "h1", "web", IPv4Address("10.50.0.2"), "02:42:0a:32:00:02", IPv4Address("10.77.0.11"))
    view.apply(node_key("h1"), b'{"name": "h1", "address": "10.77.0.11", "started": 1}')
    view.apply(ep.key, ep.to_json().encode())
    assert list(view.remote("h0").values()) == [ep]
    view.apply(node_key("h1"), None)  # its lease expired
    assert view.remote("h0") == {} and view.endpoints == {ep.key: ep}
    view.apply(lease_key("ov", "10.50.0.2"), b'{"node": "h1", "endpoint": "web"}')
    view.apply(network_key("ov"), b'{"name": "ov"}')
    assert view.leases == {"ov": {"10.50.0.2"}} and view.networks == {"ov": {"name": "ov"}}
    view.apply(lease_key("ov", "10.50.0.2"), None)
    view.apply(network_key("ov"), None)
    assert view.leases == {"ov": set()} and view.networks == {}


@pytest.mark.parametrize(("url", "want"), [
    ("etcd://10.0.0.1:2379", [("10.0.0.1", 2379)]),
    ("etcd://a:1,b:2", [("a", 1), ("b", 2)]),
    ("etcd://10.0.0.1", [("10.0.0.1", 2379)]),
    ("etcd://[fd00::1]:2379", [("fd00::1", 2379)]),
])
def test_store_urls(url: str, want: list[tuple[str, int]]) -> None:
    assert parse_store_url(url) == want


@pytest.mark.parametrize("url", ["http://10.0.0.1:2379", "etcd://", "etcd://a:notaport", "etcd://a:1/x",
                                 "etcd://u@a:1"])
def test_bad_store_urls_are_refused_by_name(url: str) -> None:
    with pytest.raises(InvalidArgument, match="--cluster-store"):
        parse_store_url(url)


def test_advertise_addr_and_vni_checks() -> None:
    assert check_advertise_addr("10.77.0.10") == IPv4Address("10.77.0.10")
    for bad in ("fd00::1", "127.0.0.1", "0.0.0.0", "224.0.0.1", "host"):
        with pytest.raises(InvalidArgument, match="--advertise-addr"):
            check_advertise_addr(bad)
    assert check_vni(4096) == 4096
    for bad_vni in (0, 1 << 24, True, "1"):
        with pytest.raises(InvalidArgument, match="vni"):
            check_vni(bad_vni)


@given(st.sets(st.integers(min_value=1, max_value=VNI_FIRST + 64)))
def test_pick_vni_is_the_lowest_free_from_4096(taken: set[int]) -> None:
    vni = pick_vni(taken)
    assert vni >= VNI_FIRST and vni not in taken
    assert all(v in taken for v in range(VNI_FIRST, vni))


def test_network_config_vni_only_for_overlay() -> None:
    cfg = NetworkConfig.from_json({"name": "ov", "subnet4": "10.50.0.0/24", "driver": "overlay", "vni": 5000})
    assert cfg.vni == 5000 and NetworkConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(InvalidArgument, match="only overlay networks"):
        NetworkConfig.from_json({"name": "b", "subnet4": "10.50.0.0/24", "vni": 5000})
    with pytest.raises(InvalidArgument, match="vni: expected an integer"):
        NetworkConfig.from_json({"name": "ov", "subnet4": "10.50.0.0/24", "driver": "overlay", "vni": 0})


def test_daemon_flags_need_each_other() -> None:
    from bpfnet.config import load_daemon_config

    with pytest.raises(InvalidArgument, match="--cluster-store needs --advertise-addr"):
        load_daemon_config(None, {"cluster_store": "etcd://10.0.0.1:2379"})
    with pytest.raises(InvalidArgument, match="need --cluster-store"):
        load_daemon_config(None, {"advertise_addr": "10.0.0.2"})
    with pytest.raises(InvalidArgument, match="--cluster-store 'etcd:/x'"):
        load_daemon_config(None, {"cluster_store": "etcd:/x", "advertise_addr": "10.0.0.2"})
    cfg = load_daemon_config(None, {"cluster_store": "etcd://10.0.0.1:2379", "advertise_addr": "10.0.0.2",
                                    "node_name": "h0"})
    assert (cfg.cluster_store, cfg.advertise_addr, cfg.node_name) == ("etcd://10.0.0.1:2379", "10.0.0.2", "h0")
