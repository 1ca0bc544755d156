"""Daemon lifecycle: restart keeps leases, SIGKILL mid-add is reconciled, NDP proxy."""

from __future__ import annotations

from typing import Any

import pytest
from bpfnet.client import ClientError
from helpers import (
    DaemonFactory,
    DaemonProcess,
    in_thread,
    ip_json,
    link_names,
    netns_list,
    ping,
    run,
    sysctl,
    wait_until,
)

pytestmark = pytest.mark.kernel

DUAL = ("--bip", "10.241.0.1/24", "--ipv6", "--fixed-cidr-v6", "fd00:241::/64")


def plain(cidr: str) -> str:
    return cidr.split("/")[0]


def test_leases_survive_restart(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL)
    eps = [d.add_endpoint(s) for s in ("a", "b", "c")]
    d.remove_endpoint(eps[1]["name"])  # a hole: must not be refilled by the survivors
    before = {e["name"]: e for e in d.client.get("/v1/endpoints")}
    assert d.stop() == 0
    assert not d.sock.exists(), "the daemon left its unix socket behind"
    # stopping leaves endpoints in place: traffic keeps flowing without the daemon
    assert ping(eps[0]["netns"], plain(eps[2]["ipv4"]))
    d.start()
    after = {e["name"]: e for e in d.client.get("/v1/endpoints")}
    for info in (before, after):
        for e in info.values():
            e.pop("host_ifindex", None)
    assert after == before
    assert ping(eps[0]["netns"], plain(eps[2]["ipv4"]))
    assert ping(eps[2]["netns"], plain(eps[0]["ipv6"][0]))
    # the freed address is handed out again, the leased ones are not
    new = d.add_endpoint("d")
    assert new["ipv4"] == eps[1]["ipv4"]
    assert d.network("bridge")["ipam"]["ipv4"]["in_use"] == 3


def test_restart_reclaims_endpoint_whose_namespace_vanished(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL)
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    d.stop()
    run("ip", "netns", "del", a["netns"])
    d.start()
    assert [e["name"] for e in d.client.get("/v1/endpoints")] == [b["name"]]
    assert a["host_ifname"] not in d.links()
    assert d.network("bridge")["ipam"]["ipv4"]["in_use"] == 1
    assert d.add_endpoint("c")["ipv4"] == a["ipv4"]


def test_changed_default_network_with_endpoints_refused(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL)
    d.add_endpoint("a")
    d.stop()
    d.args = ["--bip", "10.242.0.1/24"]
    with pytest.raises(Exception, match="still has endpoints"):
        d.start()
    d.args = list(DUAL)
    d.start()
    assert len(d.client.get("/v1/endpoints")) == 1


def test_sigkill_during_endpoint_add(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL, env={})
    keep = d.add_endpoint("keep")
    d.stop()
    d.start(env={"BPFNET_DEBUG_PAUSE": "endpoint-add-after-veth:30"})
    name = d.name("crash")
    thread, result = in_thread(d.add_endpoint, "crash")
    veths_before = {keep["host_ifname"]}
    leaked = wait_until(lambda: d.host_veths() - veths_before, timeout=20, what="the new veth")
    assert name in netns_list()  # the namespace exists too: a real half-made endpoint
    d.kill()
    thread.join(10)
    assert not thread.is_alive() and isinstance(result[0], ClientError)
    d.start()  # without the pause
    assert not (d.host_veths() & leaked), f"leaked veth {leaked} survived the restart"
    assert name not in netns_list(), "leaked endpoint namespace"
    assert [e["name"] for e in d.client.get("/v1/endpoints")] == [keep["name"]]
    net = d.network("bridge")["ipam"]
    assert net["ipv4"]["in_use"] == 1 and net["ipv6"]["in_use"] == 1
    again = d.add_endpoint("crash")
    assert again["state"] == "ready" and ping(again["netns"], plain(keep["ipv4"]))
    assert ping(again["netns"], plain(keep["ipv6"][0]))


def test_ndp_proxy(daemons: DaemonFactory) -> None:
    d = daemons.create(*DUAL, "--ndp-proxy-iface", "up0")
    run("ip", "netns", "add", d.netns)
    # no dummy module on every kernel: a veth pair does as the uplink
    run("ip", "-n", d.netns, "link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    run("ip", "-n", d.netns, "link", "set", "up0", "up")
    d.start()
    assert sysctl(d.netns, "net/ipv6/conf/up0/proxy_ndp") == "1"

    def proxies() -> set[str]:
        return {n["dst"] for n in ip_json(d.netns, "-6", "neigh", "show", "proxy") if n.get("dev") == "up0"}

    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    want = {plain(a["ipv6"][0]), plain(b["ipv6"][0])}
    assert proxies() == want
    d.remove_endpoint(a["name"])
    assert proxies() == {plain(b["ipv6"][0])}
    # restart: entries restored if missing
    d.stop()
    run("ip", "-n", d.netns, "-6", "neigh", "del", "proxy", plain(b["ipv6"][0]), "dev", "up0")
    d.start()
    assert proxies() == {plain(b["ipv6"][0])}
    d.remove_endpoint(b["name"])
    assert proxies() == set()


def test_ndp_proxy_iface_missing_refused(daemons: DaemonFactory) -> None:
    d = daemons.create(*DUAL, "--ndp-proxy-iface", "nosuch0")
    with pytest.raises(Exception, match="nosuch0"):
        d.start()
    assert not d.running()


def test_state_dir_belongs_to_one_namespace(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL)
    d.stop()
    other = daemons.create(*DUAL)
    other.state_dir = d.state_dir
    with pytest.raises(Exception, match="belongs to a daemon managing"):
        other.start()


def _endpoint_names(d: DaemonProcess) -> list[Any]:
    return [e["name"] for e in d.client.get("/v1/endpoints")]


def test_endpoint_namespace_has_only_lo_and_eth0(daemons: DaemonFactory) -> None:
    d = daemons.start(*DUAL)
    ep = d.add_endpoint("x")
    assert link_names(ep["netns"]) == {"lo", "eth0"}
    assert _endpoint_names(d) == [ep["name"]]
