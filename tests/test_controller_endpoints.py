"""Endpoints: add/ls/inspect/rm, static addresses, MACs, adopted namespaces, and
failures that must leave nothing half-made."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from bpfnet.client import ClientError
from helpers import (
    DaemonFactory,
    DaemonProcess,
    address_set,
    ip_json,
    link_names,
    netns_list,
    ping,
    run,
)

pytestmark = pytest.mark.kernel

V6 = "fd00:bf::/64"


@pytest.fixture(scope="module")
def d(module_daemons: DaemonFactory) -> DaemonProcess:
    return module_daemons.start("--bip", "10.231.0.1/24", "--ipv6", "--fixed-cidr-v6", V6)


def snapshot(d: DaemonProcess) -> dict[str, Any]:
    """What a failed add must leave unchanged."""
    ipam = d.network("bridge")["ipam"]
    return {
        "netns": d.owned_netns(),
        "links": d.links(),
        "in_use4": ipam["ipv4"]["in_use"],
        "in_use6": ipam["ipv6"]["in_use"],
        "endpoints": sorted(e["name"] for e in d.client.get("/v1/endpoints")),
    }


def failed_add(d: DaemonProcess, status: int, fragment: str, suffix: str, **fields: Any) -> ClientError:
    before = snapshot(d)
    with pytest.raises(ClientError, match=fragment) as err:
        d.add_endpoint(suffix, **fields)
    assert err.value.status == status, err.value
    assert snapshot(d) == before, "a failed add left something behind"
    return err.value


def test_add_inspect_ls_rm(d: DaemonProcess) -> None:
    ep = d.add_endpoint("basic")
    name = ep["name"]
    assert ep["netns"] == name and not ep["adopted_netns"] and ep["state"] == "ready"
    assert name in netns_list()
    assert ep["host_ifname"] in d.links()
    assert d.client.get(f"/v1/endpoints/{name}") == ep
    assert name in {e["name"] for e in d.client.get("/v1/endpoints")}
    host = ip_json(d.netns, "link", "show", "dev", ep["host_ifname"])[0]
    assert host["master"] == "bpfnet0" and "UP" in host["flags"]
    d.remove_endpoint(name)
    assert name not in netns_list()
    assert ep["host_ifname"] not in d.links()
    assert name not in {e["name"] for e in d.client.get("/v1/endpoints")}
    assert d.network("bridge")["ipam"]["ipv4"]["in_use"] == 0
    with pytest.raises(ClientError) as err:
        d.client.get(f"/v1/endpoints/{name}")
    assert err.value.status == 404


def test_static_ip_and_mac(d: DaemonProcess) -> None:
    a = d.add_endpoint("st", ip="10.231.0.77", mac="02:00:00:aa:bb:cc")
    b = d.add_endpoint("st2")
    try:
        assert a["ipv4"] == "10.231.0.77/24" and a["mac"] == "02:00:00:aa:bb:cc"
        assert a["ipv6"] == ["fd00:bf::200:aa:bbcc/64"]  # the MAC, not the IPv4, is embedded
        assert a["link_local"] == "fe80::ff:feaa:bbcc/64"
        assert ip_json(a["netns"], "link", "show", "dev", "eth0")[0]["address"] == "02:00:00:aa:bb:cc"
        assert {"10.231.0.77/24", "fd00:bf::200:aa:bbcc/64", a["link_local"]} <= address_set(a["netns"], "eth0")
        assert ping(b["netns"], "10.231.0.77") and ping(b["netns"], "fd00:bf::200:aa:bbcc")
        # address in use
        failed_add(d, 409, "10.231.0.77 is already in use", "dup-ip", ip="10.231.0.77")
        failed_add(d, 409, "already in use", "dup-ip6", ip6="fd00:bf::200:aa:bbcc")
    finally:
        d.remove_endpoint(a["name"])
        d.remove_endpoint(b["name"])


def test_static_ip6(d: DaemonProcess) -> None:
    ep = d.add_endpoint("st6", ip6="fd00:bf::1234")
    try:
        assert ep["ipv6"] == ["fd00:bf::1234/64"]
        assert "fd00:bf::1234/64" in address_set(ep["netns"], "eth0")
        assert ping(ep["netns"], "fd00:bf::1")
    finally:
        d.remove_endpoint(ep["name"])


@pytest.mark.parametrize(
    ("fields", "status", "fragment"),
    [
        ({"ip": "10.231.1.5"}, 400, "outside network bridge's subnet"),
        ({"ip": "10.231.0.1"}, 409, "gateway"),
        ({"ip": "10.231.0.255"}, 400, "reserved"),
        ({"ip": "fd00:bf::5"}, 400, "not an IPv4 address"),
        ({"ip": "10.231.0.999"}, 400, "malformed ip"),
        ({"ip6": "fd00:bf::1"}, 409, "gateway"),
        ({"ip6": "fd00:be::5"}, 400, "outside"),
        ({"mac": "01:00:5e:00:00:01"}, 400, "multicast"),
        ({"mac": "02:42:ac"}, 400, "malformed MAC"),
        ({"network": "nosuch"}, 404, "network 'nosuch' not found"),
        ({"netns": "bpfnet-t-no-such-namespace"}, 404, "does not exist"),
        ({"colour": "red"}, 400, "unknown field"),
    ],
)
def test_add_failures_leave_nothing(d: DaemonProcess, fields: dict[str, Any], status: int, fragment: str) -> None:
    failed_add(d, status, fragment, "bad", **fields)


def test_invalid_names(d: DaemonProcess) -> None:
    before = snapshot(d)
    for name in ("", "-x", "a/b", "x" * 64):
        with pytest.raises(ClientError, match="invalid endpoint name") as err:
            d.client.post("/v1/endpoints", {"name": name})
        assert err.value.status == 400
    assert snapshot(d) == before


def test_duplicate_name(d: DaemonProcess) -> None:
    ep = d.add_endpoint("dup")
    try:
        failed_add(d, 409, "already exists", "dup")
        assert d.client.get(f"/v1/endpoints/{ep['name']}")["ipv4"] == ep["ipv4"]
        assert ping(ep["netns"], "10.231.0.1")
    finally:
        d.remove_endpoint(ep["name"])


def test_existing_namespace_not_taken_silently(d: DaemonProcess, daemons: DaemonFactory) -> None:
    name = daemons.track_netns(d.name("squat"))
    run("ip", "netns", "add", name)
    failed_add(d, 409, "already exists; pass --netns", "squat")
    assert name in netns_list()  # not removed by the failed add


def test_managed_namespace_cannot_be_adopted(d: DaemonProcess) -> None:
    failed_add(d, 400, "host namespace", "hostns", netns=d.netns)


def test_adopt_namespace(d: DaemonProcess, netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("adopted")
    run("ip", "-n", ns, "link", "add", "keep0", "type", "veth", "peer", "name", "keep1")
    ep = d.add_endpoint("adopter", netns=ns)
    assert ep["netns"] == ns and ep["adopted_netns"] is True
    assert d.name("adopter") not in netns_list()  # no namespace named after the endpoint
    assert "eth0" in link_names(ns)
    assert ping(ns, "10.231.0.1")
    # a second endpoint cannot take the same namespace
    failed_add(d, 409, "already belongs to endpoint", "adopter2", netns=ns)
    d.remove_endpoint(ep["name"])
    assert ns in netns_list(), "rm deleted an adopted namespace"
    names = link_names(ns)
    assert "eth0" not in names and {"keep0", "keep1"} <= names
    assert ep["host_ifname"] not in d.links()
    assert d.network("bridge")["ipam"]["ipv4"]["in_use"] == 0
    # adopting again works (eth0 is gone)
    again = d.add_endpoint("adopter", netns=ns)
    d.remove_endpoint(again["name"])


def test_adopt_namespace_with_eth0_rolls_back(d: DaemonProcess, netns_factory: Callable[[str], str]) -> None:
    """The failure happens after the state row is written: everything must be undone."""
    ns = netns_factory("has-eth0")
    run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    failed_add(d, 409, "already has an eth0", "eth0", netns=ns)
    assert ns in netns_list() and {"eth0", "eth1"} <= link_names(ns)


def test_addresses_reused_after_rm(d: DaemonProcess) -> None:
    a = d.add_endpoint("reuse")
    d.remove_endpoint(a["name"])
    b = d.add_endpoint("reuse")
    try:
        assert (b["ipv4"], b["ipv6"], b["mac"]) == (a["ipv4"], a["ipv6"], a["mac"])
        assert b["host_ifname"] in d.links()
    finally:
        d.remove_endpoint(b["name"])


def test_lowest_free_address_after_rm_of_an_earlier_endpoint(d: DaemonProcess) -> None:
    """The search for a free address starts where the last one ended; a remove must reset that."""
    a = d.add_endpoint("low-a")
    b = d.add_endpoint("low-b")
    d.remove_endpoint(a["name"])
    c = d.add_endpoint("low-c")
    try:
        assert c["ipv4"] == a["ipv4"] and c["ipv4"] != b["ipv4"]
    finally:
        d.remove_endpoint(b["name"])
        d.remove_endpoint(c["name"])


def test_rm_unknown(d: DaemonProcess) -> None:
    with pytest.raises(ClientError, match="not found") as err:
        d.remove_endpoint(d.name("ghost"))
    assert err.value.status == 404
