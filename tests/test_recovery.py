"""A lost state (--reconcile check/adopt/wipe) and a full disk, on the services with a fake kernel.

No root: the fake kernel keeps what a previous daemon made while the state file is replaced by
an empty one. The real-kernel versions are in test_daemon_hardening.py.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from bpfnet.config import NetworkConfig, migrate_stored_network
from bpfnet.errors import InvalidArgument
from bpfnet.model import InterfaceState
from bpfnet.reconcile import migrate_stored_networks
from bpfnet.recovery import check_fresh_state, survey
from bpfnet.state import StateError, StorageFull, Store
from test_services import Env, make_env


def populated(tmp_path: Path) -> Env:
    env = make_env(tmp_path / "first")
    env.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"}, is_default=True)
    env.nets.create({"name": "n6", "subnet4": "10.2.0.0/24", "subnet6": "fd00:2::/64"})
    env.eps.add({"name": "e1"})
    env.eps.add({"name": "e2", "network": "n6"})
    env.eps.add({"name": "e3", "mac": "02:00:00:00:00:33"})
    env.eps.remove("e1")  # e3 keeps id 2: ids are not dense after removals
    return env


def with_lost_state(tmp_path: Path, first: Env) -> Env:
    """A second daemon's services over the same kernel, with a new (empty) state file."""
    second = make_env(tmp_path / "second")
    second.rt.kernel = first.kernel
    second.kernel = first.kernel
    return second


def test_empty_state_with_live_endpoints_refuses(tmp_path: Path) -> None:
    first = populated(tmp_path)
    second = with_lost_state(tmp_path, first)
    assert second.store.fresh
    before = second.kernel.objects()
    with pytest.raises(StateError, match=r"is new or empty, but 2 endpoint veth\(s\) \(bnv1, bnv2\)"):
        check_fresh_state(second.rt, "check", str(tmp_path / "no-pins"), "bpfnet0")
    assert second.kernel.objects() == before  # nothing destroyed


def test_known_state_passes_the_check(tmp_path: Path) -> None:
    env = populated(tmp_path)
    env.store.claim_meta("hostns", "managed")
    env.store.close()
    env.rt.store = env.store = Store(str(tmp_path / "first" / "state"))  # reopened: not fresh
    assert not env.store.fresh
    assert not survey(env.rt, str(tmp_path / "no-pins"))
    check_fresh_state(env.rt, "check", str(tmp_path / "no-pins"), "bpfnet0")


def test_adopt_rebuilds_networks_endpoints_and_leases(tmp_path: Path) -> None:
    first = populated(tmp_path)
    second = with_lost_state(tmp_path, first)
    check_fresh_state(second.rt, "adopt", str(tmp_path / "no-pins"), "bpfnet0")
    was = {e.name: e for e in first.store.endpoints()}
    now = {e.name: e for e in second.store.endpoints()}
    assert set(now) == {"e2", "e3"}
    for name, row in now.items():
        old = was[name]
        assert (row.id, row.network, row.mac, row.host_ifname, row.state) == \
            (old.id, old.network, old.mac, old.host_ifname, "ready")
        assert row.adopted  # endpoint rm will never delete a namespace it cannot prove it made
        assert sorted((x.address, x.family) for x in second.store.endpoint_leases(name)) == \
            sorted((x.address, x.family) for x in first.store.endpoint_leases(name))
    nets = {n.name: n.config for n in second.store.networks()}
    assert nets["n4"]["subnet4"] == "10.1.0.0/24" and nets["n4"]["gateway4"] == "10.1.0.1"
    assert nets["n6"]["subnet6"] == "fd00:2::/64" and nets["n6"]["ipv6"]
    # the rebuilt state is usable: the next address skips the adopted ones
    assert second.eps.add({"name": "e4", "network": "n4"})["ipv4"] == "10.1.0.2/24"
    assert second.eps.add({"name": "e5", "network": "n4"})["ipv4"] == "10.1.0.4/24"


def test_adopt_leaves_a_veth_it_cannot_explain(tmp_path: Path) -> None:
    first = populated(tmp_path)
    del first.kernel.namespaces["e3"]  # its peer is in no named namespace any more
    second = with_lost_state(tmp_path, first)
    check_fresh_state(second.rt, "adopt", str(tmp_path / "no-pins"), "bpfnet0")
    assert [e.name for e in second.store.endpoints()] == ["e2"]
    assert "bnv2" in second.kernel.links  # left alone, not deleted


def test_adopt_tells_its_peer_from_a_lookalike_in_another_managed_namespace(tmp_path: Path) -> None:
    """Every fresh namespace numbers its links alike: another daemon's endpoint can show the same
    (eth0 index, peer index) pair. Only the peer's namespace id tells them apart."""
    first = populated(tmp_path)
    second = with_lost_state(tmp_path, first)
    kernel = second.kernel
    real = kernel.interface_state
    kernel.namespaces["foreign"] = kernel.namespaces["e3"]

    def lookalike(ns: str, ifname: str) -> InterfaceState | None:
        state = real("e3" if ns == "foreign" else ns, ifname)
        if ns == "foreign" and state is not None:
            return replace(state, mac="02:00:00:00:99:99", peer_in_caller=False)
        return state

    kernel.interface_state = lookalike  # type: ignore[method-assign]
    check_fresh_state(second.rt, "adopt", str(tmp_path / "no-pins"), "bpfnet0")
    rows = {e.name: e for e in second.store.endpoints()}
    assert set(rows) == {"e2", "e3"} and rows["e3"].mac == "02:00:00:00:00:33"


def test_wipe_lets_the_start_go_on(tmp_path: Path) -> None:
    first = populated(tmp_path)
    second = with_lost_state(tmp_path, first)
    found = check_fresh_state(second.rt, "wipe", str(tmp_path / "no-pins"), "bpfnet0")
    assert [v.name for v in found.veths] == ["bnv1", "bnv2"]
    stats = second.reconciler().endpoints()
    assert stats["leaked_links"] == 2 and not [n for n in second.kernel.links if n.startswith("bnv")]


def test_disk_full_during_add_changes_nothing(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"}, is_default=True)
    before = env.state()
    pages = env.store._db.execute("PRAGMA page_count").fetchone()[0]
    env.store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StorageFull) as err:
        for i in range(200):  # until a page is needed
            env.eps.add({"name": f"e{i}"})
            before = env.state()
    assert err.value.status == 507 and "disk is full" in err.value.message
    assert env.state() == before  # the failed add left no link, namespace, row, lease or entry


# networks stored by earlier versions ---------------------------------------------------
LEGACY_NET = IPv4Network("10.9.0.0/24")
LEGACY = {  # what an earlier version's NetworkConfig.to_json() stored
    "name": "old", "bridge": "br-old", "subnet4": "10.9.0.0/24", "gateway4": "10.9.0.1", "ip_range4": None,
    "ipv6": True, "subnet6": None, "gateway6": "fd00:9::1", "ip_range6": None, "default_gateway4": None,
    "default_gateway6": "fe80::1%eth0", "mtu": 1500, "icc": True,
}


def test_legacy_network_rows_are_migrated_once(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.store.add_network("old", LEGACY, is_default=True)
    with pytest.raises(InvalidArgument):
        NetworkConfig.from_json(LEGACY)  # today's rules refuse both legacy forms
    assert migrate_stored_networks(env.rt) == 1
    row = env.store.network("old")
    assert row is not None
    cfg = NetworkConfig.from_json(row.config)
    assert cfg.gateway6 is None and str(cfg.default_gateway6) == "fe80::1" and cfg.subnet4 == LEGACY_NET
    assert migrate_stored_networks(env.rt) == 0  # already in this version's form
    env.nets.ensure_present(row)  # and usable


def test_unrepairable_legacy_row_is_one_line(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    env.store.add_network("bad", {**LEGACY, "name": "bad", "subnet4": "127.0.0.0/24", "gateway4": "127.0.0.1"})
    with pytest.raises(StateError, match=r"network bad in .* is not valid under this version's rules") as err:
        migrate_stored_networks(env.rt)
    assert "\n" not in err.value.message


def test_migrate_stored_network_is_pure_and_exact() -> None:
    row, changes = migrate_stored_network(LEGACY)
    assert row["gateway6"] is None and row["default_gateway6"] == "fe80::1" and len(changes) == 2
    assert LEGACY["gateway6"] == "fd00:9::1"  # the input is not modified
    current = {**LEGACY, "gateway6": None, "default_gateway6": None}
    assert migrate_stored_network(current) == (current, [])
