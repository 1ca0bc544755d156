"""bpfnet as podman's CNI plugin, with Debian's podman 4.3 and containernetworking-plugins.

One bpfnet daemon (eBPF datapath) and one podman set-up per module. Podman runs with
``nsenter --net`` inside the daemon's managed namespace (so the host side of every
container, and what the chained ``portmap`` adds to the firewall, lives there), with
its own containers.conf (CNI backend, the test's CNI config and plugin dirs, cgroupfs,
file events, ulimits within this machine's hard limits), ``--root``/``--runroot`` in a
temp dir and an offline busybox image. The CNI config chains ``portmap`` after bpfnet.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import CNI_PLUGINS_DIR, cni_cmd
from helpers import DaemonFactory, DaemonProcess, run, wait_until
from runtimes import OutsideDirs, busybox_tar, in_netns, runtime_skip_reason

pytestmark = pytest.mark.kernel

NET, NET2 = "pm", "pm2"
SUBNET4, SUBNET6, SUBNET4_2 = "10.153.0.0/24", "fd00:153::/64", "10.154.0.0/24"
IMAGE = "localhost/bpfnet-busybox:test"
HOST_PORT = 18080
FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end='')"
# What podman and runc create outside the test's dirs (podman's own tmp_dir is the test's): runc's
# state root, libcni's result cache, and the blob info cache containers/image keeps for root
# whatever --root says (podman import writes it).
OUTSIDE = ("/run/runc", "/var/lib/cni/results", "/var/lib/cni", "/run/libpod", "/run/containers",
           "/var/lib/containers/cache/blob-info-cache-v1.boltdb", "/var/lib/containers/cache",
           "/var/lib/containers")


class Podman:
    def __init__(self, d: DaemonProcess, workdir: Path) -> None:
        self.d = d
        self.workdir = workdir
        self.root, self.runroot = workdir / "root", workdir / "runroot"
        self.conf_dir, self.bin_dir = workdir / "cni", workdir / "cni-bin"
        self.conf_dir.mkdir()
        self.bin_dir.mkdir()
        plugin = cni_cmd()
        if len(plugin) == 1:
            (self.bin_dir / "bpfnet").symlink_to(plugin[0])
        else:  # no console script in this environment: the module through this interpreter
            script = self.bin_dir / "bpfnet"
            script.write_text(f"#!/bin/sh\nexec {' '.join(plugin)}\n")
            script.chmod(0o755)
        conf = workdir / "containers.conf"
        conf.write_text(f"""
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{workdir}/events.log"
tmp_dir = "{workdir}/tmp"
[network]
network_backend = "cni"
network_config_dir = "{self.conf_dir}"
cni_plugin_dirs = ["{self.bin_dir}", "{CNI_PLUGINS_DIR}"]
""")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CONTAINERS_CONF": str(conf),
                    "HOME": str(workdir)}
        for name in (NET, NET2):
            self.write_network(name)

    def write_network(self, name: str) -> None:
        plugins: list[dict[str, Any]] = [
            {"type": "bpfnet", "network": name, "socket": str(self.d.sock), "capabilities": {"ips": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]
        doc = {"cniVersion": "1.0.0", "name": name, "plugins": plugins}
        (self.conf_dir / f"{name}.conflist").write_text(json.dumps(doc))

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = in_netns(self.d.netns) + ["podman", "--root", str(self.root), "--runroot", str(self.runroot), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r

    def ids(self) -> set[str]:
        return set(self("ps", "-aq", "--no-trunc").stdout.split())


@pytest.fixture(scope="module")
def podman(module_daemons: DaemonFactory) -> Iterator[Podman]:
    reason = runtime_skip_reason("podman", "nsenter", "iptables")
    if reason:
        pytest.skip(reason)
    outside = OutsideDirs(*OUTSIDE)
    d = module_daemons.start("--bridge", "none", datapath="auto")
    d.client.post("/v1/networks", {"name": NET, "subnet4": SUBNET4, "subnet6": SUBNET6})
    d.client.post("/v1/networks", {"name": NET2, "subnet4": SUBNET4_2})
    # Short: conmon's attach socket lives under --runroot, and sun_path holds 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="bpfnet-pm-", dir="/tmp"))
    p = Podman(d, workdir)
    problems: list[str] = []
    try:
        r = p("import", str(busybox_tar(workdir / "busybox.tar")), IMAGE, check=False)
        if r.returncode != 0:
            pytest.fail(f"podman cannot start here: podman import: {r.stderr}")
        yield p
    finally:
        ids = p.ids() if p.root.exists() else set()
        p("rm", "-fa", "-t", "0", check=False)
        p("rmi", "-af", check=False)
        problems += [f"container {i} survived podman rm -fa" for i in p.ids()] if p.root.exists() else []
        problems += outside.leftovers(ids)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(workdir) in line.split()[4]]
        for m in reversed(mounts):  # podman unmounts on rm; anything left is unmounted, then reported
            run("umount", "-l", m, check=False)
        problems += [f"mount left: {m}" for m in mounts]
        shutil.rmtree(workdir, ignore_errors=True)
        problems += outside.cleanup()
    assert not problems, problems


def container_net(p: Podman, name: str, net: str = NET) -> dict[str, Any]:
    doc = json.loads(p("inspect", name).stdout)[0]
    result: dict[str, Any] = doc["NetworkSettings"]["Networks"][net]
    return result


def stats(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["counters"] for e in d.client.get("/v1/stats")["endpoints"]}


def test_two_containers_ping_counters_metrics(podman: Podman) -> None:
    p, d = podman, podman.d
    a, b = d.name("p1"), d.name("p2")
    for name in (a, b):
        p("run", "-d", "--name", name, "--network", NET, IMAGE, "sleep", "600")
    eps = {e["name"]: e for e in d.client.get("/v1/endpoints")}
    # Endpoints named after the containers (podman passes K8S_POD_NAME), owned by their ids.
    assert set(eps) == {a, b}, eps
    ids = {name: json.loads(p("inspect", name).stdout)[0]["Id"] for name in (a, b)}
    for name in (a, b):
        assert eps[name]["owner"] == f"cni:{ids[name]}:eth0"
        net = container_net(p, name)
        # podman inspect shows what bpfnet assigned
        assert f"{net['IPAddress']}/{net['IPPrefixLen']}" == eps[name]["ipv4"]
        assert f"{net['GlobalIPv6Address']}/{net['GlobalIPv6PrefixLen']}" == eps[name]["ipv6"][0]
        assert net["MacAddress"] == eps[name]["mac"]
    b4, b6 = eps[b]["ipv4"].split("/")[0], eps[b]["ipv6"][0].split("/")[0]
    before = stats(d)
    for dst in (b4, b6):
        r = p("exec", a, "ping", "-c", "3", "-W", "2", dst, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    after = stats(d)
    for name in (a, b):  # both ways through the eBPF fast path
        assert after[name]["tx_fast_packets"] - before[name]["tx_fast_packets"] >= 6, (name, before, after)
        assert after[name]["rx_fast_packets"] - before[name]["rx_fast_packets"] >= 6, (name, before, after)
    url = d.client.get("/v1/info")["metrics_url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    series = [x for x in text.splitlines() if x.startswith("bpfnet_endpoint_transmit_path_packets_total{")
              and f'endpoint="{a}"' in x and f'network="{NET}"' in x and 'path="fast"' in x]
    assert len(series) == 1 and float(series[0].split()[-1]) >= 6, series
    # DNS: podman writes the resolver the CNI result names (the network's gateway) into the
    # container's resolv.conf, and bpfnet's resolver knows the other container by its name
    gateway = eps[a]["gateway4"]
    assert f"nameserver {gateway}" in p("exec", a, "cat", "/etc/resolv.conf").stdout
    r = p("exec", a, "nslookup", b, gateway, check=False)
    assert b4 in r.stdout, r.stdout + r.stderr


def test_network_connect_disconnect(podman: Podman) -> None:
    """podman network connect/disconnect: a second interface from another bpfnet network."""
    p, d = podman, podman.d
    name = d.name("p3")
    p("run", "-d", "--name", name, "--network", NET, IMAGE, "sleep", "600")
    p("network", "connect", NET2, name)
    eps = [e for e in d.client.get("/v1/endpoints") if e["network"] == NET2]
    assert len(eps) == 1 and eps[0]["ifname"] == "eth1" and eps[0]["ipv4"].startswith("10.154.0."), eps
    addrs = p("exec", name, "ip", "-4", "-o", "addr", "show", "eth1").stdout
    assert eps[0]["ipv4"] in addrs
    p("network", "disconnect", NET2, name)
    assert [e for e in d.client.get("/v1/endpoints") if e["network"] == NET2] == []
    assert "eth1" not in p("exec", name, "ip", "-o", "link").stdout
    p("rm", "-f", "-t", "0", name)


def test_published_port_through_chained_portmap(podman: Podman) -> None:
    """-p through CNI's portmap, chained after bpfnet: the request to the host port reaches the container."""
    p, d = podman, podman.d
    name = d.name("web")
    p("run", "-d", "--name", name, "--network", NET, "-p", f"{HOST_PORT}:80", IMAGE,
      "httpd", "-f", "-p", "80", "-h", "/www")
    cid = json.loads(p("inspect", name).stdout)[0]["Id"]
    gateway = d.client.get(f"/v1/endpoints/{name}")["gateway4"]

    def fetch() -> str:
        r = run("ip", "netns", "exec", d.netns, sys.executable, "-c", FETCH,
                f"http://{gateway}:{HOST_PORT}/index.html", check=False)
        return r.stdout

    assert wait_until(fetch, timeout=20, what="the published port") == "hello from bpfnet\n"
    assert cid in run("ip", "netns", "exec", d.netns, "iptables-save", "-t", "nat").stdout  # portmap's rules
    p("rm", "-f", "-t", "0", name)
    assert cid not in run("ip", "netns", "exec", d.netns, "iptables-save", "-t", "nat").stdout


def test_rm_leaves_nothing(podman: Podman) -> None:
    p, d = podman, podman.d
    names = [d.name(s) for s in ("r1", "r2")]
    for name in names:
        p("run", "-d", "--name", name, "--network", NET, IMAGE, "sleep", "600")
    sandboxes = {d.client.get(f"/v1/endpoints/{n}")["netns"] for n in names}
    ids = p.ids()
    p("rm", "-fa", "-t", "0")
    assert d.client.get("/v1/endpoints") == []
    assert d.host_veths() == set()
    assert not any(Path(s).exists() for s in sandboxes)  # podman removed its namespaces
    assert OutsideDirs(*OUTSIDE).leftovers(ids) == []
    for net in (NET, NET2):
        assert d.client.get(f"/v1/networks/{net}")["ipam"]["ipv4"]["in_use"] == 0
