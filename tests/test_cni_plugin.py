"""``bpfnet-cni`` against a real daemon, called as a CNI runtime calls it (no runtime in between).

One daemon (eBPF datapath) per module with a dual-stack network ``cni``; "containers" are
namespaces the tests make and remove, given to the plugin by path as CNI_NETNS.
The plugin chained with Debian's ``portmap`` is in test_podman_cni.py, under podman.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import cni
from helpers import DaemonFactory, DaemonProcess, addresses, delete_netns, make_netns, ping, run

pytestmark = pytest.mark.kernel

SUBNET4, SUBNET6 = "10.151.0.0/24", "fd00:151::/64"


@pytest.fixture(scope="module")
def daemon(module_daemons: DaemonFactory) -> Iterator[DaemonProcess]:
    d = module_daemons.start("--bridge", "none", datapath="auto")
    d.client.post("/v1/networks", {"name": "cni", "subnet4": SUBNET4, "subnet6": SUBNET6})
    yield d


def conf(d: DaemonProcess, **over: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "cni", "type": "bpfnet", "socket": str(d.sock), **over}


class Container:
    """A namespace standing in for a container, with a CNI container id."""

    def __init__(self, d: DaemonProcess, suffix: str) -> None:
        self.ns = make_netns(d.name(suffix))
        self.path = f"/run/netns/{self.ns}"
        self.id = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex characters, as runtimes make them

    def call(self, d: DaemonProcess, command: str, ifname: str = "eth0", **kw: Any) -> Any:
        return cni(command, kw.pop("config", None) or conf(d), container_id=self.id, netns=self.path,
                   ifname=ifname, **kw)


@pytest.fixture
def containers(daemon: DaemonProcess) -> Iterator[list[Container]]:
    made: list[Container] = []
    yield made
    for c in made:
        c.call(daemon, "DEL")
        delete_netns(c.ns)


def new(daemon: DaemonProcess, made: list[Container], suffix: str) -> Container:
    c = Container(daemon, suffix)
    made.append(c)
    return c


def test_version() -> None:
    r = cni("VERSION", {"cniVersion": "1.0.0"})
    assert r.returncode == 0 and r.doc == {"cniVersion": "1.0.0",
                                           "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}


def test_add_check_del(daemon: DaemonProcess, containers: list[Container]) -> None:
    a, b = new(daemon, containers, "ca"), new(daemon, containers, "cb")
    ra = a.call(daemon, "ADD", args="IgnoreUnknown=1;K8S_POD_NAME=" + daemon.name("web"))
    assert ra.returncode == 0, ra
    res = ra.doc
    assert res["cniVersion"] == "1.0.0"
    host, inner = res["interfaces"]
    assert host["name"].startswith("bnv") and "sandbox" not in host
    assert inner == {"name": "eth0", "mac": inner["mac"], "sandbox": a.path}
    ip4, ip6 = res["ips"]
    assert ip4["address"].startswith("10.151.0.") and ip4["address"].endswith("/24")
    assert ip4["gateway"] == "10.151.0.1" and ip4["interface"] == 1
    assert ip6["address"].startswith("fd00:151::") and ip6["interface"] == 1
    assert {"dst": "0.0.0.0/0", "gw": "10.151.0.1"} in res["routes"]
    assert any(r["dst"] == "::/0" for r in res["routes"])
    # The endpoint is the daemon's like any other: named after the container, owned by it.
    ep = daemon.client.get(f"/v1/endpoints/{daemon.name('web')}")
    assert ep["owner"] == f"cni:{a.id}:eth0" and ep["netns"] == a.path and ep["adopted_netns"]
    assert {x["local"] for x in addresses(a.ns, "eth0")} >= {ip4["address"].split("/")[0],
                                                             ip6["address"].split("/")[0]}

    rb = b.call(daemon, "ADD")  # no container name: the short id
    assert rb.returncode == 0, rb
    assert daemon.client.get(f"/v1/endpoints/{b.id[:12]}")["owner"] == f"cni:{b.id}:eth0"
    b4, b6 = (x["address"].split("/")[0] for x in rb.doc["ips"])
    # DNS: the result names bpfnet's resolver (the gateway), which knows the container by name
    assert "10.151.0.1" in res["dns"]["nameservers"], res["dns"]
    answer = run("ip", "netns", "exec", b.ns, "dig", "+short", "+time=2", "+tries=2", "@10.151.0.1",
                 daemon.name("web"), "A", check=False)
    assert answer.stdout.split() == [ip4["address"].split("/")[0]], answer
    stats0 = {e["name"]: e["counters"] for e in daemon.client.get("/v1/stats")["endpoints"]}
    assert ping(a.ns, b4, count=3) and ping(a.ns, b6, count=3)
    stats1 = {e["name"]: e["counters"] for e in daemon.client.get("/v1/stats")["endpoints"]}
    name_a = daemon.name("web")
    assert stats1[name_a]["tx_fast_packets"] - stats0[name_a]["tx_fast_packets"] >= 6  # the eBPF fast path

    ok = a.call(daemon, "CHECK", config=conf(daemon, prevResult=res))
    assert ok.returncode == 0 and ok.doc is None, ok
    # Someone removes the address the runtime was told about: CHECK says so, and repairs nothing.
    run("ip", "-n", a.ns, "addr", "del", ip4["address"], "dev", "eth0")
    bad = a.call(daemon, "CHECK", config=conf(daemon, prevResult=res))
    assert bad.returncode == 1 and bad.doc["code"] == 999, bad
    assert f"address {ip4['address']} is missing on eth0" in bad.doc["details"]
    other = dict(res, ips=[dict(ip4, address="10.151.0.250/24")])
    wrong = a.call(daemon, "CHECK", config=conf(daemon, prevResult=other))
    assert "10.151.0.250/24 of the previous result is not the endpoint's" in wrong.doc["details"]

    for c in (a, b):
        first = c.call(daemon, "DEL")
        assert first.returncode == 0 and first.doc is None, first
        again = c.call(daemon, "DEL")  # idempotent
        assert again.returncode == 0, again
        assert Path(c.path).exists()  # the runtime's namespace stays
        assert "eth0" not in {x["ifname"] for x in _links(c.ns)}
    assert daemon.client.get("/v1/endpoints") == []
    assert daemon.host_veths() == set()


def test_second_interface_and_legacy_version(daemon: DaemonProcess, containers: list[Container]) -> None:
    """A container on the network twice (eth0, net1), result in CNI 0.4.0's form."""
    c = new(daemon, containers, "cc")
    first = c.call(daemon, "ADD")
    second = c.call(daemon, "ADD", ifname="net1", config=conf(daemon, cniVersion="0.4.0"))
    assert first.returncode == 0 and second.returncode == 0, (first, second)
    assert second.doc["cniVersion"] == "0.4.0"
    assert [x["version"] for x in second.doc["ips"]] == ["4", "6"]
    assert daemon.client.get(f"/v1/endpoints/{c.id[:12]}-net1")["ifname"] == "net1"
    assert {"eth0", "net1"} <= {x["ifname"] for x in _links(c.ns)}
    assert c.call(daemon, "DEL", ifname="net1").returncode == 0
    assert "net1" not in {x["ifname"] for x in _links(c.ns)}
    assert "eth0" in {x["ifname"] for x in _links(c.ns)}


def test_errors(daemon: DaemonProcess, containers: list[Container], tmp_path: Path) -> None:
    c = new(daemon, containers, "ce")

    def code(r: Any) -> tuple[int, int, str]:
        return r.returncode, r.doc["code"], r.doc["msg"]

    assert code(c.call(daemon, "ADD", config=conf(daemon, cniVersion="9.9.9")))[:2] == (1, 1)
    assert code(c.call(daemon, "ADD", config={"cniVersion": "1.0.0", "type": "bpfnet"})) == (1, 7, "name: missing")
    rc, num, msg = code(c.call(daemon, "ADD", config=conf(daemon, network="nosuchnet")))
    assert (rc, num) == (1, 7) and "nosuchnet" in msg
    rc, num, msg = code(c.call(daemon, "ADD", config=conf(daemon, socket=str(tmp_path / "none.sock"))))
    assert (rc, num) == (1, 11) and "is it running" in msg  # no daemon: try again later
    rc, num, msg = code(cni("ADD", conf(daemon), container_id=c.id, netns="/run/netns/" + daemon.name("gone")))
    assert (rc, num) == (1, 7) and "does not exist" in msg
    rc, num, msg = code(cni("ADD", conf(daemon), container_id=c.id, netns="/etc/hostname"))
    assert (rc, num) == (1, 7) and "not a network namespace" in msg
    assert code(cni("BOGUS", conf(daemon)))[:2] == (1, 4)
    assert code(cni("ADD", conf(daemon), container_id="", netns=c.path))[:2] == (1, 4)
    assert code(c.call(daemon, "ADD", config=conf(daemon, runtimeConfig={"ips": ["10.152.0.9"]})))[:2] == (1, 7)
    assert code(c.call(daemon, "CHECK"))[:2] == (1, 7)  # CHECK needs prevResult
    assert c.call(daemon, "ADD").returncode == 0  # the same call with a good configuration works
    rc, num, msg = code(c.call(daemon, "ADD"))
    assert (rc, num) == (1, 999) and "already has eth0" in msg
    # Nothing half-made by the refusals: one endpoint, one veth.
    assert len(daemon.client.get("/v1/endpoints")) == 1 and len(daemon.host_veths()) == 1


def test_runtime_config_ips_and_mac(daemon: DaemonProcess, containers: list[Container]) -> None:
    c = new(daemon, containers, "cr")
    r = c.call(daemon, "ADD", config=conf(daemon, runtimeConfig={"ips": ["10.151.0.77/24", "fd00:151::77"],
                                                                 "mac": "02:00:00:00:15:77"}))
    assert r.returncode == 0, r
    assert [x["address"] for x in r.doc["ips"]] == ["10.151.0.77/24", "fd00:151::77/64"]
    assert r.doc["interfaces"][1]["mac"] == "02:00:00:00:15:77"


def test_daemon_restart_keeps_cni_endpoints_and_reclaims_vanished_ones(
        daemon: DaemonProcess, containers: list[Container]) -> None:
    """Containers keep their network across a daemon restart; a container whose namespace
    vanished while the daemon was down gets its addresses back, and nothing of the runtime's
    is deleted."""
    a, b = new(daemon, containers, "rs1"), new(daemon, containers, "rs2")
    ra, rb = a.call(daemon, "ADD"), b.call(daemon, "ADD")
    assert ra.returncode == 0 and rb.returncode == 0
    daemon.stop()
    delete_netns(b.ns)  # the runtime removed this container meanwhile
    daemon.start()
    names = {e["name"]: e for e in daemon.client.get("/v1/endpoints")}
    assert names[a.id[:12]]["state"] == "ready" and b.id[:12] not in names
    assert Path(a.path).exists()
    b4 = rb.doc["ips"][0]["address"].split("/")[0]
    a4 = ra.doc["ips"][0]["address"].split("/")[0]
    assert ping(a.ns, "10.151.0.1") and ping(a.ns, a4)
    assert b4 not in {lease.split("/")[0] for e in names.values() for lease in [e["ipv4"]]}
    ok = a.call(daemon, "CHECK", config=conf(daemon, prevResult=ra.doc))
    assert ok.returncode == 0, ok
    assert b.call(daemon, "DEL").returncode == 0  # the runtime's DEL after the fact: nothing to do


def _links(ns: str) -> list[dict[str, Any]]:
    from helpers import ip_json

    return list(ip_json(ns, "link", "show"))
