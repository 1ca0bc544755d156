"""The default network from dockerd-style flags, through the real daemon and kernel.

One daemon for the module: --bip 172.30.0.1/16 --fixed-cidr 172.30.1.0/25 --ipv6
--fixed-cidr-v6 1553:ba3:2::/64, listening on a unix socket and on tcp://127.0.0.1.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any

import pytest
from bpfnet.addressing import ipv6_from_mac, link_local_from_mac, mac_from_ipv4
from bpfnet.client import Client
from bpfnet.config import DEFAULT_POOLS
from helpers import DaemonFactory, DaemonProcess, address_set, addresses, ip_json, ping, run, sysctl

pytestmark = pytest.mark.kernel

BIP = "172.30.0.1/16"
FIXED = IPv4Network("172.30.1.0/25")
V6 = ip_network("1553:ba3:2::/64")


@pytest.fixture(scope="module")
def dual(module_daemons: DaemonFactory) -> DaemonProcess:
    return module_daemons.start("--bip", BIP, "--fixed-cidr", str(FIXED), "--ipv6", "--fixed-cidr-v6", str(V6),
                                tcp=True)


@pytest.fixture(scope="module")
def pair(dual: DaemonProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    return dual.add_endpoint("a"), dual.add_endpoint("b")


def plain(cidr: str) -> str:
    return cidr.split("/")[0]


def test_default_network_shape(dual: DaemonProcess) -> None:
    net = dual.network("bridge")
    assert net["default"] is True and net["bridge"] == "bpfnet0"
    v4, v6 = net["ipam"]["ipv4"], net["ipam"]["ipv6"]
    assert (v4["subnet"], v4["range"], v4["gateway"]) == ("172.30.0.0/16", str(FIXED), "172.30.0.1")
    assert v4["capacity"] == 128
    assert (v6["subnet"], v6["gateway"], v6["link_local_gateway"]) == (str(V6), "1553:ba3:2::1", "fe80::1")


def test_endpoint_addresses(dual: DaemonProcess, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for ep in pair:
        v4 = IPv4Address(plain(ep["ipv4"]))
        # inside fixed-cidr; the subnet's network/broadcast and the gateway are outside it anyway
        assert v4 in FIXED and v4 not in (IPv4Address("172.30.0.0"), IPv4Address("172.30.0.1"))
        assert ep["ipv4"].endswith("/16")
        assert ep["mac"] == mac_from_ipv4(v4)
        assert ep["ipv6"] == [f"{ipv6_from_mac(V6, ep['mac'])}/64"]  # type: ignore[arg-type]
        assert plain(ep["ipv6"][0]).startswith("1553:ba3:2::242:ac1e:1")
        assert ep["link_local"] == f"{link_local_from_mac(ep['mac'])}/64"
        assert ep["gateway4"] == "172.30.0.1" and ep["gateway6"] == "fe80::1"
    assert pair[0]["ipv4"] != pair[1]["ipv4"] and pair[0]["mac"] != pair[1]["mac"]


def test_endpoint_kernel_state(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    for ep in pair:
        ns = ep["netns"]
        link = ip_json(ns, "link", "show", "dev", "eth0")[0]
        assert link["address"] == ep["mac"] and "UP" in link["flags"]
        have = address_set(ns, "eth0")
        assert {ep["ipv4"], ep["ipv6"][0], ep["link_local"]} <= have
        for a in addresses(ns, "eth0", "-6"):
            assert not a.get("tentative"), f"{a['local']} is tentative (DAD not skipped)"
            assert not a.get("dadfailed")
        text = run("ip", "-n", ns, "-6", "addr", "show", "dev", "eth0").stdout
        assert "tentative" not in text
        r4 = ip_json(ns, "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in r4] == [("172.30.0.1", "eth0")]
        r6 = ip_json(ns, "-6", "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in r6] == [("fe80::1", "eth0")]
        # routes are static: no router solicitations for the bridge to flood to every port
        assert sysctl(ns, "net/ipv6/conf/eth0/router_solicitations") == "0"


def test_bridge_addresses_and_forwarding(dual: DaemonProcess) -> None:
    have = address_set(dual.netns, "bpfnet0")
    assert {"172.30.0.1/16", "fe80::1/64", "1553:ba3:2::1/64"} <= have
    link = ip_json(dual.netns, "link", "show", "dev", "bpfnet0")[0]
    assert link["address"] == "02:42:ac:1e:00:01"
    assert sysctl(dual.netns, "net/ipv4/ip_forward") == "1"
    assert sysctl(dual.netns, "net/ipv6/conf/all/forwarding") == "1"


def test_ping_immediately(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    a, b = pair
    for src, dst in ((a, b), (b, a)):
        assert ping(src["netns"], plain(dst["ipv4"])), f"{src['name']} -> {dst['ipv4']}"
        assert ping(src["netns"], plain(dst["ipv6"][0])), f"{src['name']} -> {dst['ipv6'][0]}"
    assert ping(a["netns"], "172.30.0.1")
    assert ping(a["netns"], "1553:ba3:2::1")
    assert ping(a["netns"], "fe80::1%eth0")
    assert not ping(a["netns"], "172.30.1.126", wait=1)  # nobody there: ping can fail


def test_fresh_endpoint_pings_at_once(dual: DaemonProcess, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """No DAD wait: the first IPv6 ping right after add succeeds."""
    c = dual.add_endpoint("fresh")
    try:
        assert ping(c["netns"], plain(pair[0]["ipv6"][0]), wait=1)
        assert ping(c["netns"], plain(pair[0]["ipv4"]), wait=1)
    finally:
        dual.remove_endpoint(c["name"])


def test_unix_and_tcp_at_once(dual: DaemonProcess, pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    assert dual.tcp_host is not None
    via_tcp = Client(dual.tcp_host).get("/v1/endpoints")
    via_unix = dual.client.get("/v1/endpoints")
    assert via_tcp == via_unix and {e["name"] for e in via_tcp} >= {pair[0]["name"], pair[1]["name"]}
    info = Client(dual.tcp_host).get("/v1/info")
    assert set(info["listeners"]) == {dual.host, dual.tcp_host}
    assert info["host_netns"] == dual.netns and info["datapath"]["mode"] == "bridge"
    # the CLI on both, -H after the subcommand and before it
    r = dual.cli("endpoint", "ls", "--json", host=dual.tcp_host)
    assert r.returncode == 0 and {e["name"] for e in json.loads(r.stdout)} == {e["name"] for e in via_unix}


# --- no --bip ---------------------------------------------------------------------
def test_no_bip_picks_non_overlapping_pool(daemons: DaemonFactory) -> None:
    d = daemons.create()
    # The managed namespace already routes the first default pool: it must be skipped.
    run("ip", "netns", "add", d.netns)
    run("ip", "-n", d.netns, "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")  # no dummy module
    run("ip", "-n", d.netns, "addr", "add", "172.17.3.1/24", "dev", "taken0")
    run("ip", "-n", d.netns, "link", "set", "taken0", "up")
    d.start()
    subnet = ip_network(d.network("bridge")["ipam"]["ipv4"]["subnet"])
    assert subnet in DEFAULT_POOLS
    taken = [ip_network("172.17.3.0/24")]
    for r in ip_json(None, "route", "show"):  # the root namespace's routes (read only)
        if r["dst"] != "default":
            taken.append(ip_network(r["dst"], strict=False))
    for t in taken:
        assert not subnet.overlaps(t), f"picked {subnet}, which overlaps {t}"
    expected = next(p for p in DEFAULT_POOLS if not any(p.overlaps(t) for t in taken))
    assert subnet == expected
    ep = d.add_endpoint("a")
    assert IPv4Address(plain(ep["ipv4"])) in subnet
    assert ping(ep["netns"], str(subnet.network_address + 1))
