"""The network driver interface (bpfnet.drivers): the services call a network's driver, and only it.

A recording driver registered beside ``bridge`` shows what the services ask of a driver, in
what order, and that a failing driver call leaves nothing behind. Fake kernel: no root, seconds.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from bpfnet.config import NetworkConfig
from bpfnet.drivers import Drivers, EndpointAddresses
from bpfnet.drivers.bridge import BridgeDriver
from bpfnet.endpoints import EndpointService
from bpfnet.errors import Conflict, InvalidArgument
from bpfnet.model import InterfaceConfig
from bpfnet.networks import NetworkService
from bpfnet.rollback import Rollback
from bpfnet.runtime import Runtime
from bpfnet.state import EndpointRow, Store
from fakes import FakeDatapath, FakeKernel


class Recording(BridgeDriver):
    """The bridge's kernel work, with every call recorded; RESERVED is what the pool must skip."""

    name = "recording"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt)
        self.calls: list[tuple[str, str]] = []
        self.reserved_addresses: list[str] = []
        self.fail_create_endpoint = False

    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        self.calls.append(("create_network", cfg.name))
        rb.push("record", lambda: self.calls.append(("undo create_network", cfg.name)))
        return super().create_network(cfg, network_id, rb)

    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        self.calls.append(("delete_network", cfg.name))
        super().delete_network(cfg, network_id)

    def reserved(self, cfg: NetworkConfig) -> list[str]:
        return self.reserved_addresses

    def create_endpoint(self, cfg: NetworkConfig, row: EndpointRow, addrs: EndpointAddresses,
                        rb: Rollback) -> None:
        if self.fail_create_endpoint:
            raise Conflict("the cluster took that address meanwhile")
        self.calls.append(("create_endpoint", f"{row.name} {addrs.ipv4}"))

    def delete_endpoint(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        self.calls.append(("delete_endpoint", row.name))

    def join(self, cfg: NetworkConfig, row: EndpointRow, iface: InterfaceConfig | None, rb: Rollback) -> int:
        self.calls.append(("join", row.name))
        return super().join(cfg, row, iface, rb)

    def leave(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        self.calls.append(("leave", row.name))
        super().leave(cfg, row)


def make(tmp_path: Path) -> tuple[Recording, NetworkService, EndpointService, FakeKernel, Store]:
    kernel = FakeKernel()
    store = Store(str(tmp_path / "state"))
    rt = Runtime(store=store, datapath=FakeDatapath(), ipr=None, hostns="managed", kernel=kernel)
    rec = Recording(rt)
    nets = NetworkService(rt, Drivers(BridgeDriver(rt), rec))
    return rec, nets, EndpointService(rt, nets), kernel, store


def test_unknown_driver_is_refused_by_name(tmp_path: Path) -> None:
    _, nets, _, kernel, store = make(tmp_path)
    before = kernel.objects()
    with pytest.raises(InvalidArgument, match=r"unknown network driver 'nosuch' \(this daemon has: bridge, "
                                              r"recording\)"):
        nets.create({"name": "n1", "subnet4": "10.1.0.0/24", "driver": "nosuch"})
    assert store.networks() == [] and kernel.objects() == before
    with pytest.raises(InvalidArgument, match="driver: expected a driver name"):
        NetworkConfig.from_json({"name": "n1", "subnet4": "10.1.0.0/24", "driver": "Bad Name"})


def test_services_call_the_networks_driver_in_order(tmp_path: Path) -> None:
    rec, nets, eps, _, store = make(tmp_path)
    doc = nets.create({"name": "n1", "subnet4": "10.1.0.0/24", "driver": "recording"})
    assert doc["driver"] == "recording" and doc["config"]["driver"] == "recording"
    rec.reserved_addresses = ["10.1.0.2", "10.1.0.3"]  # taken elsewhere: the pool skips them
    ep = eps.add({"name": "e1", "network": "n1"})
    assert ep["ipv4"] == "10.1.0.4/24"
    eps.remove("e1")
    nets.remove("n1")
    assert rec.calls == [("create_network", "n1"), ("create_endpoint", "e1 10.1.0.4"), ("join", "e1"),
                         ("leave", "e1"), ("delete_endpoint", "e1"), ("delete_network", "n1")]
    assert store.networks() == [] and store.endpoints() == []
    # a bridge network is untouched by the recording driver
    nets.create({"name": "b1", "subnet4": "10.2.0.0/24"})
    assert rec.calls[-1] == ("delete_network", "n1")


def test_a_failing_driver_leaves_nothing(tmp_path: Path) -> None:
    rec, nets, eps, kernel, store = make(tmp_path)
    nets.create({"name": "n1", "subnet4": "10.1.0.0/24", "driver": "recording"})
    before = kernel.objects()
    rec.fail_create_endpoint = True
    with pytest.raises(Conflict, match="the cluster took that address"):
        eps.add({"name": "e1", "network": "n1", "ip": str(IPv4Address("10.1.0.9"))})
    assert store.endpoints() == [] and store.leases() == [] and kernel.objects() == before
    assert ("join", "e1") not in rec.calls


def test_overlay_without_a_cluster_store_says_what_is_missing(tmp_path: Path) -> None:
    _, nets, _, _, store = make(tmp_path)
    with pytest.raises(InvalidArgument, match="the overlay driver needs a cluster store: start the daemon with "
                                              "--cluster-store etcd://HOST:PORT --advertise-addr IP"):
        nets.create({"name": "ov", "subnet4": "10.1.0.0/24", "driver": "overlay"})
    assert store.networks() == []
