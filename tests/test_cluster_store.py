"""The cluster store (bpfnet.cluster.store) against a real etcd: transactions under races,
leases, the watch, and an unreachable store. Runs in the etcd's own namespace (``in_netns``),
with its own etcd so that the hosts of tests/test_cluster.py never see these keys.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest
from bpfnet.cluster.model import ClusterEndpoint
from bpfnet.cluster.store import EtcdStore
from bpfnet.errors import Conflict, StoreUnavailable
from cluster import Etcd, in_netns
from helpers import delete_netns, is_root, make_netns, run, unique_tag

pytestmark = pytest.mark.kernel
ADDR = "10.78.0.1"


@pytest.fixture(scope="module")
def etcd() -> Iterator[Etcd]:
    if not is_root():
        pytest.skip("needs root")
    ns = make_netns(f"{unique_tag()}-etcd")
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "addr", "add", f"{ADDR}/32", "dev", "lo")
    e = Etcd(ns, ADDR)
    try:
        yield e.start()
    finally:
        e.remove()
        delete_netns(ns)


@pytest.fixture
def store(etcd: Etcd) -> Iterator[Any]:
    etcd.wipe()
    yield lambda node="n1", ttl=2: EtcdStore([(ADDR, 2379)], node, f"10.78.1.{len(node)}", ttl=ttl)
    etcd.wipe()


def ep(name: str, address: str, node: str = "n1") -> ClusterEndpoint:
    return ClusterEndpoint("ov", node, name, IPv4Address(address), "02:42:0a:00:00:02", IPv4Address("10.78.1.1"))


def test_claims_race_and_exactly_one_wins(etcd: Etcd, store: Any) -> None:
    def body() -> list[bool]:
        stores = [store(f"n{i}") for i in range(4)]
        wins: list[bool] = []
        barrier = threading.Barrier(len(stores))

        def claim(s: EtcdStore, i: int) -> None:
            barrier.wait()
            wins.append(s.claim_endpoint(ep(f"e{i}", "10.0.0.5", s.node)))

        threads = [threading.Thread(target=claim, args=(s, i)) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return wins

    wins = in_netns(etcd.ns, body)
    assert sorted(wins) == [False, False, False, True]
    assert etcd.keys("/bpfnet/v1/leases/") == ["/bpfnet/v1/leases/ov/10.0.0.5"]
    assert len(etcd.keys("/bpfnet/v1/endpoints/")) == 1


def test_release_removes_only_its_own_leases(etcd: Etcd, store: Any) -> None:
    def body() -> None:
        s = store()
        a = ep("a", "10.0.0.2")
        assert s.claim_endpoint(a)
        assert s.leased("ov") == {"10.0.0.2"}
        impostor = ep("b", "10.0.0.2")  # same address, another endpoint: may not free a's lease
        s.release_endpoint(impostor)
        assert s.leased("ov") == {"10.0.0.2"}
        s.release_endpoint(a)
        assert s.leased("ov") == set()

    in_netns(etcd.ns, body)
    assert etcd.keys() == []


def test_network_create_is_one_transaction(etcd: Etcd, store: Any) -> None:
    def body() -> None:
        s = store()
        s.create_network("ov", {"name": "ov", "subnet4": "10.50.0.0/24"}, 4096, lambda nets: None)
        with pytest.raises(Conflict, match="VNI 4096 is in use by network 'ov'"):
            s.create_network("ov2", {"name": "ov2"}, 4096, lambda nets: None)

        def clash(nets: dict[str, Any]) -> None:
            if "ov" in nets:
                raise Conflict("overlaps ov")

        with pytest.raises(Conflict, match="overlaps ov"):
            s.create_network("ov3", {"name": "ov3"}, 4097, clash)

        # another node changes the networks between the check and the transaction: refused
        other = store("n2")

        def sneaky(nets: dict[str, Any]) -> None:
            other.create_network("ov5", {"name": "ov5"}, 4099, lambda n: None)

        with pytest.raises(Conflict, match="created or removed a network meanwhile"):
            s.create_network("ov4", {"name": "ov4"}, 4098, sneaky)
        assert sorted(s.networks()) == ["ov", "ov5"] and s.taken_vnis() == {4096, 4099}
        assert s.claim_endpoint(ep("a", "10.50.0.2"))
        with pytest.raises(Conflict, match="has 1 endpoint\\(s\\) on node\\(s\\) n1"):
            s.delete_network("ov", 4096)
        s.release_endpoint(ep("a", "10.50.0.2"))
        s.delete_network("ov", 4096)
        assert sorted(s.networks()) == ["ov5"] and s.taken_vnis() == {4099}

    in_netns(etcd.ns, body)


def test_nodes_leases_and_the_watch(etcd: Etcd, store: Any) -> None:
    def body() -> None:
        a, b = store("n1", ttl=1), store("n2", ttl=1)
        a.connect()
        b.connect()
        seen: list[int] = []
        a.start(lambda view: seen.append(len(view.remote("n1"))))
        assert b.claim_endpoint(ep("x", "10.0.0.9", "n2"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (not seen or seen[-1] != 1):
            time.sleep(0.02)
        assert seen[-1] == 1  # the watch told a about b's endpoint
        assert [n["name"] for n in a.nodes()] == ["n1", "n2"]
        b.stop(revoke=True)  # b leaves at once: a stops forwarding to its endpoint
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and seen[-1] != 0:
            time.sleep(0.02)
        assert seen[-1] == 0 and [n["name"] for n in a.nodes()] == ["n1"]
        assert json.loads(a.view.endpoints["/bpfnet/v1/endpoints/ov/n2/x"].to_json())["node"] == "n2"
        a.stop(revoke=True)

    in_netns(etcd.ns, body)


def test_unreachable_store_is_a_clear_503() -> None:
    s = EtcdStore([("127.0.0.1", 9)], "n1", "10.0.0.1", timeout=0.5)
    with pytest.raises(StoreUnavailable, match=r"the cluster store etcd://127.0.0.1:9 cannot be reached") as err:
        s.connect()
    assert err.value.status == 503 and not s.connected
