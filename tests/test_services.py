"""NetworkService, EndpointService and reconcile driven by a fake kernel: no root, no kernel, seconds.

The real-kernel tests (test_controller_*, test_reconcile_kernel) cover the
adapters and the daemon end to end; these cover the services' policy: what is
made, in what order, what is undone when a step fails, and what reconcile repairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from typing import Any

import pytest
from bpfnet.addressing import mac_from_ipv4
from bpfnet.endpoints import ENDPOINT_NETNS_SYSCTLS_V6, EndpointService
from bpfnet.errors import (
    BpfnetError,
    Conflict,
    Exhausted,
    Forbidden,
    Incomplete,
    InvalidArgument,
    NotFound,
)
from bpfnet.ndp import sync_proxy_neighbours
from bpfnet.networks import NETWORK_LIMIT, NetworkService
from bpfnet.reconcile import Reconciler
from bpfnet.runtime import Runtime
from bpfnet.state import Store
from fakes import FakeDatapath, FakeKernel, FakeLink, FakeNetns, InjectedFault, RecordingObserver


@dataclass
class Env:
    kernel: FakeKernel
    datapath: FakeDatapath
    observer: RecordingObserver
    store: Store
    rt: Runtime
    nets: NetworkService
    eps: EndpointService

    def state(self) -> tuple[object, ...]:
        """Everything an endpoint add may leave: kernel objects, rows, leases, datapath entries."""
        return (self.kernel.objects(), [e.name for e in self.store.endpoints()], self.store.leases(),
                sorted(self.datapath.endpoints))

    def reconciler(self) -> Reconciler:
        return Reconciler(self.rt, self.nets, self.eps)


def make_env(tmp_path: Path, **rt_args: Any) -> Env:
    kernel, datapath, observer = FakeKernel(), FakeDatapath(), RecordingObserver()
    store = Store(str(tmp_path / "state"))
    rt = Runtime(store=store, datapath=datapath, ipr=None, hostns="managed", kernel=kernel,
                 observer=observer, **rt_args)
    nets = NetworkService(rt)
    return Env(kernel, datapath, observer, store, rt, nets, EndpointService(rt, nets))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    e.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"}, is_default=True)
    e.nets.create({"name": "n6", "subnet4": "10.2.0.0/24", "subnet6": "fd00:2::/64"})
    yield e
    e.store.close()


# add and remove -------------------------------------------------------------
def test_add_makes_every_object_and_remove_removes_them(env: Env) -> None:
    before = env.state()
    ep = env.eps.add({"name": "e1"})
    assert ep["network"] == "n4" and ep["ipv4"] == "10.1.0.2/24" and ep["host_ifname"] == "bnv0"
    host = env.kernel.links["bnv0"]
    assert host.master == env.kernel.links["br-n4"].index and host.up
    eth0 = env.kernel.eth0("e1")
    assert eth0.mac == ep["mac"] and eth0.up
    assert eth0.addresses == {("10.1.0.2", 24)} and eth0.gateways == {"10.1.0.1"}
    assert env.datapath.endpoints["e1"].host_ifindex == host.index
    assert env.store.endpoint("e1").state == "ready"  # type: ignore[union-attr]
    env.eps.remove("e1")
    assert env.state() == before
    assert env.observer.added == [True] and env.observer.removed == [True]


def test_ipv4_only_endpoint_gets_no_ipv6_and_ipv6_endpoint_no_router_solicitations(env: Env) -> None:
    env.eps.add({"name": "e4"})
    ns4 = env.kernel.namespaces["e4"]
    assert ns4.sysctls == {"net/ipv6/conf/eth0/disable_ipv6": "1"}
    assert env.kernel.sysctls["net/ipv6/conf/bnv0/disable_ipv6"] == "1"
    env.eps.add({"name": "e6", "network": "n6"})
    ns6 = env.kernel.namespaces["e6"]
    assert ns6.sysctls == ENDPOINT_NETNS_SYSCTLS_V6
    assert "net/ipv6/conf/bnv1/disable_ipv6" not in env.kernel.sysctls
    eth0 = env.kernel.eth0("e6")
    assert eth0.gateways == {"10.2.0.1", "fe80::1"}
    assert any(a.startswith("fd00:2::") and p == 64 for a, p in eth0.addresses)


def test_adopted_namespace_is_kept_and_gets_the_sysctls(env: Env) -> None:
    env.kernel.namespaces["mine"] = FakeNetns()
    env.eps.add({"name": "a6", "network": "n6", "netns": "mine"})
    assert env.kernel.namespaces["mine"].sysctls == ENDPOINT_NETNS_SYSCTLS_V6
    env.eps.remove("a6")
    assert "mine" in env.kernel.namespaces and not env.kernel.namespaces["mine"].links


def _with_proxy(env: Env) -> int:
    proxy = FakeLink("up0", 99, None, up=True)
    env.kernel.links["up0"] = proxy
    env.rt.ndp_proxy_iface = "up0"
    return proxy.index


@pytest.mark.parametrize("network", ["n4", "n6"])
def test_add_rolls_back_at_every_failing_step(env: Env, network: str) -> None:
    """The fake raises at the Nth kernel change, for every N until the add succeeds: nothing stays."""
    _with_proxy(env)
    before = env.state()
    for n in range(1, 50):
        env.kernel.fail_at = env.kernel.mutations + n
        try:
            env.eps.add({"name": "rb", "network": network})
        except InjectedFault:
            assert env.state() == before, f"failure at step {n} left something behind"
            continue
        break
    else:
        pytest.fail("the add never succeeded")
    assert n > 4  # it failed at least at netns, veth, configure and proxy steps
    assert env.observer.added == [False] * (n - 1) + [True]


def test_add_rolls_back_when_the_datapath_fails(env: Env) -> None:
    before = env.state()
    env.datapath.fail.add("add_endpoint")
    with pytest.raises(InjectedFault):
        env.eps.add({"name": "dp"})
    assert env.state() == before


def test_removal_is_idempotent_when_objects_are_already_gone(env: Env) -> None:
    env.eps.add({"name": "gone"})
    env.kernel.remove_netns("gone")  # takes the veth with it
    env.eps.remove("gone")
    assert env.store.endpoint("gone") is None and not env.store.leases("n4")
    with pytest.raises(NotFound):
        env.eps.remove("gone")


def test_removal_completes_when_the_datapath_fails(env: Env) -> None:
    env.eps.add({"name": "dpf"})
    env.datapath.fail.add("remove_endpoint")
    env.eps.remove("dpf")  # logged and counted, not fatal: the address is free again
    assert env.store.endpoint("dpf") is None and not env.store.leases("n4")
    assert "dpf" not in env.kernel.namespaces and "bnv0" not in env.kernel.links
    assert env.observer.teardown["datapath"] == 1 and env.observer.removed == [False]


def test_removal_keeps_the_row_while_the_veth_cannot_be_removed(env: Env) -> None:
    env.eps.add({"name": "stuck"})
    env.kernel.fail_ops = {"delete_link", "remove_netns"}
    with pytest.raises(Incomplete) as err:
        env.eps.remove("stuck")
    assert err.value.status == 500 and "veth bnv0" in err.value.message
    row = env.store.endpoint("stuck")
    assert row is not None and row.state == "removing" and env.store.leases("n4")
    env.kernel.fail_ops = set()
    stats = env.reconciler().endpoints()  # the next start retries
    assert stats["rolled_back"] == 1
    assert env.store.endpoint("stuck") is None and not env.store.leases("n4")


# limits and conflicts -------------------------------------------------------------
def test_endpoint_slots_exhausted_is_507(tmp_path: Path) -> None:
    e = make_env(tmp_path, max_endpoints=2)
    e.nets.create({"name": "n", "subnet4": "10.3.0.0/24"})
    e.eps.add({"name": "a", "network": "n"})
    e.eps.add({"name": "b", "network": "n"})
    before = e.state()
    with pytest.raises(Exhausted) as err:
        e.eps.add({"name": "c", "network": "n"})
    assert err.value.status == 507 and "endpoint slots" in err.value.message
    assert e.state() == before


def test_network_limit_is_507(env: Env) -> None:
    for i in range(NETWORK_LIMIT - 2):  # n4 and n6 exist
        env.store.add_network(f"x{i}", {"name": f"x{i}", "bridge": f"bx{i}", "subnet4": f"10.{100 + i // 256}.{i % 256}.0/24"})
    with pytest.raises(Exhausted) as err:
        env.nets.create({"name": "last", "subnet4": "10.99.0.0/24"})
    assert err.value.status == 507 and "MAX_NETWORKS" in err.value.message
    assert env.store.network("last") is None and "br-last" not in env.kernel.links


def test_bridge_name_is_chosen_by_the_service(env: Env) -> None:
    assert env.nets.create({"name": "short", "subnet4": "10.4.0.0/24"})["bridge"] == "br-short"
    long = env.nets.create({"name": "a-rather-long-name", "subnet4": "10.5.0.0/24"})["bridge"]
    assert long.startswith("br-") and len(long) == 15 and long in env.kernel.links
    assert env.nets.create({"name": "given", "bridge": "mine0", "subnet4": "10.6.0.0/24"})["bridge"] == "mine0"


def test_default_network_cannot_be_removed(env: Env) -> None:
    with pytest.raises(Forbidden) as err:
        env.nets.remove("n4")
    assert err.value.status == 403 and "default network" in err.value.message
    assert env.store.network("n4") is not None and "br-n4" in env.kernel.links
    env.nets.remove("n6")  # any other network can
    assert env.store.network("n6") is None and "br-n6" not in env.kernel.links


def test_duplicate_macs_are_refused(env: Env) -> None:
    first = env.eps.add({"name": "m1", "mac": "02:00:00:00:00:01"})
    derived = env.eps.add({"name": "m2"})
    before = env.state()
    for mac, owner in (("02:00:00:00:00:01", "m1"), ("02:00:00:00:00:01".upper(), "m1"), (derived["mac"], "m2")):
        with pytest.raises(Conflict, match=f"already used by endpoint '{owner}'"):
            env.eps.add({"name": "m3", "mac": mac})
    with pytest.raises(Conflict, match="bridge br-n4"):
        env.eps.add({"name": "m3", "mac": mac_from_ipv4(env.nets.config("n4")[1].gateway4)})
    assert env.state() == before
    # another layer-2 domain may reuse it
    env.eps.add({"name": "m4", "network": "n6", "mac": first["mac"]})


def test_name_with_trailing_newline_is_refused(env: Env) -> None:
    for bad in ({"name": "x\n"}, ):
        with pytest.raises(InvalidArgument):
            env.eps.add(bad)
    with pytest.raises(InvalidArgument):
        env.nets.create({"name": "y\n", "subnet4": "10.7.0.0/24"})
    with pytest.raises(InvalidArgument):
        env.nets.create({"name": "y", "bridge": "br-y\n", "subnet4": "10.7.0.0/24"})


def test_status_codes_have_one_meaning_each() -> None:
    assert {c.status for c in (InvalidArgument, Forbidden, NotFound, Conflict, Exhausted)} == {400, 403, 404, 409, 507}
    assert issubclass(Incomplete, BpfnetError)


# reconcile ---------------------------------------------------------------------------
def test_reconcile_repairs_and_counts_each_difference(env: Env) -> None:
    env.eps.add({"name": "r6", "network": "n6"})
    host = env.kernel.links["bnv0"]
    host.master, host.up = None, False
    eth0 = env.kernel.eth0("r6")
    eth0.addresses.discard(("10.2.0.2", 24))
    eth0.gateways.discard("fe80::1")
    eth0.mac, eth0.up = "02:00:00:00:00:99", False
    env.datapath.broken.add("r6")
    stats = env.reconciler().endpoints()
    assert stats["repaired"] == 1 and stats["reclaimed"] == 0
    assert env.observer.repairs == {"master": 1, "link_up": 1, "mac": 1, "eth0_up": 1, "address": 1,
                                    "route": 1, "datapath_entries": 1}
    assert host.master == env.kernel.links["br-n6"].index and host.up
    assert ("10.2.0.2", 24) in eth0.addresses and "fe80::1" in eth0.gateways
    assert eth0.mac == env.store.endpoint("r6").mac and eth0.up  # type: ignore[union-attr]
    assert not env.datapath.check_endpoint(env.eps.specs()[0])
    env.observer.repairs.clear()
    assert env.reconciler().endpoints()["repaired"] == 0 and not env.observer.repairs  # in step now


def test_reconcile_reclaims_rolls_back_and_deletes_leaks(env: Env) -> None:
    env.eps.add({"name": "lost"})
    env.eps.add({"name": "half"})
    env.store.set_endpoint_state("half", "creating")
    env.kernel.remove_netns("lost")
    env.kernel.links["bnv77"] = FakeLink("bnv77", 77, "veth")
    stats = env.reconciler().endpoints()
    assert stats == {"rolled_back": 1, "reclaimed": 1, "repaired": 0, "leaked_links": 1, "orphan_leases": 0}
    assert not env.store.endpoints() and not env.store.leases()
    assert not [n for n in env.kernel.links if n.startswith("bnv")]


def test_proxy_neighbours_are_repaired_and_counted(env: Env) -> None:
    proxy = _with_proxy(env)
    ep = env.eps.add({"name": "p6", "network": "n6"})
    address = IPv6Address(ep["ipv6"][0].split("/")[0])
    assert env.kernel.proxy[proxy] == {address}
    env.kernel.proxy[proxy].clear()
    stale = IPv6Address("fd00:2::dead")
    env.kernel.proxy[proxy].add(stale)
    assert sync_proxy_neighbours(env.rt) == 1
    assert env.kernel.proxy[proxy] == {address} and env.observer.repairs["proxy_neighbour"] == 1
    env.eps.remove("p6")
    assert not env.kernel.proxy[proxy]


def test_controller_metrics_observe_through_the_observer() -> None:
    from bpfnet.metrics import ControllerMetrics
    from bpfnet.observer import Observer
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    observer: Observer = ControllerMetrics(registry)
    observer.endpoint_added(0.01, True)
    observer.endpoint_removed(0.02, False)
    observer.reconcile_error()
    observer.reconcile_repair("address")
    observer.teardown_failed("datapath")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("bpfnet_endpoint_add_duration_seconds_count", result="success") == 1
    assert value("bpfnet_endpoint_remove_duration_seconds_count", result="error") == 1
    assert value("bpfnet_reconcile_errors_total") == 1
    assert value("bpfnet_reconcile_repairs_total", kind="address") == 1
    assert value("bpfnet_endpoint_teardown_failures_total", step="datapath") == 1
