"""Ways out and in, on the real kernel: masquerading, internal networks, published ports.

One daemon (datapath auto: the eBPF programs enforce internal networks) runs in its managed
namespace; the test gives that namespace an uplink veth (``up0``: 198.51.100.1/24,
2001:db8:12::1/64) to an "outside" namespace it makes (198.51.100.2, 2001:db8:12::2, default
routes back through the uplink). Never the root namespace. Servers are ``outside_peer.py``:
they answer every request with the address they saw it come from.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bpfnet.client import ClientError
from bpfnet.datapath.published import Flow
from helpers import DaemonFactory, DaemonProcess, make_netns, netns_list, run, wait_until

pytestmark = pytest.mark.kernel
PEER = str(Path(__file__).resolve().parent / "outside_peer.py")
UP4, OUT4 = "198.51.100.1", "198.51.100.2"
UP6, OUT6 = "2001:db8:12::1", "2001:db8:12::2"
SERVER_PORT = 7000  # in the outside namespace
WEB_PORT = 80  # in the published endpoint (TCP and UDP)
DAEMON_ARGS = ("--bip", "10.203.0.1/24", "--ipv6", "--fixed-cidr-v6", "fd00:203::/64", "--ip6-masq")


@dataclass
class World:
    d: DaemonProcess
    out: str  # the outside namespace
    client: dict[str, str]  # an endpoint that only talks
    web: dict[str, str]  # the endpoint publishing 8080:80, 8081:80/udp, [UP6]:8082:80
    servers: list[subprocess.Popen[str]]


def serve(ns: str, *ports: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PEER, "serve", *map(str, ports)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def ask(ns: str, proto: str, host: str, port: int) -> str | None:
    """The address the server at HOST:PORT saw NS's request come from; None: no answer."""
    r = run("ip", "netns", "exec", ns, sys.executable, PEER, "ask", proto, host, str(port), check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def nft_table(ns: str) -> str:
    r = run("ip", "netns", "exec", ns, "nft", "list", "table", "inet", "bpfnet", check=False)
    return r.stdout if r.returncode == 0 else ""


def make_uplink(d: DaemonProcess, out: str) -> None:
    run("ip", "-n", d.netns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", out)
    for ns, dev, a4, a6, gw4, gw6 in ((d.netns, "up0", UP4, UP6, None, None), (out, "eth0", OUT4, OUT6, UP4, UP6)):
        run("ip", "-n", ns, "addr", "add", f"{a4}/24", "dev", dev)
        run("ip", "-n", ns, "addr", "add", f"{a6}/64", "dev", dev, "nodad")
        run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        if gw4:
            run("ip", "-n", ns, "route", "add", "default", "via", gw4)
            run("ip", "-n", ns, "-6", "route", "add", "default", "via", gw6)


@pytest.fixture(scope="module")
def world(module_daemons: DaemonFactory) -> Iterator[World]:
    d = module_daemons.start(*DAEMON_ARGS, datapath=None)
    out = make_netns(module_daemons.track_netns(d.name("out")))
    servers: list[subprocess.Popen[str]] = []
    try:
        make_uplink(d, out)
        servers.append(serve(out, SERVER_PORT))
        client = d.add_endpoint("client")
        web = d.add_endpoint("web", publish=["8080:80", "8081:80/udp", f"[{UP6}]:8082:80"])
        servers.append(serve(web["netns"], WEB_PORT))
        yield World(d, out, client, web, servers)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def v4(ep: dict[str, str]) -> str:
    return ep["ipv4"].split("/")[0]


def v6(ep: dict[str, str]) -> str:
    return ep["ipv6"][0].split("/")[0]


# -- outbound -----------------------------------------------------------------------------
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family", [4, 6])
def test_outbound_is_masqueraded_to_the_uplink_address(world: World, proto: str, family: int) -> None:
    server, uplink = (OUT4, UP4) if family == 4 else (OUT6, UP6)
    assert ask(world.client["netns"], proto, server, SERVER_PORT) == uplink


def test_network_without_masquerade_keeps_endpoint_addresses(world: World) -> None:
    d = world.d
    d.client.post("/v1/networks", {"name": d.name("plain"), "subnet4": "10.204.0.0/24", "masquerade": False})
    try:
        ep = d.add_endpoint("plain1", network=d.name("plain"))
        try:
            assert ask(ep["netns"], "tcp", OUT4, SERVER_PORT) == v4(ep)  # the outside routes back via up0
            assert "10.204.0.0/24" not in nft_table(d.netns)
        finally:
            d.remove_endpoint(ep["name"])
    finally:
        d.client.delete(f"/v1/networks/{d.name('plain')}")


# -- internal networks --------------------------------------------------------------------
def test_internal_network_reaches_nothing_and_nothing_reaches_it(world: World) -> None:
    d = world.d
    net = d.name("intl")
    doc = d.client.post("/v1/networks", {"name": net, "subnet4": "10.205.0.0/24", "internal": True})
    assert doc["internal"] is True
    try:
        ep = d.add_endpoint("intl1", network=net)
        srv = serve(ep["netns"], WEB_PORT)
        try:
            assert ask(ep["netns"], "tcp", OUT4, SERVER_PORT) is None
            assert ask(ep["netns"], "udp", OUT4, SERVER_PORT) is None
            assert ask(ep["netns"], "tcp", UP4, 22) is None  # the host's other addresses are outside too
            assert ask(world.out, "tcp", v4(ep), WEB_PORT) is None  # routed in from outside
            assert ask(world.client["netns"], "tcp", v4(ep), WEB_PORT) is None  # from another network
            assert ask(d.netns, "tcp", v4(ep), WEB_PORT) == "10.205.0.1"  # the gateway is inside
            drops = next(e for e in d.client.get("/v1/stats")["endpoints"] if e["name"] == ep["name"])
            assert drops["counters"]["drops"]["tx"]["internal"] >= 3
            assert drops["counters"]["drops"]["rx"]["internal"] >= 2
            assert "10.205.0.0/24" not in nft_table(d.netns)  # no masquerading either
            with pytest.raises(ClientError) as err:
                d.add_endpoint("intl2", network=net, publish=["9000:80"])
            assert err.value.status == 400 and "internal" in str(err.value)
            assert d.name("intl2") not in netns_list()
        finally:
            srv.kill()
            srv.wait()
            d.remove_endpoint(ep["name"])
    finally:
        d.client.delete(f"/v1/networks/{net}")


# -- published ports ----------------------------------------------------------------------
def test_published_port_from_outside_keeps_the_client_address(world: World) -> None:
    assert ask(world.out, "tcp", UP4, 8080) == OUT4
    assert ask(world.out, "tcp", UP6, 8080) == OUT6
    assert ask(world.out, "tcp", UP6, 8082) == OUT6  # published on that address only
    assert ask(world.out, "tcp", UP4, 8082) is None


def test_published_udp_port(world: World) -> None:
    assert ask(world.out, "udp", UP4, 8081) == OUT4
    assert ask(world.out, "udp", UP6, 8081) == OUT6
    assert ask(world.out, "tcp", UP4, 8081) is None  # udp only


def test_published_port_from_the_host_itself(world: World) -> None:
    d, gateway = world.d, "10.203.0.1"
    for host in ("127.0.0.1", UP4, "10.203.0.1"):
        assert ask(d.netns, "tcp", host, 8080) == gateway, host
    assert ask(d.netns, "tcp", UP6, 8080) is not None


def test_published_port_from_another_endpoint(world: World) -> None:
    # hairpin: from the same network, through the host's address; masqueraded to the gateway
    assert ask(world.client["netns"], "tcp", UP4, 8080) == "10.203.0.1"
    assert ask(world.client["netns"], "udp", UP4, 8081) == "10.203.0.1"


def test_published_ports_are_shown(world: World) -> None:
    d = world.d
    doc = d.client.get(f"/v1/endpoints/{world.web['name']}")
    assert {(p["host_ip"], p["host_port"], p["endpoint_port"], p["proto"]) for p in doc["published"]} == {
        (None, 8080, 80, "tcp"), (None, 8081, 80, "udp"), (UP6, 8082, 80, "tcp")}
    row = next(line for line in d.cli("endpoint", "ls").stdout.splitlines() if world.web["name"] in line)
    assert "*:8080->80/tcp" in row and "*:8081->80/udp" in row and f"[{UP6}]:8082->80/tcp" in row
    assert "published_ports" in d.cli_json("info")["outside"]


@pytest.mark.parametrize(("spec", "status", "words"), [
    ("8080:80", 409, "already published"),
    ("127.0.0.1:8080:80", 409, "already published"),  # a specific address vs every address
    (f"[{UP6}]:8082:80", 409, "already published"),
    ("70000:80", 400, "out of range"),
    ("8090:80/sctp", 400, "not tcp or udp"),
    ("8090-8091:80-82", 400, "differ in length"),
    ("203.0.113.9:8090:80", 400, "has no address 203.0.113.9"),
    ("8090-8091", 400, "same length"),
    ("a:80", 400, "not a port"),
])
def test_publish_refusals_leave_nothing(world: World, spec: str, status: int, words: str) -> None:
    d = world.d
    table, eps = nft_table(d.netns), {e["name"] for e in d.client.get("/v1/endpoints")}
    with pytest.raises(ClientError) as err:
        d.add_endpoint("bad", publish=[spec])
    assert err.value.status == status and words in str(err.value), err.value
    assert {e["name"] for e in d.client.get("/v1/endpoints")} == eps
    assert d.name("bad") not in netns_list() and nft_table(d.netns) == table


def test_open_host_ports_are_picked_free(world: World) -> None:
    """Docker's `-p 80` / `-p LOW-HIGH:80`: the first free host port, never one taken."""
    d = world.d
    a = d.add_endpoint("pick1", publish=["8080-8083:80", "127.0.0.1::81"])
    try:
        got = {p["endpoint_port"]: p for p in a["published"]}
        # 8080/tcp is the web endpoint's, 8081 only for udp: 8081/tcp is the first free one
        assert got[80]["host_port"] == 8081
        assert got[81]["host_port"] >= 49153 and got[81]["host_ip"] == "127.0.0.1"
        assert "tcp dport 8081" in nft_table(d.netns)
        table = nft_table(d.netns)
        with pytest.raises(ClientError) as err:
            d.add_endpoint("pick2", publish=["8081-8082:80"])  # 8082: web's on its IPv6 address
        assert err.value.status == 507 and "no free host port in 8081-8082" in str(err.value)
        assert d.name("pick2") not in {e["name"] for e in d.client.get("/v1/endpoints")}
        assert nft_table(d.netns) == table
    finally:
        d.remove_endpoint(a["name"])


def test_cli_publishes(world: World) -> None:
    d = world.d
    r = d.cli("endpoint", "add", d.name("cli"), "-p", "9200:80", "--publish", "127.0.0.1:9201:80/udp")
    try:
        assert r.returncode == 0, r.stderr
        assert "*:9200->80/tcp, 127.0.0.1:9201->80/udp" in r.stdout
        bad = d.cli("endpoint", "add", d.name("cli2"), "-p", "9200:80")
        assert bad.returncode == 1 and bad.stderr.startswith("bpfnet: --publish 9200:80/tcp: port 9200/tcp")
    finally:
        d.remove_endpoint(d.name("cli"))


def test_removed_endpoint_takes_its_ports(world: World) -> None:
    d = world.d
    ep = d.add_endpoint("tmp", publish=["9090:80", "9091-9092:81-82/udp"])
    assert "dport 9091" in nft_table(d.netns)
    d.remove_endpoint(ep["name"])
    table = nft_table(d.netns)
    assert "9090" not in table and "9091" not in table and "9092" not in table


def test_metrics_count_ports_and_masquerading(world: World) -> None:
    d = world.d
    assert ask(world.out, "tcp", UP4, 8080) == OUT4
    assert ask(world.client["netns"], "tcp", OUT4, SERVER_PORT) == UP4
    url = d.cli_json("info")["metrics_url"]
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    web = world.web["name"]
    lines = [line for line in text.splitlines() if not line.startswith("#")]

    def value(prefix: str, *labels: str) -> float:
        hits = [float(line.rsplit(" ", 1)[1]) for line in lines
                if line.startswith(prefix + "{") and all(lb in line for lb in labels)]
        assert hits, (prefix, labels)
        return sum(hits)

    port = (f'endpoint="{web}"', 'host_port="8080"', 'proto="tcp"')
    assert value("bpfnet_published_port_connections_total", *port) >= 1
    assert value("bpfnet_published_port_packets_total", *port, 'direction="in"') >= 3
    assert value("bpfnet_published_port_bytes_total", *port, 'direction="out"') > 0
    assert value("bpfnet_masquerade_bytes_total", 'network="bridge"', 'direction="out"') > 0
    assert value("bpfnet_masquerade_packets_total", 'network="bridge"', 'direction="in"') > 0


# -- the fast path for established published flows (bpf/nat.h) ------------------------------
def flows(d: DaemonProcess) -> list[Flow]:
    """The daemon's published_flows entries, read from its pinned map."""
    from bpfnet.datapath import published
    from bpfnet.datapath.maps import PinnedMaps

    maps = PinnedMaps(f"/sys/fs/bpf/bpfnet/{d.netns}", 4096)
    try:
        return list(published.flows(maps))
    finally:
        maps.close()


def fast_packets(d: DaemonProcess, port: int, proto: str) -> dict[str, float]:
    url = d.cli_json("info")["metrics_url"]
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {"in": 0.0, "out": 0.0}
    for line in text.splitlines():
        if line.startswith("bpfnet_published_port_fastpath_packets_total{") and f'host_port="{port}"' in line \
                and f'proto="{proto}"' in line:
            out[line.split('direction="')[1].split('"')[0]] += float(line.rsplit(" ", 1)[1])
    return out


def repeat(ns: str, proto: str, host: str, port: int, n: int) -> list[str]:
    r = run("ip", "netns", "exec", ns, sys.executable, PEER, "repeat", proto, host, str(port), str(n), check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize(("proto", "host", "port", "client"), [
    ("tcp", UP4, 8080, OUT4), ("tcp", UP6, 8080, OUT6), ("udp", UP4, 8081, OUT4), ("udp", UP6, 8081, OUT6)])
def test_fast_path_carries_established_flows(world: World, proto: str, host: str, port: int, client: str) -> None:
    d = world.d
    info = d.cli_json("info")
    assert info["outside"]["fastpath"]["uplinks"] == ["up0"] and "BPF fast path" in info["outside"]["mechanism"]
    assert any(p["name"] == "uplink_ingress" and p["attach"] == "up0/ingress" for p in info["datapath"]["programs"])
    text = d.cli("info").stdout
    assert "nftables table inet bpfnet + BPF fast path (uplink_ingress)" in text
    assert "fast path:  uplink_ingress on up0;" in text
    before = fast_packets(d, port, proto)
    # the endpoint sees the real client address on every request, whichever path carried it
    assert repeat(world.out, proto, host, port, 20) == [client] * 20
    after = fast_packets(d, port, proto)
    # the first packets go the kernel's way until it has forwarded the flow established
    assert after["in"] - before["in"] >= 15 and after["out"] - before["out"] >= 15, (before, after)
    mine = [f for f in flows(d) if f.proto == proto and client in (str(f.saddr), str(f.daddr))]
    if proto == "tcp":  # the client closed: FIN removed both directions
        assert mine == []
    else:  # UDP has no end: idle entries go (FLOW_UDP_IDLE), here they are still established
        assert {(f.direction, f.state) for f in mine} >= {("in", "established"), ("out", "established")}


# -- restart and cleanup --------------------------------------------------------------------
def test_restart_keeps_a_connection_and_the_ports(world: World) -> None:
    """A TCP connection through a published port stays up across a restart that changes
    --ip-masq (the table is rebuilt in one transaction), and the new setting applies."""
    d = world.d
    hold = subprocess.Popen(["ip", "netns", "exec", world.out, sys.executable, PEER, "hold", UP4, "8080"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert hold.stdin is not None and hold.stdout is not None
    try:
        assert hold.stdout.readline().strip() == "connected"

        def echo() -> str:
            assert hold.stdin is not None and hold.stdout is not None
            hold.stdin.write("x\n")
            hold.stdin.flush()
            return hold.stdout.readline().strip()

        assert echo() == OUT4
        fast = fast_packets(d, 8080, "tcp")
        for _ in range(5):
            assert echo() == OUT4
        assert fast_packets(d, 8080, "tcp")["in"] >= fast["in"] + 5  # on the fast path
        d.args.append("--no-ip-masq")
        try:
            d.restart()
            fast = fast_packets(d, 8080, "tcp")
            assert echo() == OUT4  # same connection
            # the flow table is pinned: still on the fast path after the restart
            assert fast_packets(d, 8080, "tcp")["in"] >= fast["in"] + 1
            assert ask(world.out, "tcp", UP4, 8080) == OUT4  # new ones too
            assert ask(world.client["netns"], "tcp", OUT4, SERVER_PORT) == v4(world.client)
            assert d.cli_json("info")["outside"]["ip_masq"] is False
        finally:
            d.args.remove("--no-ip-masq")
            d.restart()
        assert echo() == OUT4
        assert ask(world.client["netns"], "tcp", OUT4, SERVER_PORT) == UP4
        # the fast path turned off under the open connection: the kernel's conntrack carries it on
        d.args.append("--no-published-fastpath")
        try:
            d.restart()
            info = d.cli_json("info")
            assert info["outside"]["mechanism"] == "nftables table inet bpfnet"
            assert not [p for p in info["datapath"]["programs"] if p["name"] == "uplink_ingress"]
            assert flows(d) == []
            for _ in range(3):
                assert echo() == OUT4
        finally:
            d.args.remove("--no-published-fastpath")
            d.restart()
        assert echo() == OUT4
    finally:
        hold.kill()
        hold.wait()


def test_cleanup_leaves_no_table_or_program(daemons: DaemonFactory) -> None:
    # cls_bpf filters (the default is tcx where the kernel has it): `tc filter show` sees them
    d = daemons.start("--bip", "10.206.0.1/24", "--datapath-attach", "tc", datapath=None)
    run("ip", "-n", d.netns, "link", "add", "upc", "type", "veth", "peer", "name", "upc-p")
    run("ip", "-n", d.netns, "addr", "add", "192.0.2.1/24", "dev", "upc")
    run("ip", "-n", d.netns, "link", "set", "upc", "up")
    d.add_endpoint("w", publish=["8080:80"])
    assert "dnat" in nft_table(d.netns)
    assert "bpfnet:uplink_ingress" in run("tc", "-n", d.netns, "filter", "show", "dev", "upc", "ingress").stdout
    d.stop()
    r = run(*d.command(), "--cleanup", check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    tables = run("ip", "netns", "exec", d.netns, "nft", "list", "tables").stdout
    assert "bpfnet" not in tables
    filters = run("tc", "-n", d.netns, "filter", "show", "dev", "bpfnet0", "egress", check=False).stdout
    assert "bpfnet" not in filters
    assert "bpfnet" not in run("tc", "-n", d.netns, "filter", "show", "dev", "upc", "ingress", check=False).stdout
    assert not Path(f"/sys/fs/bpf/bpfnet/{d.netns}").exists()
    wait_until(lambda: not nft_table(d.netns), what="no table")
