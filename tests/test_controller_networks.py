"""Networks: create/ls/inspect/rm through the daemon, overlaps, --ip-range."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from bpfnet.client import ClientError
from helpers import DaemonFactory, DaemonProcess, address_set, ip_json, ping, sysctl

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def d(module_daemons: DaemonFactory) -> DaemonProcess:
    return module_daemons.start("--bip", "10.213.0.1/24")


def create(d: DaemonProcess, name: str, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = d.client.post("/v1/networks", {"name": name, "bridge": f"br-{name}", **body})
    return result


def test_create_inspect_ls_rm(d: DaemonProcess) -> None:
    net = create(d, "n1", subnet4="10.214.0.0/24", ipv6=True, subnet6="fd00:214::/64")
    try:
        assert net["bridge"] == "br-n1" and net["ipam"]["ipv4"]["gateway"] == "10.214.0.1"
        assert {"10.214.0.1/24", "fe80::1/64", "fd00:214::1/64"} <= address_set(d.netns, "br-n1")
        assert d.network("n1")["ipam"]["ipv6"]["subnet"] == "fd00:214::/64"
        names = [n["name"] for n in d.client.get("/v1/networks")]
        assert names == ["bridge", "n1"]
    finally:
        d.client.delete("/v1/networks/n1")
    assert "br-n1" not in d.links()
    with pytest.raises(ClientError) as err:
        d.network("n1")
    assert err.value.status == 404


def test_rm_refused_while_endpoints_attached(d: DaemonProcess) -> None:
    create(d, "n2", subnet4="10.215.0.0/24")
    ep = d.add_endpoint("n2a", network="n2")
    with pytest.raises(ClientError, match="has 1 endpoint") as err:
        d.client.delete("/v1/networks/n2")
    assert err.value.status == 409
    assert "br-n2" in d.links() and d.network("n2")["ipam"]["ipv4"]["in_use"] == 1
    assert ping(ep["netns"], "10.215.0.1")
    d.remove_endpoint(ep["name"])
    d.client.delete("/v1/networks/n2")
    assert "br-n2" not in d.links()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"subnet4": "10.213.0.0/25"}, "overlaps network bridge"),
        ({"subnet4": "10.213.0.128/25"}, "overlaps network bridge"),
        ({"subnet4": "10.0.0.0/8"}, "overlaps network bridge"),
        ({"subnet4": "192.0.2.0/25"}, "overlaps the host"),  # the root namespace's eth0 subnet here
    ],
)
def test_overlapping_subnets_refused(d: DaemonProcess, body: dict[str, Any], fragment: str) -> None:
    if "192.0.2" in body["subnet4"]:
        routes = [r["dst"] for r in ip_json(None, "route", "show")]
        if not any(r != "default" and IPv4Network(r).overlaps(IPv4Network(body["subnet4"])) for r in routes):
            pytest.skip("the root namespace has no 192.0.2.0/24 route on this machine")
    before = d.links()
    with pytest.raises(ClientError, match=fragment) as err:
        create(d, "ov", **body)
    assert err.value.status == 409
    assert d.links() == before
    assert [n["name"] for n in d.client.get("/v1/networks")] == ["bridge"]


def test_overlapping_ipv6_and_duplicates_refused(d: DaemonProcess) -> None:
    create(d, "n3", subnet4="10.216.0.0/24", subnet6="fd00:216::/64")
    try:
        with pytest.raises(ClientError, match="overlaps network n3"):
            create(d, "n4", subnet4="10.217.0.0/24", subnet6="fd00:216::/80")
        with pytest.raises(ClientError, match="already exists"):
            create(d, "n3", subnet4="10.218.0.0/24")
        with pytest.raises(ClientError, match="bridge br-n3 is already used"):
            d.client.post("/v1/networks", {"name": "n5", "bridge": "br-n3", "subnet4": "10.219.0.0/24"})
        assert [n["name"] for n in d.client.get("/v1/networks")] == ["bridge", "n3"]
        assert not {"br-n4", "br-n5"} & d.links()
    finally:
        d.client.delete("/v1/networks/n3")


def test_invalid_network_refused(d: DaemonProcess) -> None:
    with pytest.raises(ClientError, match="not inside subnet") as err:
        create(d, "bad", subnet4="10.220.0.0/24", ip_range4="10.221.0.0/25")
    assert err.value.status == 400
    with pytest.raises(ClientError, match="at most 15"):
        d.client.post("/v1/networks", {"name": "bad", "bridge": "br-way-too-long-name", "subnet4": "10.220.0.0/24"})
    assert "br-bad" not in d.links()


def test_ip_range_honoured(d: DaemonProcess) -> None:
    create(d, "rng", subnet4="10.222.0.0/24", ip_range4="10.222.0.64/30")
    eps = []
    try:
        net = d.network("rng")
        assert net["ipam"]["ipv4"]["capacity"] == 4
        for i in range(4):
            eps.append(d.add_endpoint(f"rng{i}", network="rng"))
        got = sorted(IPv4Address(e["ipv4"].split("/")[0]) for e in eps)
        assert got == [IPv4Address(f"10.222.0.{i}") for i in (64, 65, 66, 67)]
        with pytest.raises(ClientError, match=r"network rng is full: all 4 addresses of 10.222.0.64/30") as err:
            d.add_endpoint("rng4", network="rng")
        assert err.value.status == 507
        assert d.name("rng4") not in {e["name"] for e in d.client.get("/v1/endpoints")}
        # a static address outside the range but inside the subnet is still allowed
        eps.append(d.add_endpoint("rng5", network="rng", ip="10.222.0.200"))
        assert eps[-1]["ipv4"] == "10.222.0.200/24"
        assert ping(eps[0]["netns"], "10.222.0.200")
    finally:
        for e in eps:
            d.remove_endpoint(e["name"])
        d.client.delete("/v1/networks/rng")


def test_cli_network_commands(d: DaemonProcess) -> None:
    r = d.cli("network", "create", "cli1", "--subnet", "10.223.0.0/24", "--ip-range", "10.223.0.128/25")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "cli1"
    try:
        ls = d.cli("network", "ls")
        assert ls.returncode == 0
        header, *rows = ls.stdout.splitlines()
        assert header.split()[:4] == ["NAME", "DRIVER", "BRIDGE", "SUBNET"]
        assert any(row.split()[:4] == ["cli1", "bridge", "br-cli1", "10.223.0.0/24"] for row in rows)
        data = d.cli_json("network", "inspect", "cli1")
        assert data["driver"] == "bridge" and data["scope"] == "local" and data["config"]["driver"] == "bridge"
        assert data["ipam"]["ipv4"]["range"] == "10.223.0.128/25"
        assert {n["name"] for n in d.cli_json("network", "ls")} == {"bridge", "cli1"}
    finally:
        rm = d.cli("network", "rm", "cli1")
    assert rm.returncode == 0 and rm.stdout.strip() == "cli1"
    unknown = d.cli("network", "create", "cli2", "--driver", "nosuch")
    assert unknown.returncode != 0
    assert unknown.stderr.strip() == ("bpfnet: unknown network driver 'nosuch' (this daemon has: bridge, ipvlan, macvlan, "
                                     "routed)")
    missing = d.cli("network", "rm", "cli1")
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.strip() == "bpfnet: network 'cli1' not found"


def test_bridge_name_taken_by_other_link(d: DaemonProcess) -> None:
    subprocess.run(["ip", "-n", d.netns, "link", "add", "tkx", "type", "veth", "peer", "name", "tkxp"], check=True)
    try:
        with pytest.raises(ClientError, match="not a bridge") as err:
            d.client.post("/v1/networks", {"name": "tk", "bridge": "tkx", "subnet4": "10.224.0.0/24"})
        assert err.value.status == 409
        assert "tkx" in d.links()
        assert "tk" not in {n["name"] for n in d.client.get("/v1/networks")}
    finally:
        subprocess.run(["ip", "-n", d.netns, "link", "del", "tkx"], check=False)


def test_bridge_name_reserved_for_host_veths(d: DaemonProcess) -> None:
    with pytest.raises(ClientError, match="reserved") as err:
        d.client.post("/v1/networks", {"name": "bn", "bridge": "bnv99", "subnet4": "10.225.0.0/24"})
    assert err.value.status == 400
    assert "bnv99" not in d.links()




def test_ipv4_only_network_endpoint_has_no_ipv6(d: DaemonProcess) -> None:
    """Like Docker: on an IPv4-only network eth0 gets no IPv6 at all (no link-local, no
    MLD or router solicitations for the bridge to flood); lo keeps ::1."""
    ep = d.add_endpoint("v4only")
    try:
        ns = ep["netns"]
        assert sysctl(ns, "net/ipv6/conf/eth0/disable_ipv6") == "1"
        assert not [a for a in address_set(ns, "eth0") if ":" in a]
        assert "::1/128" in address_set(ns, "lo")
        assert ping(ns, "10.213.0.1")
    finally:
        d.remove_endpoint(ep["name"])
