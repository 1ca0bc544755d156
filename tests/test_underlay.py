"""The macvlan and ipvlan drivers on the real kernel: endpoints straight on a physical interface.

A "physical" subnet 10.78.0.0/24 (2001:db8:78::/64): a switch namespace (bridge sw0) with a
router namespace on it (10.78.0.1, 2001:db8:78::1; 192.0.2.1 behind it) and two hosts, each the
managed namespace of its own daemon (no cluster store: macvlan's IPAM is local, so each host
gets its own --ip-range), wired to the switch by a veth ``ul`` (the parent) and ``ul2`` (for the
VLAN and ipvlan cases). Never the root namespace.

This machine's kernel has macvlan but neither 8021q nor ipvlan: there the VLAN and ipvlan cases
check the clear refusal (and that nothing is left behind); under ``make vm-test KERNEL=6.12``
(which has both as modules) they check the real thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from helpers import SLOWDOWN, DaemonFactory, DaemonProcess, link_names, make_netns, ping, run
from test_outside import ask, serve, v4, v6

pytestmark = pytest.mark.kernel
ROUTER4, ROUTER6, BEHIND = "10.78.0.1", "2001:db8:78::1", "192.0.2.1"
SUBNET4, SUBNET6 = "10.78.0.0/24", "2001:db8:78::/64"
PORT = 7100


@dataclass
class World:
    hosts: list[DaemonProcess]
    router: str
    switch: str


def wire(switch: str, ns: str, dev: str, port: str) -> None:
    run("ip", "link", "add", port, "netns", switch, "type", "veth", "peer", "name", dev, "netns", ns)
    run("ip", "-n", switch, "link", "set", port, "master", "sw0", "up")
    run("ip", "-n", ns, "link", "set", dev, "up")


def kernel_has(kind: str, *args: str) -> bool:
    """Whether this kernel makes KIND links (tried in a namespace of the test's own)."""
    ns = make_netns(f"bpfnet-tprobe{kind}")
    try:
        run("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
        return run("ip", "-n", ns, "link", "add", "link", "p0", "name", "x", "type", kind, *args,
                   check=False).returncode == 0
    finally:
        run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def world(module_daemons: DaemonFactory) -> Iterator[World]:
    # host 0 with the eBPF datapath loaded (its networks must bypass it); under qemu's emulation
    # (make vm-test ACCEL=tcg) compiling it takes minutes: both plain there
    modes = ("auto", None) if SLOWDOWN == 1 else (None, None)
    hosts = [module_daemons.start("--bridge", "none", datapath=dp) for dp in modes]
    switch = make_netns(module_daemons.track_netns(hosts[0].name("sw")))
    router = make_netns(module_daemons.track_netns(hosts[0].name("rt")))
    run("ip", "-n", switch, "link", "add", "sw0", "type", "bridge")
    run("ip", "-n", switch, "link", "set", "sw0", "up")
    wire(switch, router, "eth0", "rt")
    for cmd in (("addr", "add", f"{ROUTER4}/24", "dev", "eth0"), ("addr", "add", f"{ROUTER6}/64", "dev", "eth0",
                "nodad"), ("addr", "add", f"{BEHIND}/32", "dev", "lo"), ("link", "set", "lo", "up")):
        run("ip", "-n", router, *cmd)
    for i, d in enumerate(hosts):
        wire(switch, d.netns, "ul", f"h{i}")
        wire(switch, d.netns, "ul2", f"h{i}v")
        run("ip", "-n", d.netns, "addr", "add", f"10.78.0.{10 + i}/24", "dev", "ul")
        d.cli("network", "create", "mv", "--driver", "macvlan", "--parent", "ul", "--subnet", SUBNET4,
              "--gateway", ROUTER4, "--ip-range", f"10.78.0.{64 + 32 * i}/27", "--ipv6", "--subnet6", SUBNET6,
              "--gateway6", ROUTER6, "--ip-range6", f"2001:db8:78::{i + 1}:0/112", check=True)
    server = serve(router, PORT)
    try:
        yield World(hosts, router, switch)
    finally:
        server.kill()
        server.wait()


def test_macvlan_endpoints_talk_across_hosts_and_reach_the_router(world: World) -> None:
    a, b = world.hosts
    a1, a2, b1 = a.add_endpoint("a1", network="mv"), a.add_endpoint("a2", network="mv"), b.add_endpoint(
        "b1", network="mv")
    try:
        assert v4(a1).startswith("10.78.0.") and 64 <= int(v4(a1).rsplit(".")[-1]) < 96
        assert 96 <= int(v4(b1).rsplit(".")[-1]) < 128
        assert a1["gateway4"] == ROUTER4 and a1["gateway6"] == ROUTER6
        assert a1["host_ifindex"] == 0  # no host-side link
        inside = run("ip", "-n", a1["netns"], "-d", "-j", "link", "show", "eth0").stdout
        assert '"info_kind":"macvlan"' in inside and '"mode":"bridge"' in inside
        for src, dst in ((a1, b1), (b1, a1), (a1, a2)):  # across hosts and on one parent
            assert ping(src["netns"], v4(dst)), f"{src['name']} -> {dst['name']}"
            assert ping(src["netns"], v6(dst)), f"{src['name']} -> {dst['name']} (v6)"
        # the physical gateway is the default route: the router and what is behind it
        assert ping(a1["netns"], ROUTER4) and ping(b1["netns"], ROUTER6) and ping(a1["netns"], BEHIND)
        assert ask(a1["netns"], "tcp", ROUTER4, PORT) == v4(a1)  # no masquerading
        assert ask(b1["netns"], "tcp", ROUTER6, PORT) == v6(b1)
        # macvlan's limit (README): the host does not reach its own endpoints through the parent,
        # the other host does
        assert not ping(a.netns, v4(a1), wait=1)
        assert ping(b.netns, v4(a1))
    finally:
        for d, name in ((a, a1), (a, a2), (b, b1)):
            d.remove_endpoint(name["name"])
    assert not {a1["netns"], b1["netns"]} & set(run("ip", "netns", "list").stdout.split())


def test_macvlan_endpoints_survive_a_daemon_restart(world: World) -> None:
    a, b = world.hosts
    a1, b1 = a.add_endpoint("r1", network="mv"), b.add_endpoint("r2", network="mv")
    try:
        a.restart()
        assert a.cli_json("endpoint", "inspect", a1["name"])["ipv4"] == a1["ipv4"]
        assert ping(b1["netns"], v4(a1))
        assert a.cli_json("network", "inspect", "mv")["driver_state"]["parent"] == "ul"
    finally:
        a.remove_endpoint(a1["name"])
        b.remove_endpoint(b1["name"])


def test_no_icc_is_macvlans_private_mode(world: World) -> None:
    a = world.hosts[0]
    a.cli("network", "create", "mvp", "--driver", "macvlan", "--parent", "ul2", "--subnet", "10.79.0.0/24",
          "--no-icc", check=True)
    try:
        p1, p2 = a.add_endpoint("p1", network="mvp"), a.add_endpoint("p2", network="mvp")
        assert '"mode":"private"' in run("ip", "-n", p1["netns"], "-d", "-j", "link", "show", "eth0").stdout
        assert not ping(p1["netns"], v4(p2), wait=1)
        a.remove_endpoint(p1["name"])
        a.remove_endpoint(p2["name"])
    finally:
        a.cli("network", "rm", "mvp", check=True)


@pytest.mark.parametrize("args, words", [
    (("--parent", "nosuch0"), "parent interface 'nosuch0' does not exist"),
    (("--parent", "ul.4095"), "VLAN id 4095 out of range 1-4094"),
    (("--parent", "ul.0"), "VLAN id 0 out of range"),
    ((), "needs a parent interface"),
    (("--parent", "ul", "--internal"), "cannot be --internal"),
    (("--parent", "ul", "--subnet", "10.78.0.128/25"), "overlaps network mv's subnet 10.78.0.0/24"),
])
def test_bad_input_is_refused_and_leaves_nothing(world: World, args: tuple[str, ...], words: str) -> None:
    a = world.hosts[0]
    links = link_names(a.netns)
    if "--subnet" not in args:
        args += ("--subnet", "10.80.0.0/24")
    r = a.cli("network", "create", "bad", "--driver", "macvlan", *args)
    assert r.returncode != 0 and words in r.stderr, r.stderr
    assert "bad" not in {n["name"] for n in a.cli_json("network", "ls")}
    assert link_names(a.netns) == links


def test_macvlan_needs_the_physical_subnet(world: World) -> None:
    r = world.hosts[0].cli("network", "create", "nosub", "--driver", "macvlan", "--parent", "ul2")
    assert r.returncode != 0 and "needs --subnet" in r.stderr


def test_vlan_sub_interface_comes_and_goes(world: World) -> None:
    a, b = world.hosts
    links = link_names(a.netns)
    create = ("network", "create", "--driver", "macvlan", "--parent", "ul2.5", "--subnet")
    if not kernel_has("vlan", "id", "5"):
        r = a.cli(*create[:2], "v5", *create[2:], "10.81.0.0/24")
        assert r.returncode != 0 and "cannot make VLAN 5's sub-interface" in r.stderr and "8021q" in r.stderr
        assert link_names(a.netns) == links and "v5" not in {n["name"] for n in a.cli_json("network", "ls")}
        return
    for i, d in enumerate((a, b)):
        d.cli(*create[:2], "v5", *create[2:], "10.81.0.0/24", "--ip-range", f"10.81.0.{64 + 32 * i}/27",
              check=True)
    a.cli(*create[:2], "v5b", *create[2:], "10.82.0.0/24", check=True)  # a second network on VLAN 5
    assert "ul2.5" in link_names(a.netns)
    e1, e2 = a.add_endpoint("v1", network="v5"), b.add_endpoint("v2", network="v5")
    try:
        assert ping(e1["netns"], v4(e2))
    finally:
        a.remove_endpoint(e1["name"])
        b.remove_endpoint(e2["name"])
    a.cli("network", "rm", "v5", check=True)
    assert "ul2.5" in link_names(a.netns)  # v5b is still on it
    a.cli("network", "rm", "v5b", check=True)
    b.cli("network", "rm", "v5", check=True)
    assert link_names(a.netns) == links and "ul2.5" not in link_names(b.netns)


def test_ipvlan_where_the_kernel_has_it(world: World) -> None:
    a, b = world.hosts
    links = link_names(a.netns)
    create = ("network", "create", "iv", "--driver", "ipvlan", "--parent", "ul2", "--subnet", "10.83.0.0/24")
    if not kernel_has("ipvlan", "mode", "l2"):
        r = a.cli(*create)
        assert r.returncode != 0 and "the ipvlan driver is not available" in r.stderr and "ipvlan" in r.stderr
        assert link_names(a.netns) == links and "iv" not in {n["name"] for n in a.cli_json("network", "ls")}
        return
    for i, d in enumerate((a, b)):
        d.cli(*create, "--ip-range", f"10.83.0.{64 + 32 * i}/27", check=True)
    e1, e2 = a.add_endpoint("i1", network="iv"), b.add_endpoint("i2", network="iv")
    try:
        inside = run("ip", "-n", e1["netns"], "-d", "-j", "link", "show", "eth0").stdout
        assert '"info_kind":"ipvlan"' in inside
        assert ping(e1["netns"], v4(e2))
        r = a.cli("network", "create", "mvx", "--driver", "macvlan", "--parent", "ul2", "--subnet", "10.84.0.0/24")
        assert r.returncode != 0 and "cannot put macvlan and ipvlan" in r.stderr
    finally:
        a.remove_endpoint(e1["name"])
        b.remove_endpoint(e2["name"])
        for d in (a, b):
            d.cli("network", "rm", "iv")
    assert link_names(a.netns) == links



def test_handoff_endpoint_gets_its_macvlan_beside_the_parent(world: World) -> None:
    """Docker's remote driver model: the link waits beside the parent for the runtime to move it."""
    a = world.hosts[0]
    ep = a.add_endpoint("h1", network="mv", handoff=True)
    try:
        name = ep["ifname"]
        inside = run("ip", "-n", a.netns, "-d", "-j", "link", "show", name).stdout
        assert '"info_kind":"macvlan"' in inside and ep["mac"] in inside
    finally:
        a.remove_endpoint(ep["name"])
    assert name not in link_names(a.netns)
