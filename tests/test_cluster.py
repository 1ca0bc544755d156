"""Multi-host end to end: three hosts (namespaces, each managed by its own daemon) on an
underlay, one real etcd, overlay networks across them (tests/cluster.py builds it all).

Covered: cross-host ping and TCP over IPv4 and IPv6 with proof from the counters that the
BPF tunnel path carried it; cluster-unique addresses under parallel adds on every host; bad
input refused with nothing half-made; etcd stopped (traffic flows, adds fail cleanly with 503,
recovery without a restart); a node SIGKILLed (its endpoints leave the others' tables after
the TTL; restarted, it reconciles); a daemon restart under cross-host traffic without loss;
``--cleanup`` on every node.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpfnet.client import ClientError
from cluster import TTL, Cluster
from helpers import DaemonError, DaemonProcess, make_netns, ping, run, wait_until

pytestmark = pytest.mark.kernel


def addr(ep: dict[str, Any], family: int = 4) -> str:
    return (ep["ipv4"] if family == 4 else ep["ipv6"][0]).split("/")[0]


def counters(d: DaemonProcess, name: str) -> dict[str, Any]:
    return next(e["counters"] for e in d.client.get("/v1/stats")["endpoints"] if e["name"] == name)


def remote_count(d: DaemonProcess) -> int:
    return int(d.client.get("/v1/info")["cluster"]["remote_endpoints"])


ACCEPT = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(20)
c, _ = s.accept()
"""  # a server's start: one connection accepted on ADDRESS PORT (argv), as c
SERVER = ACCEPT + """
c.sendall(c.recv(100).upper())
c.close()
"""
CLIENT = """
import socket, sys, time
for _ in range(50):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)
        break
    except OSError:
        time.sleep(0.1)
c.sendall(b"over the tunnel")
print(c.recv(100).decode(), end="")
"""


def tcp_echo(server_ns: str, client_ns: str, address: str, port: int = 7007) -> bytes:
    """One TCP connection from CLIENT_NS to ADDRESS:PORT in SERVER_NS; what the server echoed."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "python3", "-c", SERVER, address, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return run("ip", "netns", "exec", client_ns, "python3", "-c", CLIENT, address, str(port),
                   timeout=20).stdout.encode()
    finally:
        server.wait(timeout=15)


@pytest.fixture(scope="module")
def overlay(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """Overlay network 'ov' (dual stack) made on h0, one endpoint per host."""
    h = cluster.hosts
    h[0].client.post("/v1/networks", {"name": "ov", "driver": "overlay", "subnet4": "10.50.0.0/24",
                                      "subnet6": "fd50::/64"})
    for d in h[1:]:
        wait_until(lambda d=d: any(n["name"] == "ov" for n in d.client.get("/v1/networks")), 10,
                   what=f"{d.tag} to learn network ov")
    eps = [d.client.post("/v1/endpoints", {"name": d.name("e"), "network": "ov"}) for d in h]
    for d in h:
        wait_until(lambda d=d: remote_count(d) == 2, 10, what=f"{d.tag} to learn the remote endpoints")
    yield {"eps": eps}


def test_cross_host_ping_and_tcp_take_the_tunnel(cluster: Cluster, overlay: dict[str, Any]) -> None:
    h, eps = cluster.hosts, overlay["eps"]
    for i, src in enumerate(eps):
        for j, dst in enumerate(eps):
            if i != j:
                assert ping(src["netns"], addr(dst), count=2), f"{src['name']} -> {dst['name']} IPv4"
                assert ping(src["netns"], addr(dst, 6), count=2), f"{src['name']} -> {dst['name']} IPv6"
    assert tcp_echo(eps[2]["netns"], eps[0]["netns"], addr(eps[2])) == b"OVER THE TUNNEL"
    assert tcp_echo(eps[1]["netns"], eps[2]["netns"], addr(eps[1], 6), 7008) == b"OVER THE TUNNEL"
    for d, ep in zip(h, eps):
        c = counters(d, ep["name"])
        # every host sent and received over the tunnel, and ARP/ND never crossed it
        assert c["tx_tunnel_packets"] >= 8 and c["rx_tunnel_packets"] >= 8, c
        tunnel = d.client.get("/v1/stats")["tunnel"]
        assert tunnel["rx_packets"] >= 8 and tunnel["rx_not_ip"] == 0
        # the programs wrote and stripped the VXLAN headers themselves (--overlay-encap native)
        assert tunnel["tx_native"] >= 8 and tunnel["rx_native"] >= 8, tunnel
    table = h[0].cli("stats").stdout
    assert "TX TUNNEL" in table and "tunnel:" in table and "encapsulated natively" in table
    metrics = h[0].client.get("/v1/info")["metrics_url"]
    assert metrics  # the families themselves are checked in test_metrics_collector


def test_nodes_and_the_network_everywhere(cluster: Cluster, overlay: dict[str, Any]) -> None:
    nodes = cluster.hosts[1].client.get("/v1/nodes")
    assert [(n["name"], n["state"], n["self"]) for n in nodes] == [
        ("h0", "alive", False), ("h1", "alive", True), ("h2", "alive", False)]
    ls = cluster.hosts[2].cli("node", "ls").stdout.splitlines()
    assert ls[0].split() == ["NODE", "ADDRESS", "STATE", "ENDPOINTS"] and ls[3].split()[:2] == ["h2", "*"]
    for d in cluster.hosts:
        net = d.client.get("/v1/networks/ov")
        assert net["driver"] == "overlay" and net["scope"] == "global" and net["config"]["vni"] == 4096
        assert net["mtu"] == 1450  # the underlay's 1500 - VXLAN's 50


def test_addresses_are_cluster_unique_under_parallel_adds(cluster: Cluster, overlay: dict[str, Any]) -> None:
    results: list[dict[str, Any] | Exception] = []

    def add(d: DaemonProcess, i: int) -> None:
        try:
            results.append(d.client.post("/v1/endpoints", {"name": d.name(f"p{i}"), "network": "ov"}))
        except ClientError as exc:
            results.append(exc)

    threads = [threading.Thread(target=add, args=(d, i)) for d in cluster.hosts for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    made = [r for r in results if isinstance(r, dict)]
    try:
        assert len(made) == 12, [r for r in results if not isinstance(r, dict)]
        v4 = [addr(e) for e in made] + [addr(e) for e in overlay["eps"]]
        v6 = [addr(e, 6) for e in made] + [addr(e, 6) for e in overlay["eps"]]
        assert len(set(v4)) == len(v4) == 15 and len(set(v6)) == 15
        leases = [k for k in cluster.etcd.keys("/bpfnet/v1/leases/ov/")]
        assert len(leases) == 30
    finally:
        for d in cluster.hosts:
            for e in made:
                if e["name"].startswith(d.tag):
                    d.client.delete(f"/v1/endpoints/{e['name']}")
    assert len(cluster.etcd.keys("/bpfnet/v1/leases/ov/")) == 6
    assert len(cluster.etcd.keys("/bpfnet/v1/endpoints/ov/")) == 3


def test_bad_input_leaves_nothing_behind(cluster: Cluster, overlay: dict[str, Any]) -> None:
    h1 = cluster.hosts[1]
    before_keys, before_links = cluster.etcd.keys(), h1.links()
    cases = [
        ({"name": "ov2", "driver": "overlay", "subnet4": "10.50.0.128/25"}, 409,
         "subnet 10.50.0.128/25 overlaps network ov's subnet 10.50.0.0/24"),
        ({"name": "ov3", "driver": "overlay", "subnet4": "10.51.0.0/24", "vni": 4096}, 409,
         "VNI 4096 is in use by network 'ov'"),
        ({"name": "ov4", "driver": "overlay", "gateway4": "10.53.0.1"}, 400, "gateway4 needs subnet4"),
        ({"name": "ov5", "driver": "overlay", "subnet4": "10.52.0.0/24", "mtu": 1500}, 400,
         "at most 1450 on this uplink"),
    ]
    for body, status, message in cases:
        with pytest.raises(ClientError) as err:
            h1.client.post("/v1/networks", body)
        assert err.value.status == status and message in str(err.value), (body, err.value)
    assert cluster.etcd.keys() == before_keys and h1.links() == before_links
    assert [n["name"] for n in h1.client.get("/v1/networks")] == ["ov"]
    # removal is refused while another host has endpoints on the network, and then goes everywhere
    h0 = cluster.hosts[0]
    h0.client.post("/v1/networks", {"name": "ov9", "driver": "overlay", "subnet4": "10.59.0.0/24"})
    wait_until(lambda: any(n["name"] == "ov9" for n in h1.client.get("/v1/networks")), 10, what="ov9 on h1")
    ep = h0.client.post("/v1/endpoints", {"name": h0.name("ov9"), "network": "ov9"})
    # h1 made ov9 and forwards to h0's endpoint on it (a network listed is not yet a network made)
    wait_until(lambda: h1.client.get("/v1/networks/ov9")["driver_state"]["remote_endpoints"] == 1, 10,
               what="h1 to forward to h0's endpoint on ov9")
    with pytest.raises(ClientError, match="network 'ov9' has 1 endpoint\\(s\\) on node\\(s\\) h0; remove them first"):
        h1.client.delete("/v1/networks/ov9")
    h0.client.delete(f"/v1/endpoints/{ep['name']}")
    h1.client.delete("/v1/networks/ov9")
    for d in cluster.hosts:
        wait_until(lambda d=d: all(n["name"] != "ov9" for n in d.client.get("/v1/networks")), 10,
                   what=f"ov9 gone from {d.tag}")
    assert cluster.etcd.keys() == before_keys and h1.links() == before_links


def test_overlay_without_subnets_gets_them_from_the_cluster(cluster: Cluster, overlay: dict[str, Any]) -> None:
    """As Docker's swarm: IPv4 the first free /24 of 10.0.0.0/8, IPv6 a /64 of one ULA /48 that
    the whole cluster shares; a second network elsewhere gets the next ones; endpoints reach
    each other across hosts."""
    from ipaddress import IPv4Network, IPv6Network

    h = cluster.hosts
    before = cluster.etcd.keys()
    a = h[1].client.post("/v1/networks", {"name": "auto1", "driver": "overlay", "ipv6": True})
    b = h[2].client.post("/v1/networks", {"name": "auto2", "driver": "overlay", "ipv6": True})
    try:
        v4 = [n["ipam"]["ipv4"]["subnet"] for n in (a, b)]
        assert v4 == ["10.0.0.0/24", "10.0.1.0/24"]  # the underlay is 10.77.0.0/24
        assert a["subnet_source"] == "cluster pool 10.0.0.0/8"
        prefix = IPv6Network(cluster.etcd.ctl("get", "--print-value-only", "/bpfnet/v1/meta/ula_prefix").strip())
        assert prefix.prefixlen == 48 and prefix.network_address.packed[0] == 0xFD
        six = [IPv6Network(n["ipam"]["ipv6"]["subnet"]) for n in (a, b)]
        assert all(s.prefixlen == 64 and s.subnet_of(prefix) for s in six) and six[0] != six[1]
        assert not IPv4Network(v4[0]).overlaps(IPv4Network("10.50.0.0/24"))
        wait_until(lambda: any(n["name"] == "auto1" for n in h[0].client.get("/v1/networks")), 10, what="auto1 on h0")
        e0 = h[0].client.post("/v1/endpoints", {"name": h[0].name("au"), "network": "auto1"})
        e1 = h[1].client.post("/v1/endpoints", {"name": h[1].name("au"), "network": "auto1"})
        try:
            wait_until(lambda: remote_count(h[0]) == 3, 10, what="h0 to learn h1's auto1 endpoint")
            assert ping(e0["netns"], addr(e1), count=2) and ping(e1["netns"], addr(e0, 6), count=2)
        finally:
            for d, e in ((h[0], e0), (h[1], e1)):
                d.client.delete(f"/v1/endpoints/{e['name']}")
    finally:
        h[1].client.delete("/v1/networks/auto1")
        h[2].client.delete("/v1/networks/auto2")
    for d in h:
        wait_until(lambda d=d: not {"auto1", "auto2"} & {n["name"] for n in d.client.get("/v1/networks")}, 10,
                   what=f"the auto networks gone from {d.tag}")
    assert cluster.etcd.keys() == sorted({*before, "/bpfnet/v1/meta/ula_prefix"})


def test_no_icc_applies_across_hosts(cluster: Cluster, overlay: dict[str, Any]) -> None:
    h0, h1 = cluster.hosts[0], cluster.hosts[1]
    h0.client.post("/v1/networks", {"name": "iso", "driver": "overlay", "subnet4": "10.58.0.0/24", "icc": False})
    wait_until(lambda: any(n["name"] == "iso" for n in h1.client.get("/v1/networks")), 10, what="iso on h1")
    a = h0.client.post("/v1/endpoints", {"name": h0.name("iso"), "network": "iso"})
    b = h1.client.post("/v1/endpoints", {"name": h1.name("iso"), "network": "iso"})
    try:
        wait_until(lambda: remote_count(h0) == 3, 10, what="h0 to learn the isolated endpoint")
        assert not ping(a["netns"], addr(b), count=2, wait=1)
        assert counters(h0, a["name"])["drops"]["tx"]["policy"] >= 2  # refused before the tunnel
        assert ping(a["netns"], "10.58.0.1", count=1)  # the gateway stays reachable
    finally:
        h0.client.delete(f"/v1/endpoints/{a['name']}")
        h1.client.delete(f"/v1/endpoints/{b['name']}")
        h0.client.delete("/v1/networks/iso")
    for d in cluster.hosts:
        wait_until(lambda d=d: all(n["name"] != "iso" for n in d.client.get("/v1/networks")), 10,
                   what=f"iso gone from {d.tag}")


def test_store_down_keeps_traffic_and_fails_adds_cleanly(cluster: Cluster, overlay: dict[str, Any]) -> None:
    h0, eps = cluster.hosts[0], overlay["eps"]
    cluster.etcd.stop()
    try:
        assert ping(eps[0]["netns"], addr(eps[1]), count=2) and ping(eps[1]["netns"], addr(eps[2], 6), count=2)
        before = (h0.links(), h0.owned_netns(), [e["name"] for e in h0.client.get("/v1/endpoints")])
        with pytest.raises(ClientError) as err:
            h0.client.post("/v1/endpoints", {"name": h0.name("down"), "network": "ov"})
        assert err.value.status == 503 and "cannot be reached" in str(err.value)
        assert (h0.links(), h0.owned_netns(), [e["name"] for e in h0.client.get("/v1/endpoints")]) == before
        # a bridge network does not need the store
        h0.client.post("/v1/networks", {"name": "local", "subnet4": "10.60.0.0/24"})
        local = h0.client.post("/v1/endpoints", {"name": h0.name("local"), "network": "local"})
        h0.client.delete(f"/v1/endpoints/{local['name']}")
        h0.client.delete("/v1/networks/local")
    finally:
        cluster.etcd.start()
    # caught up without a restart: an add works again and reaches the others
    ep = wait_until(lambda: _try_add(h0, "back"), 20, interval=0.5, what="an add after etcd came back")
    try:
        assert wait_until(lambda: ping(eps[2]["netns"], addr(ep), count=1), 10, what="the new endpoint reachable")
    finally:
        h0.client.delete(f"/v1/endpoints/{ep['name']}")


def _try_add(d: DaemonProcess, suffix: str) -> dict[str, Any] | None:
    try:
        return d.client.post("/v1/endpoints", {"name": d.name(suffix), "network": "ov"})  # type: ignore[no-any-return]
    except ClientError as exc:
        assert exc.status == 503, exc
        return None


BULK_SERVER = ACCEPT + """
import hashlib
h, n = hashlib.sha256(), 0
while chunk := c.recv(65536):
    h.update(chunk)
    n += len(chunk)
print(n, h.hexdigest())
"""
BULK_CLIENT = """
import socket, sys, time
for _ in range(50):
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        break
    except OSError:
        time.sleep(0.1)
block = bytes(range(256)) * 256
for _ in range(int(sys.argv[3])):
    c.sendall(block)
c.close()
"""


def bulk(server_ns: str, client_ns: str, address: str, port: int, blocks: int) -> str:
    """BLOCKS x 64 KiB over one TCP connection: what the server received (length, sha256)."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "python3", "-c", BULK_SERVER, address, str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run("ip", "netns", "exec", client_ns, "python3", "-c", BULK_CLIENT, address, str(port), str(blocks),
            timeout=60)
    finally:
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    return out.strip()


def test_bulk_tcp_super_packets_cross_intact(cluster: Cluster, overlay: dict[str, Any]) -> None:
    """TCP's 64 KB super-packets are encapsulated whole by the program (the kernel segments
    them as UDP tunnel packets) and arrive byte for byte, IPv4 and IPv6."""
    import hashlib

    h, eps = cluster.hosts, overlay["eps"]
    blocks = 64  # 4 MiB
    block = bytes(range(256)) * 256
    want = f"{blocks * len(block)} {hashlib.sha256(block * blocks).hexdigest()}"
    before = h[0].client.get("/v1/stats")["tunnel"]["tx_native"]
    assert bulk(eps[1]["netns"], eps[0]["netns"], addr(eps[1]), 7010, blocks) == want
    assert bulk(eps[0]["netns"], eps[2]["netns"], addr(eps[0], 6), 7011, blocks) == want
    # data, not just the handshake: every skb of the 4 MiB went through tunnel_encap()
    assert h[0].client.get("/v1/stats")["tunnel"]["tx_native"] - before >= 50


def test_native_and_device_hosts_interwork(cluster: Cluster, overlay: dict[str, Any]) -> None:
    """Both ways put the same VXLAN on the wire: a host restarted with --overlay-encap device
    reaches and is reached by the native ones, and its programs encapsulate nothing."""
    h, eps = cluster.hosts, overlay["eps"]
    h[2].args += ["--overlay-encap", "device"]
    try:
        h[2].restart()
        before = h[2].client.get("/v1/stats")["tunnel"]
        for src, dst in ((eps[2], eps[0]), (eps[1], eps[2])):
            assert ping(src["netns"], addr(dst), count=2), f"{src['name']} -> {dst['name']}"
            assert ping(src["netns"], addr(dst, 6), count=2), f"{src['name']} -> {dst['name']} IPv6"
        assert tcp_echo(eps[0]["netns"], eps[2]["netns"], addr(eps[0]), 7012) == b"OVER THE TUNNEL"
        after = h[2].client.get("/v1/stats")["tunnel"]
        assert after["tx_native"] == before["tx_native"] and after["rx_native"] == before["rx_native"]
        assert after["rx_packets"] >= before["rx_packets"] + 4  # through bpfnet_vx and tunnel_ingress
    finally:
        h[2].args = [a for a in h[2].args if a not in ("--overlay-encap", "device")]
        h[2].restart()


def test_restart_under_cross_host_traffic_loses_nothing(cluster: Cluster, overlay: dict[str, Any]) -> None:
    h, eps = cluster.hosts, overlay["eps"]
    pinger = subprocess.Popen(["ip", "netns", "exec", eps[0]["netns"], "ping", "-c", "400", "-i", "0.01", "-q",
                               addr(eps[1])], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    h[0].restart()
    h[1].restart()
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    assert ping(eps[1]["netns"], addr(eps[0], 6), count=2)


def test_killed_node_leaves_the_others_and_reconciles_on_restart(cluster: Cluster,
                                                                    overlay: dict[str, Any]) -> None:
    h, eps = cluster.hosts, overlay["eps"]
    h[2].kill()
    started = time.monotonic()
    wait_until(lambda: remote_count(h[0]) == 1 and remote_count(h[1]) == 1, 4 * TTL,
               what="h2's endpoint to leave the others' tables")
    assert time.monotonic() - started < 3 * TTL
    assert not ping(eps[0]["netns"], addr(eps[2]), count=1, wait=1)
    assert json.loads(cluster.etcd.ctl("get", "--print-value-only",
                                       f"/bpfnet/v1/endpoints/ov/h2/{eps[2]['name']}"))["node"] == "h2"
    nodes = {n["name"]: n["state"] for n in h[0].client.get("/v1/nodes")}
    assert nodes == {"h0": "alive", "h1": "alive", "h2": "down"}
    keys = cluster.etcd.keys()
    h[2].start(timeout=60)
    wait_until(lambda: remote_count(h[0]) == 2 and remote_count(h[1]) == 2, 10, what="h2 back in the tables")
    assert ping(eps[0]["netns"], addr(eps[2]), count=2)
    assert cluster.etcd.keys() == sorted([*keys, "/bpfnet/v1/nodes/h2"])  # its node again; nothing else


def test_node_rm_forgets_a_dead_node(cluster: Cluster, overlay: dict[str, Any]) -> None:
    """node rm: a dead node's records and leases leave etcd, refused for live or unknown nodes; if it
    comes back anyway, its endpoint is stored again unless its address went to another meanwhile."""
    h, eps = cluster.hosts, overlay["eps"]
    for name, status, message in (("h1", 409, "node 'h1' is alive"), ("nope", 404, "no node 'nope' in the cluster"),
                                  ("h0", 409, "this daemon's own node")):
        with pytest.raises(ClientError, match=re.escape(message)) as exc:
            h[0].client.delete(f"/v1/nodes/{name}")
        assert exc.value.status == status
    h[2].kill()
    wait_until(lambda: {n["name"]: n["state"] for n in h[0].client.get("/v1/nodes")}.get("h2") == "down", 4 * TTL,
               what="h2 down")
    r = h[0].cli("node", "rm", "h2")
    assert r.returncode == 0 and r.stdout.strip() == "h2", r.stderr
    left = cluster.etcd.keys()
    assert not [k for k in left if "/h2/" in k or k.endswith(addr(eps[2]))]
    wait_until(lambda: "h2" not in {n["name"] for n in h[1].client.get("/v1/nodes")}, 10, what="h2 gone on h1")
    # its address is free again: an endpoint on h0 takes it; h2, back, must not claim it a second time
    taken = h[0].client.post("/v1/endpoints", {"name": h[0].name("taken"), "network": "ov", "ip": addr(eps[2])})
    try:
        h[2].start(timeout=60)
        wait_until(lambda: "not stored again" in h[2].log_path.read_text(errors="replace"), 15, what="h2 to refuse its taken address")
        lease = json.loads(cluster.etcd.ctl("get", "--print-value-only", f"/bpfnet/v1/leases/ov/{addr(eps[2])}"))
        assert lease == {"node": "h0", "endpoint": taken["name"]}
        stored = cluster.etcd.keys()
        assert not [k for k in stored if k.startswith("/bpfnet/v1/endpoints/ov/h2/")]
    finally:
        h[0].client.delete(f"/v1/endpoints/{taken['name']}")
    # once the address is free, the next resync (a restart) stores h2's endpoint again
    h[2].restart()
    wait_until(lambda: remote_count(h[0]) == 2 and remote_count(h[1]) == 2, 15, what="h2's endpoint back")
    assert ping(eps[0]["netns"], addr(eps[2]), count=2)


def test_unreachable_store_and_foreign_advertise_addr_stop_the_start(cluster: Cluster) -> None:
    before = cluster.etcd.keys()
    for args, message in (
        (("--cluster-store", "etcd://10.77.0.1:2399", "--advertise-addr", "10.77.0.99"),
         "--advertise-addr 10.77.0.99 is not an address of this host's managed namespace"),
        (("--cluster-store", "etcd://10.77.0.250:2379", "--advertise-addr", "10.77.0.10"),
         "--cluster-store: the cluster store etcd://10.77.0.250:2379 cannot be reached"),
    ):
        d = cluster.factory.create(*args, "--bridge", "none")
        if "10.77.0.10" in args:  # a namespace that has the address, on a network where etcd is not
            make_netns(d.netns)
            run("ip", "-n", d.netns, "link", "add", "ul", "type", "veth", "peer", "name", "ul2")
            run("ip", "-n", d.netns, "addr", "add", "10.77.0.10/24", "dev", "ul")
            run("ip", "-n", d.netns, "link", "set", "ul", "up")
        with pytest.raises(DaemonError, match=re.escape(message)):
            d.start(timeout=60)
        d.cleanup()
    assert cluster.etcd.keys() == before  # nothing registered


def test_cleanup_on_every_node(cluster: Cluster, overlay: dict[str, Any]) -> None:
    """Last: --cleanup removes every program and pin (the daemons are stopped first)."""
    for d in cluster.hosts:
        d.stop()
        r = run(*d.command(), "--cleanup", check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        assert not (Path("/sys/fs/bpf/bpfnet") / d.netns).exists()
