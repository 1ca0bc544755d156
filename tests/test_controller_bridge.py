"""Issue 17 through the real daemon: adopting a bridge the test made (-b), --bridge none, address
pools, the ULA prefix across restarts, later overlaps. Every bridge, address and route is made in the
test's own managed namespace (``d.netns``), created by the test before the daemon adopts it."""

from __future__ import annotations

import subprocess
import urllib.request
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from bpfnet.client import ClientError
from bpfnet.config import DEFAULT_POOLS
from helpers import DaemonFactory, DaemonProcess, address_set, ip_json, netns_list, ping, run

pytestmark = pytest.mark.kernel


def user_bridge(d: DaemonProcess, name: str, *addresses: str, mtu: int = 1500) -> None:
    """A bridge made by 'the user' in the daemon's namespace before (or while) bpfnet runs."""
    if d.netns not in netns_list():
        run("ip", "netns", "add", d.netns)
    run("ip", "-n", d.netns, "link", "add", name, "type", "bridge")
    run("ip", "-n", d.netns, "link", "set", name, "mtu", str(mtu), "up")
    for address in addresses:
        run("ip", "-n", d.netns, "addr", "add", address, "dev", name, *(["nodad"] if ":" in address else []))


def addrs(d: DaemonProcess, dev: str) -> set[str]:
    """DEV's addresses but the link-local one the kernel gives every link that is up."""
    return {a for a in address_set(d.netns, dev) if not a.startswith("fe80:") or a == "fe80::1/64"}


def cleanup_run(d: DaemonProcess) -> None:
    r = subprocess.run(d.command() + ["--cleanup"], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def start_fails(d: DaemonProcess, *extra: str) -> str:
    r = subprocess.run(d.command() + list(extra), capture_output=True, text=True, timeout=120, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    return r.stderr.strip().splitlines()[-1]


def test_adopts_a_user_bridge_and_leaves_it_intact(daemons: DaemonFactory) -> None:
    d = daemons.create("--bridge", "mybr0")
    user_bridge(d, "mybr0", "10.123.0.1/24", mtu=1400)
    d.start()
    net = d.network()
    assert (net["bridge"], net["ipam"]["ipv4"]["subnet"], net["ipam"]["ipv4"]["gateway"]) == (
        "mybr0", "10.123.0.0/24", "10.123.0.1")
    assert net["subnet_source"] == "bridge" and net["mtu"] == 1400
    assert addrs(d, "mybr0") == {"10.123.0.1/24"}  # nothing of bpfnet's added
    info = d.cli_json("info")
    assert info["default_bridge"] == "mybr0"
    assert {"network": "bridge", "subnet4": "10.123.0.0/24", "subnet_source": "bridge", "subnet6": None,
            "subnet6_source": None} in info["subnets"]
    assert "10.123.0.0/24 (bridge)" in d.cli("info", check=True).stdout
    ep = d.add_endpoint("a")
    assert ep["ipv4"].startswith("10.123.0.") and ping(ep["netns"], "10.123.0.1")
    assert ip_json(d.netns, "link", "show", "dev", ep["host_ifname"])[0]["mtu"] == 1400

    # a second network on another user's bridge: bpfnet adds its gateway, network rm takes only that
    user_bridge(d, "mybr1", "10.124.0.1/24")
    d.cli("network", "create", "n1", "--bridge", "mybr1", "--subnet", "10.125.0.0/24", check=True)
    assert addrs(d, "mybr1") == {"10.124.0.1/24", "10.125.0.1/24"}
    d.cli("network", "rm", "n1", check=True)
    assert addrs(d, "mybr1") == {"10.124.0.1/24"}
    # IPv6 with a range: bpfnet's route for the range goes with the network, the bridge stays
    d.cli("network", "create", "n3", "--bridge", "mybr1", "--subnet", "10.125.0.0/24", "--ipv6",
          "--subnet6", "fd00:125::/64", "--ip-range6", "fd00:125::/80", check=True)
    assert "fd00:125::/80" in {r["dst"] for r in ip_json(d.netns, "-6", "route", "show", "dev", "mybr1")}
    d.cli("network", "rm", "n3", check=True)
    assert "fd00:125::/80" not in {r["dst"] for r in ip_json(d.netns, "-6", "route", "show", "dev", "mybr1")}
    assert addrs(d, "mybr1") == {"10.124.0.1/24"}
    # without --subnet, a network on a user's bridge takes the bridge's address
    assert d.cli_json("network", "create", "n2", "--bridge", "mybr1")["subnet_source"] == "bridge"
    d.cli("network", "rm", "n2", check=True)
    assert addrs(d, "mybr1") == {"10.124.0.1/24"}

    d.remove_endpoint(ep["name"])
    d.restart()  # the same flags: the same network, still nothing added
    assert d.network()["ipam"]["ipv4"]["subnet"] == "10.123.0.0/24"
    d.stop()
    cleanup_run(d)
    assert addrs(d, "mybr0") == {"10.123.0.1/24"} and "mybr1" in d.links()
    assert ip_json(d.netns, "link", "show", "dev", "mybr0")[0]["mtu"] == 1400


def test_adopts_a_dual_stack_user_bridge(daemons: DaemonFactory) -> None:
    d = daemons.create("--bridge", "mybr0", "--ipv6")
    user_bridge(d, "mybr0", "10.126.0.1/24", "fd00:126::1/64")
    d.start()
    net = d.network()
    assert net["ipam"]["ipv4"]["subnet"] == "10.126.0.0/24"
    assert (net["ipam"]["ipv6"]["subnet"], net["ipam"]["ipv6"]["gateway"]) == ("fd00:126::/64", "fd00:126::1")
    assert net["subnet_source"] == "bridge" and net["subnet6_source"] == "bridge"
    assert net["config"]["owned"]["bridge"] is False and net["config"]["owned"]["addresses"] == ["fe80::1/64"]
    ep = d.add_endpoint("a")
    assert ep["ipv6"][0].startswith("fd00:126::") and ping(ep["netns"], "fd00:126::1")
    d.remove_endpoint(ep["name"])
    d.stop()
    d.args = ["--bridge", "mybr0"]  # IPv6 off: the default network is remade; bpfnet's fe80::1 goes
    d.start()
    assert addrs(d, "mybr0") == {"10.126.0.1/24", "fd00:126::1/64"}
    assert "fe80::1/64" not in addrs(d, "mybr0")
    d.stop()
    cleanup_run(d)
    assert addrs(d, "mybr0") == {"10.126.0.1/24", "fd00:126::1/64"}


def test_bip_differing_from_the_bridge_is_refused(daemons: DaemonFactory) -> None:
    d = daemons.create("--bridge", "mybr0", "--bip", "172.30.0.1/16")
    user_bridge(d, "mybr0", "10.127.0.1/24")
    msg = start_fails(d)
    assert msg == ("bpfnet: --bip 172.30.0.1/16 differs from the address of bridge mybr0 (10.127.0.1/24): "
                   "start without --bip to use the bridge's address, or give --bip 10.127.0.1/24"), msg
    assert addrs(d, "mybr0") == {"10.127.0.1/24"}


def test_bridge_none(daemons: DaemonFactory) -> None:
    d = daemons.start("--bridge", "none")
    assert d.client.get("/v1/networks") == [] and d.cli_json("info")["default_bridge"] is None
    with pytest.raises(ClientError, match=r"runs with --bridge none\): pass --network NAME") as err:
        d.add_endpoint("a")
    assert err.value.status == 404
    r = d.cli("endpoint", "add", d.name("b"))
    assert r.returncode == 1 and "pass --network NAME" in r.stderr
    d.cli("network", "create", "n", "--subnet", "10.128.0.0/24", check=True)
    assert d.add_endpoint("c", network="n")["network"] == "n"


def test_pools_skip_used_subnets_and_run_out(daemons: DaemonFactory) -> None:
    d = daemons.create("--default-address-pool", "base=10.130.0.0/22,size=24", "--bip", "10.131.0.1/24")
    run("ip", "netns", "add", d.netns)
    run("ip", "-n", d.netns, "link", "add", "taken0", "type", "veth", "peer", "name", "taken1")
    run("ip", "-n", d.netns, "addr", "add", "10.130.1.5/24", "dev", "taken0")  # the pick must skip it
    d.start()
    assert d.cli_json("info")["address_pools"] == ["base=10.130.0.0/22,size=24"]
    got = [d.cli_json("network", "create", n) for n in ("a", "b", "c")]
    assert [n["ipam"]["ipv4"]["subnet"] for n in got] == ["10.130.0.0/24", "10.130.2.0/24", "10.130.3.0/24"]
    assert {n["subnet_source"] for n in got} == {"pool 10.130.0.0/22"}
    with pytest.raises(ClientError) as err:
        d.client.post("/v1/networks", {"name": "d"})
    assert err.value.status == 507
    assert "base=10.130.0.0/22,size=24" in str(err.value) and "hold 4 network(s)" in str(err.value)
    # IPv6 without a subnet: the next /64 of this host's ULA prefix, which a restart keeps
    v6a = d.cli_json("network", "create", "v6a", "--ipv6", "--subnet", "10.132.0.0/24")
    prefix = IPv6Network(v6a["subnet6_source"].removeprefix("ula "))
    assert prefix.prefixlen == 48 and prefix.subnet_of(IPv6Network("fd00::/8"))
    assert IPv6Network(v6a["ipam"]["ipv6"]["subnet"]) == next(prefix.subnets(new_prefix=64))
    assert "fe80::1/64" in addrs(d, v6a["bridge"])
    d.restart()
    v6b = d.cli_json("network", "create", "v6b", "--ipv6", "--subnet", "10.133.0.0/24")
    assert v6b["subnet6_source"] == v6a["subnet6_source"]
    assert IPv6Network(v6b["ipam"]["ipv6"]["subnet"]) == list(prefix.subnets(new_prefix=64))[1]


def test_default_pools_give_distinct_subnets(daemons: DaemonFactory) -> None:
    d = daemons.start("--bip", "10.134.0.1/24")
    nets = [d.client.post("/v1/networks", {"name": n}) for n in ("p1", "p2")]
    subnets = [IPv4Network(n["ipam"]["ipv4"]["subnet"]) for n in nets]
    assert all(s in DEFAULT_POOLS for s in subnets) and not subnets[0].overlaps(subnets[1])
    for r in ip_json(None, "route", "show"):  # the root namespace's routes (read only)
        if r["dst"] != "default":
            assert not any(s.overlaps(ip_network(r["dst"], strict=False)) for s in subnets)


def test_later_overlapping_route_is_reported(daemons: DaemonFactory) -> None:
    d = daemons.start("--bip", "10.150.0.1/24")
    d.client.post("/v1/networks", {"name": "n", "subnet4": "10.151.0.0/24"})
    assert d.network("n")["overlaps"] == []
    run("ip", "-n", d.netns, "link", "add", "ov0", "type", "veth", "peer", "name", "ov1")
    run("ip", "-n", d.netns, "addr", "add", "10.151.0.130/25", "dev", "ov0")
    run("ip", "-n", d.netns, "link", "set", "ov0", "up")
    assert d.network("n")["overlaps"] == ["10.151.0.128/25"]  # inspect shows it now
    d.restart()  # the start-up CHECK logs it and sets the gauge, and changes nothing
    assert d.network("n")["overlaps"] == ["10.151.0.128/25"]
    assert "overlaps the host's route or address 10.151.0.128/25" in d.log_tail(20000)
    assert "10.151.0.1/24" in addrs(d, "br-n") and "10.151.0.130/25" in addrs(d, "ov0")
    url = d.cli_json("info")["metrics_url"]
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert 'bpfnet_network_overlaps{network="n"} 1.0' in text
    assert 'bpfnet_network_overlaps{network="bridge"}' not in text
