"""The SQLite store: networks, endpoints, leases, reopen and orphan reclaim."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from bpfnet.state import EndpointRow, Store

CFG = {"name": "bridge", "bridge": "bpfnet0", "subnet4": "172.30.0.0/16"}


def reserve(store: Store, name: str, leases: list[tuple[str, int]], network: str = "bridge") -> EndpointRow | None:
    return store.reserve_endpoint(name, network, name, False, "02:42:ac:1e:00:02", leases, 8, 1.0,
                                  lambda i: f"bnv{i}")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(str(tmp_path / "state"))
    s.add_network("bridge", CFG, is_default=True)
    return s


def test_leases_survive_reopen(tmp_path: Path, store: Store) -> None:
    reserve(store, "a", [("172.30.0.2", 4), ("fd00::242:ac1e:2", 6)])
    store.set_endpoint_state("a", "ready")
    store.close()
    again = Store(str(tmp_path / "state"))
    assert {(lease.address, lease.family, lease.endpoint) for lease in again.leases("bridge")} == {
        ("172.30.0.2", 4, "a"), ("fd00::242:ac1e:2", 6, "a")}
    row = again.endpoint("a")
    assert row is not None and row.state == "ready" and row.host_ifname == "bnv0"
    net = again.network("bridge")
    assert net is not None and net.is_default and net.config == CFG and net.id == 1


def test_reserve_is_atomic_on_lease_conflict(store: Store) -> None:
    reserve(store, "a", [("172.30.0.2", 4)])
    with pytest.raises(sqlite3.IntegrityError):
        reserve(store, "b", [("172.30.0.3", 4), ("172.30.0.2", 4)])
    assert store.endpoint("b") is None  # no row and no half of its leases
    assert [lease.address for lease in store.leases()] == ["172.30.0.2"]


def test_duplicate_name_returns_none(store: Store) -> None:
    assert reserve(store, "a", [("172.30.0.2", 4)]) is not None
    assert reserve(store, "a", [("172.30.0.3", 4)]) is None
    assert len(store.leases()) == 1


def test_endpoint_ids_reused_and_bounded(store: Store) -> None:
    for i in range(8):
        reserve(store, f"e{i}", [(f"172.30.0.{i + 2}", 4)])
    with pytest.raises(OverflowError, match="8 endpoint slots"):
        reserve(store, "e8", [("172.30.0.20", 4)])
    store.remove_endpoint("e3")
    row = reserve(store, "e9", [("172.30.0.21", 4)])
    assert row is not None and row.id == 3 and row.host_ifname == "bnv3"


def test_remove_endpoint_frees_leases(store: Store) -> None:
    reserve(store, "a", [("172.30.0.2", 4)])
    reserve(store, "b", [("172.30.0.3", 4)])
    store.remove_endpoint("a")
    assert [(lease.address, lease.endpoint) for lease in store.leases()] == [("172.30.0.3", "b")]


def test_orphan_lease_reclaim(tmp_path: Path, store: Store) -> None:
    reserve(store, "a", [("172.30.0.2", 4)])
    reserve(store, "b", [("172.30.0.3", 4), ("fd00::3", 6)])
    # a crash between deleting the endpoint row and its leases leaves orphans
    with store.tx() as c:
        c.execute("DELETE FROM endpoints WHERE name = 'b'")
    store.close()
    again = Store(str(tmp_path / "state"))
    orphans = again.remove_orphan_leases()
    assert sorted((o.address, o.endpoint) for o in orphans) == [("172.30.0.3", "b"), ("fd00::3", "b")]
    assert [(lease.address, lease.endpoint) for lease in again.leases()] == [("172.30.0.2", "a")]
    assert again.remove_orphan_leases() == []


def test_network_ids_and_removal(store: Store) -> None:
    assert store.add_network("n2", {**CFG, "name": "n2"}) == 2
    assert store.add_network("n3", {**CFG, "name": "n3"}) == 3
    reserve(store, "x", [("10.0.0.2", 4)], network="n2")
    store.remove_endpoint("x")
    store.remove_network("n2")
    assert [n.name for n in store.networks()] == ["bridge", "n3"]
    assert store.add_network("n4", {**CFG, "name": "n4"}) == 2  # smallest free id
    assert store.leases("n2") == []


def test_state_transitions_persist(tmp_path: Path, store: Store) -> None:
    reserve(store, "a", [("172.30.0.2", 4)])
    row = store.endpoint("a")
    assert row is not None and row.state == "creating"
    store.set_endpoint_state("a", "removing")
    store.close()
    row = Store(str(tmp_path / "state")).endpoint("a")
    assert row is not None and row.state == "removing"


def test_tx_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError), store.tx() as c:
        c.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
        raise RuntimeError("boom")
    with store.tx() as c:
        assert c.execute("SELECT COUNT(*) FROM meta WHERE key = 'k'").fetchone()[0] == 0


def test_a_file_of_an_earlier_version_gets_the_new_columns(tmp_path: Path) -> None:
    """Endpoint rows written before ifname/owner/handoff existed read as eth0, no owner, no handoff."""
    state = tmp_path / "old"
    state.mkdir()
    db = sqlite3.connect(state / "bpfnet.db")
    db.executescript("""
        CREATE TABLE networks (name TEXT PRIMARY KEY, id INTEGER UNIQUE NOT NULL, config TEXT NOT NULL,
                               is_default INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE endpoints (name TEXT PRIMARY KEY, id INTEGER UNIQUE NOT NULL,
                                network TEXT NOT NULL REFERENCES networks(name), netns TEXT NOT NULL,
                                adopted INTEGER NOT NULL, host_ifname TEXT NOT NULL, mac TEXT NOT NULL,
                                state TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('hostns', '');
        INSERT INTO endpoints VALUES ('a', 0, 'bridge', 'a', 0, 'bnv0', '02:42:ac:1e:00:02', 'ready', 1.0);
    """)
    db.close()
    store = Store(str(state))
    row = store.endpoint("a")
    assert row is not None and (row.ifname, row.owner, row.handoff) == ("eth0", "", False)
    assert store.endpoint_by_owner("") is None  # no owner is nobody's key
    store.close()
    Store(str(state)).close()  # a second open adds nothing


def test_owner_and_handoff_are_stored(store: Store) -> None:
    row = store.reserve_endpoint("d", "bridge", "", True, "02:42:ac:1e:00:05", [("172.30.0.5", 4)], 8, 1.0,
                                 lambda i: f"bnv{i}", ifname=lambda i: f"bnv{i}p", owner="docker:e1", handoff=True)
    assert row is not None and row.ifname == "bnv0p"
    assert store.endpoint_by_owner("docker:e1") == store.endpoint("d") == row
