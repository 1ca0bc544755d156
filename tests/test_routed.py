"""The routed driver in the test cluster (tests/cluster.py: etcd in an underlay namespace, three
host namespaces each with its own daemon): a block of the cluster subnet per node, claimed in
etcd, and routes between the nodes with bpfnet's protocol number; no encapsulation. The nodes run
the eBPF datapath: cross-host packets bypass the bridge (bpf/routed.h), counted as the routed path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster
from helpers import DaemonProcess, in_thread, ping, run, wait_until
from test_outside import ask, serve, v4, v6

pytestmark = pytest.mark.kernel
SUBNET4, SUBNET6 = "10.96.0.0/16", "fd00:96::/64"
NET = "rn"
PORT = 7200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(Path(tmp_path_factory.mktemp("routed")))
    try:
        c.etcd.start()
        hosts = [c.add_host(start=False) for _ in range(3)]
        started = [in_thread(h.start) for h in hosts]  # nodes starting together
        for t, _ in started:
            t.join()
        for h in hosts:
            h.wait_ready()
        yield c
    finally:
        c.cleanup()


def own_routes(h: DaemonProcess) -> dict[str, str]:
    out = {}
    for family in ("-4", "-6"):
        for r in json.loads(run("ip", "-n", h.netns, "-j", family, "route", "show", "proto", "201").stdout):
            out[r["dst"]] = r.get("gateway", "")
    return out


def counters(h: DaemonProcess, name: str) -> dict[str, Any]:
    return next(e["counters"] for e in h.client.get("/v1/stats")["endpoints"] if e["name"] == name)


def uplink_filters(h: DaemonProcess) -> str:
    return run("tc", "-n", h.netns, "filter", "show", "dev", "ul", "ingress", check=False).stdout


def uplink_attached(h: DaemonProcess) -> bool:
    """uplink_ingress on the uplink, as the daemon attached it (a tcx link or a cls_bpf filter)."""
    programs = h.client.get("/v1/info")["datapath"]["programs"]
    return any(p["name"] == "uplink_ingress" and p["attach"] == "ul/ingress" for p in programs)


def block(h: DaemonProcess) -> tuple[str, str]:
    state = h.cli_json("network", "inspect", NET)["driver_state"]
    return state["block4"], state["block6"]


def test_blocks_are_unique_under_parallel_create(cluster: Cluster) -> None:
    hosts = cluster.hosts
    creates = [in_thread(h.cli, "network", "create", NET, "--driver", "routed", "--subnet", SUBNET4, "--ipv6",
                         "--subnet6", SUBNET6) for h in hosts]
    for t, out in creates:
        t.join()
        assert out[0].returncode == 0, out[0].stderr
    blocks = [block(h) for h in hosts]
    keys = cluster.etcd.keys(f"/bpfnet/v1/routed/{NET}/blocks/")
    assert len({b[0] for b in blocks}) == 3 and len({b[1] for b in blocks}) == 3, (blocks, keys)
    assert all(b[0].endswith("/24") and b[1].endswith("/80") for b in blocks)
    assert len(keys) == 6
    # every node routes the two other nodes' blocks via their advertise (link-local) addresses
    for i, h in enumerate(hosts):
        routes = wait_until(lambda h=h: r if len(r := own_routes(h)) == 4 else None, 10, what="routes")
        for j, other in enumerate(hosts):
            if j != i:
                assert routes[blocks[j][0]] == other.advertise  # type: ignore[attr-defined]
                assert routes[blocks[j][1]].startswith("fe80:")


def test_cross_host_ping_and_tcp(cluster: Cluster) -> None:
    eps = [h.add_endpoint(f"r{i}", network=NET) for i, h in enumerate(cluster.hosts)]
    server = serve(eps[2]["netns"], PORT)
    try:
        for a in eps:
            for b in eps:
                if a is not b:
                    assert ping(a["netns"], v4(b)), f"{a['name']} -> {b['name']}"
                    assert ping(a["netns"], v6(b)), f"{a['name']} -> {b['name']} (v6)"
        # no masquerading, no encapsulation: the peer sees the endpoint's own address
        assert ask(eps[0]["netns"], "tcp", v4(eps[2]), PORT) == v4(eps[0])
        assert ask(eps[1]["netns"], "tcp", v6(eps[2]), PORT) == v6(eps[1])
        mtu = run("ip", "-n", eps[0]["netns"], "-j", "link", "show", "eth0").stdout
        assert '"mtu":1500' in mtu  # full MTU
        # the bypass carried it: out through the uplink and in through it, both families
        for h, ep in zip(cluster.hosts, eps, strict=True):
            c = counters(h, ep["name"])
            assert c["tx_routed_packets"] >= 8 and c["rx_routed_packets"] >= 8, c
            assert uplink_attached(h)
        assert "TX ROUTED" in cluster.hosts[0].cli("stats").stdout
    finally:
        server.kill()
        server.wait()
        for h, ep in zip(cluster.hosts, eps, strict=True):
            h.remove_endpoint(ep["name"])


def test_killed_node_loses_its_routes_and_gets_its_block_back(cluster: Cluster) -> None:
    h0, h1, h2 = cluster.hosts
    mine = block(h2)
    h2.kill()
    for h in (h0, h1):
        wait_until(lambda h=h: mine[0] not in own_routes(h) and mine[1] not in own_routes(h), 20,
                   what="routes of the killed node removed")
    h2.start(env={"BPFNET_CLUSTER_TTL": "3"})
    assert block(h2) == mine
    for h in (h0, h1):
        wait_until(lambda h=h: mine[0] in own_routes(h), 20, what="routes of the restarted node back")
    e0, e2 = h0.add_endpoint("k0", network=NET), h2.add_endpoint("k2", network=NET)
    try:
        assert ping(e0["netns"], v4(e2))
        assert ping(e2["netns"], v6(e0))
        # the restarted node took over its programs and maps: still the bypass, both ways
        c0, c2 = counters(h0, e0["name"]), counters(h2, e2["name"])
        assert c0["tx_routed_packets"] >= 1 and c2["rx_routed_packets"] >= 1, (c0, c2)
        assert c2["tx_routed_packets"] >= 1 and c0["rx_routed_packets"] >= 1, (c0, c2)
    finally:
        h0.remove_endpoint(e0["name"])
        h2.remove_endpoint(e2["name"])


@pytest.mark.parametrize("args, words", [
    (("--subnet", "10.97.0.0/24"), "too small for its host blocks of /24"),
    (("--subnet", "10.97.0.0/16", "--host-prefix", "31"), "host_prefix"),
    (("--subnet", SUBNET4), "overlaps"),
    (("--subnet", "10.98.0.0/16", "--gateway", "10.98.0.9"), "takes no --gateway"),
    ((), "needs --subnet"),
])
def test_bad_input_leaves_nothing(cluster: Cluster, args: tuple[str, ...], words: str) -> None:
    h = cluster.hosts[0]
    before = cluster.etcd.keys("/bpfnet/v1/routed/")
    links = run("ip", "-n", h.netns, "-o", "link").stdout.count("\n")
    r = h.cli("network", "create", "bad", "--driver", "routed", *args)
    assert r.returncode != 0 and words in r.stderr, r.stderr
    wait_until(lambda: cluster.etcd.keys("/bpfnet/v1/routed/") == before, 5, what="no claim left in etcd")
    assert run("ip", "-n", h.netns, "-o", "link").stdout.count("\n") == links


def test_network_rm_releases_the_block_and_routes(cluster: Cluster) -> None:
    h0, h1, _ = cluster.hosts
    for h in (h0, h1):
        h.cli("network", "create", "rn2", "--driver", "routed", "--subnet", "10.99.0.0/16", check=True)
    b1 = h1.cli_json("network", "inspect", "rn2")["driver_state"]["block4"]
    wait_until(lambda: b1 in own_routes(h0), 10, what="route to h1's block")
    h1.cli("network", "rm", "rn2", check=True)
    wait_until(lambda: b1 not in own_routes(h0), 10, what="route to h1's released block removed")
    h0.cli("network", "rm", "rn2", check=True)
    assert not cluster.etcd.keys("/bpfnet/v1/routed/rn2/")
    assert not [d for d in own_routes(h0) if d.startswith("10.99.")]


def test_a_node_without_a_shared_link_is_reported(cluster: Cluster) -> None:
    """A node whose advertise address is on no subnet of this host: the kernel refuses the route,
    bpfnet reports it (network inspect: unreachable) instead of routing it somewhere else."""
    etcd, h0 = cluster.etcd, cluster.hosts[0]
    lease = etcd.ctl("lease", "grant", "60").split()[1]
    far = json.dumps({"name": "far", "address": "10.200.0.5", "started": 0})
    blk = f"/bpfnet/v1/routed/{NET}/blocks/10.96.250.0_24"
    etcd.ctl("put", "--lease", lease, "/bpfnet/v1/nodes/far", far)
    etcd.ctl("put", blk, json.dumps({"node": "far", "address": "10.200.0.5", "link_local": ""}))
    try:
        state = wait_until(lambda: s if (s := h0.cli_json("network", "inspect", NET)["driver_state"])["unreachable"]
                           else None, 10, what="unreachable node reported")
        assert "10.96.250.0/24" in state["unreachable"] and "not on a subnet" in state["unreachable"]["10.96.250.0/24"]
        assert "10.96.250.0/24" not in own_routes(h0)
        assert "10.200.0.5 for 10.96.250.0/24 is not on a subnet" in h0.log_tail(10**8)
    finally:
        etcd.ctl("lease", "revoke", lease)
        etcd.ctl("del", blk)
    wait_until(lambda: not h0.cli_json("network", "inspect", NET)["driver_state"]["unreachable"], 10,
               what="report cleared")


def test_etcd_away_keeps_the_routes_and_refuses_create_cleanly(cluster: Cluster) -> None:
    h0 = cluster.hosts[0]
    routes = wait_until(lambda: r if len(r := own_routes(h0)) == 4 else None, 10, what="routes")
    links = run("ip", "-n", h0.netns, "-o", "link").stdout.count("\n")
    cluster.etcd.stop()
    try:
        r = h0.cli("network", "create", "rn3", "--driver", "routed", "--subnet", "10.95.0.0/16")
        assert r.returncode != 0 and "cannot be reached" in r.stderr, r.stderr
        assert "rn3" not in {n["name"] for n in h0.cli_json("network", "ls")}
        assert run("ip", "-n", h0.netns, "-o", "link").stdout.count("\n") == links
        time.sleep(3)  # three sync periods: nothing is removed while the store says nothing
        assert own_routes(h0) == routes
    finally:
        cluster.etcd.start()
    assert not cluster.etcd.keys("/bpfnet/v1/routed/rn3/")


def test_cleanup_removes_the_uplink_program(cluster: Cluster) -> None:
    """Last: --cleanup takes uplink_ingress off the uplink (attached for the routed network)."""
    for h in cluster.hosts:
        assert uplink_attached(h)
        h.stop()
        r = run(*h.command(), "--cleanup", check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "bpfnet" not in uplink_filters(h)
        # a tcx link lives while pinned or held: no pins and no daemon, no program
        assert not (Path("/sys/fs/bpf/bpfnet") / h.netns).exists()
