"""The services through a real daemon and kernel: reconcile CHECK after damage done by hand,
bridge naming behind the API, the default network's protection, duplicate MACs, names."""

from __future__ import annotations

import os
from typing import Any

import pytest
from bpfnet.client import ClientError
from helpers import DaemonFactory, DaemonProcess, address_set, ip_json, ping, run

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def d(module_daemons: DaemonFactory) -> DaemonProcess:
    return module_daemons.start("--bip", "10.241.0.1/24")


def status_of(fn: Any, *args: Any, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(ClientError) as err:
        fn(*args, **kwargs)
    return err.value.status, str(err.value)


def master_of(ns: str, dev: str) -> str | None:
    link = ip_json(ns, "link", "show", "dev", dev)[0]
    return link.get("master")


def test_reconcile_repairs_damage_done_by_hand(daemons: DaemonFactory) -> None:
    d = daemons.start("--bip", "10.242.0.1/24")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    ns, host = a["netns"], a["host_ifname"]
    address = a["ipv4"]
    d.stop()
    run("ip", "-n", ns, "addr", "del", address, "dev", "eth0")
    run("ip", "-n", d.netns, "link", "set", host, "nomaster")
    run("ip", "-n", b["netns"], "route", "del", "default")
    run("ip", "-n", b["netns"], "link", "set", "eth0", "down")
    assert address not in address_set(ns, "eth0") and master_of(d.netns, host) is None
    d.start()
    assert address in address_set(ns, "eth0")
    assert master_of(d.netns, host) == "bpfnet0"
    assert ip_json(b["netns"], "route", "show", "default")[0]["gateway"] == "10.242.0.1"
    assert ping(ns, b["ipv4"].split("/")[0]) and ping(b["netns"], address.split("/")[0])
    log = d.log_path.read_text().split("===== start 2")[1]
    for what in (f"address {address} is missing", f"host veth {host} is not a port of bridge bpfnet0",
                 "default route via 10.242.0.1 is missing", "eth0 is down"):
        assert what in log, what
    assert "'repaired': 2" in log
    d.stop()
    d.start()  # now in step: nothing to repair
    assert "repairing" not in d.log_path.read_text().split("===== start 3")[1]


def test_network_without_bridge_gets_one_from_the_daemon(d: DaemonProcess) -> None:
    short = d.client.post("/v1/networks", {"name": "nb", "subnet4": "10.243.0.0/24"})
    long = d.client.post("/v1/networks", {"name": "a-rather-long-name", "subnet4": "10.244.0.0/24"})
    try:
        assert short["bridge"] == "br-nb" and "br-nb" in d.links()
        assert long["bridge"].startswith("br-") and len(long["bridge"]) == 15 and long["bridge"] in d.links()
        cli = d.cli_json("network", "create", "nc", "--subnet", "10.245.0.0/24")
        assert cli["bridge"] == "br-nc"
    finally:
        for name in ("nb", "a-rather-long-name", "nc"):
            d.cli("network", "rm", name)


def test_default_network_cannot_be_removed(d: DaemonProcess) -> None:
    status, message = status_of(d.client.delete, "/v1/networks/bridge")
    assert status == 403 and "default network" in message
    ep = d.add_endpoint("after-rm")  # still works without --network
    d.remove_endpoint(ep["name"])


def test_duplicate_macs_are_refused(d: DaemonProcess) -> None:
    first = d.add_endpoint("mac1", mac="02:00:00:00:10:01")
    second = d.add_endpoint("mac2")
    try:
        for mac, owner in (("02:00:00:00:10:01", first["name"]), (second["mac"], second["name"])):
            status, message = status_of(d.add_endpoint, "mac3", mac=mac)
            assert status == 409 and owner in message
        status, message = status_of(d.add_endpoint, "mac3", mac="02:42:0a:f1:00:01")  # the bridge's
        assert status == 409 and "bridge" in message
        assert d.name("mac3") not in d.owned_netns()
    finally:
        d.remove_endpoint(first["name"])
        d.remove_endpoint(second["name"])


@pytest.mark.parametrize("path,body", [("/v1/endpoints", {"name": "x\n"}),
                                       ("/v1/networks", {"name": "y\n", "bridge": "br-y", "subnet4": "10.246.0.0/24"})])
def test_name_with_trailing_newline_is_400(d: DaemonProcess, path: str, body: dict[str, Any]) -> None:
    status, _ = status_of(d.client.post, path, body)
    assert status == 400


@pytest.mark.parametrize("attach", ["tc", "tcx"])
def test_reconcile_finds_the_ebpf_datapath_in_step_after_a_restart(daemons: DaemonFactory, attach: str) -> None:
    """The datapath check compares map records and filters (or tcx links) with what add_endpoint wrote:
    no false repairs, and a filter or link deleted by hand is back after the restart."""
    from bpfnet.datapath import bpfsys, tcx

    d = daemons.start("--ipv6", "--fixed-cidr-v6", "fd00:247::/64", "--bip", "10.247.0.1/24",
                      "--datapath-attach", attach, datapath="redirect")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    info = d.client.get("/v1/info")["datapath"]
    assert info["attach"] == attach
    link = tcx.link_path(info["pin_dir"], a["host_ifindex"], "ingress")
    d.stop()
    if attach == "tc":
        run("ip", "netns", "exec", d.netns, "tc", "filter", "del", "dev", a["host_ifname"], "ingress")
    else:
        old_id = bpfsys.link_info(fd := bpfsys.obj_get(link)).id
        os.close(fd)
        tcx.detach(info["pin_dir"], a["host_ifindex"], "ingress")
        assert not os.path.exists(link)
    d.start()
    log = d.log_path.read_text().split("===== start 2")[1]
    assert "repairing" not in log and "'repaired': 0" in log
    if attach == "tc":
        filters = run("ip", "netns", "exec", d.netns, "tc", "filter", "show", "dev", a["host_ifname"],
                      "ingress").stdout
        assert "bpfnet:ep_ingress" in filters
    else:
        fd = bpfsys.obj_get(link)
        try:
            new = bpfsys.link_info(fd)
        finally:
            os.close(fd)
        assert new.ifindex == a["host_ifindex"] and new.id != old_id  # a new link, attached
    assert ping(a["netns"], b["ipv4"].split("/")[0])
