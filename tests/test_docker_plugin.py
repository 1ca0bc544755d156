"""bpfnet as Docker's network and IPAM driver, with the real dockerd from Debian.

One bpfnet daemon (eBPF datapath, ``--docker-plugin <its tag>``) and one dockerd per module.
dockerd runs with ``nsenter --net`` inside the bpfnet daemon's managed namespace, with its
own data root, exec root, socket, pidfile and config file in a temp dir, ``--bridge=none
--iptables=false --ip6tables=false``, and is stopped by its PID. It finds the plugin in
/run/docker/plugins (it has no flag for another directory), where the daemon's socket is
named after the test's unique tag. The image is busybox-static, imported offline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DaemonFactory, DaemonProcess, run, wait_until
from runtimes import OutsideDirs, busybox_tar, in_netns, runtime_skip_reason

pytestmark = pytest.mark.kernel

IMAGE = "bpfnet-busybox:test"
SUBNET4, SUBNET6 = "10.155.0.0/24", "fd00:155::/64"
PLUGIN_DIR = Path("/run/docker/plugins")
# Made outside the temp dir: the plugin socket's directories (bpfnet's), the shims' socket directory
# (containerd's, fixed), the engine's identity key (dockerd writes it to /etc/docker whatever its
# roots are).
OUTSIDE = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd", "/etc/docker/key.json")


class Docker:
    def __init__(self, d: DaemonProcess, workdir: Path) -> None:
        self.d = d
        self.workdir = workdir
        self.plugin = d.tag  # unique per module: the plugin and its socket are named after the tag
        self.socket = PLUGIN_DIR / f"{self.plugin}.sock"
        self.host = f"unix://{workdir}/docker.sock"
        self.pidfile = workdir / "docker.pid"
        self.log = workdir / "dockerd.log"
        (workdir / "daemon.json").write_text("{}")
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DOCKER_CONFIG": str(workdir / "cli"),
                    "HOME": str(workdir)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        w = self.workdir
        cmd = in_netns(self.d.netns) + [
            "dockerd", "--data-root", str(w / "data"), "--exec-root", str(w / "exec"), "-H", self.host,
            "--pidfile", str(self.pidfile), "--config-file", str(w / "daemon.json"),
            "--bridge=none", "--iptables=false", "--ip6tables=false"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            if self("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.3)
        raise AssertionError(f"dockerd did not answer within 90 s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the PID dockerd wrote (nsenter execs it: the same process), SIGKILL after 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pid = int(self.pidfile.read_text()) if self.pidfile.exists() else self.proc.pid
        assert pid == self.proc.pid, (pid, self.proc.pid)
        os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["docker", "-H", self.host, *args], capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr}\n{self.log_tail()}")
        return r

    def inspect(self, what: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self("inspect", what).stdout)[0]
        return doc

    def network(self, name: str, *opts: str) -> str:
        """docker network create -d bpfnet --ipam-driver bpfnet ...; Docker's network id."""
        return self("network", "create", "-d", self.plugin, "--ipam-driver", self.plugin, *opts, name).stdout.strip()


@pytest.fixture(scope="module")
def docker(module_daemons: DaemonFactory) -> Iterator[Docker]:
    reason = runtime_skip_reason("dockerd", "docker", "containerd", "runc", "nsenter")
    if reason:
        pytest.skip(reason)
    outside = OutsideDirs(*OUTSIDE)
    d = module_daemons.create("--bridge", "none", datapath="auto")
    d.args += ["--docker-plugin", d.tag]
    d.start()
    # Short: containerd's and the containers' sockets live under the exec root (sun_path is 107 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="bpfnet-dk-", dir="/tmp"))
    dk = Docker(d, workdir)
    problems: list[str] = []
    try:
        assert dk.socket.is_socket()
        dk.start()
        dk("import", str(busybox_tar(workdir / "busybox.tar")), IMAGE)
        yield dk
    finally:
        if dk.proc is not None and dk.proc.poll() is None:
            ids = dk("ps", "-aq", check=False).stdout.split()
            if ids:
                dk("rm", "-f", *ids, check=False)
            nets = [n for n in dk("network", "ls", "-q", "--filter", f"driver={dk.plugin}", check=False).stdout.split()]
            if nets:
                dk("network", "rm", *nets, check=False)
            left = dk("ps", "-aq", check=False).stdout.split()
            problems += [f"container {i} survived docker rm -f" for i in left]
        dk.stop()
        d.stop()  # SIGTERM: the plugin's socket must go with the daemon
        if dk.socket.exists():
            problems.append(f"{dk.socket} left after the bpfnet daemon stopped")
            dk.socket.unlink()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                  if str(workdir) in line.split()[4]]
        for m in reversed(mounts):  # dockerd unmounts what it mounted; anything left is unmounted, then reported
            run("umount", "-l", m, check=False)
        problems += [f"mount left: {m}" for m in mounts]
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
        problems += outside.cleanup()
    assert not problems, problems


def bpfnet_eps(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {e["owner"]: e for e in d.client.get("/v1/endpoints")}


def stats(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    return {e["name"]: e["counters"] for e in d.client.get("/v1/stats")["endpoints"]}


def ping(dk: Docker, container: str, dst: str, count: int = 3) -> bool:
    return dk("exec", container, "ping", "-c", str(count), "-W", "2", dst, check=False).returncode == 0


def test_network_containers_ping_inspect_counters(docker: Docker) -> None:
    dk, d = docker, docker.d
    net = d.name("net")
    nid = dk.network(net, "--subnet", SUBNET4, "--ipv6", "--subnet", SUBNET6)
    bnet = d.client.get(f"/v1/networks/{nid[:12]}")  # bpfnet's network, named after Docker's id
    assert bnet["bridge"] == f"br-{nid[:12]}" and bnet["icc"] and bnet["ipv6"]
    assert bnet["ipam"]["ipv4"]["subnet"] == SUBNET4 and bnet["ipam"]["ipv6"]["subnet"] == SUBNET6
    a, b = d.name("a"), d.name("b")
    for name in (a, b):
        dk("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "600")
    eps = bpfnet_eps(d)
    assert len(eps) == 2
    for name in (a, b):
        info = dk.inspect(name)["NetworkSettings"]["Networks"][net]
        ep = eps[f"docker:{info['EndpointID']}"]
        # docker inspect shows the addresses bpfnet's IPAM handed out, and the MAC bpfnet gave
        assert f"{info['IPAddress']}/{info['IPPrefixLen']}" == ep["ipv4"]
        assert f"{info['GlobalIPv6Address']}/{info['GlobalIPv6PrefixLen']}" == ep["ipv6"][0]
        assert info["MacAddress"] == ep["mac"] and info["Gateway"] == ep["gateway4"]
        assert ep["name"] == info["EndpointID"][:12] and ep["handoff"] and ep["state"] == "ready"
        assert ep["netns"] == dk.inspect(name)["NetworkSettings"]["SandboxKey"]  # where dockerd moved it
        inside = dk("exec", name, "ip", "-o", "addr", "show", "eth0").stdout
        assert ep["ipv4"] in inside and ep["ipv6"][0] in inside
    ib = dk.inspect(b)["NetworkSettings"]["Networks"][net]
    ea = eps[f"docker:{dk.inspect(a)['NetworkSettings']['Networks'][net]['EndpointID']}"]
    before = stats(d)
    assert ping(dk, a, ib["IPAddress"]) and ping(dk, a, ib["GlobalIPv6Address"])
    after = stats(d)
    assert after[ea["name"]]["tx_fast_packets"] - before[ea["name"]]["tx_fast_packets"] >= 6, (before, after)
    assert ping(dk, a, ea["gateway4"], count=1)  # the gateway, through the kernel
    assert ping(dk, a, b, count=1)  # by name: Docker's embedded DNS
    url = d.client.get("/v1/info")["metrics_url"]
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    series = [x for x in text.splitlines() if x.startswith("bpfnet_endpoint_transmit_path_packets_total{")
              and f'endpoint="{ea["name"]}"' in x and 'path="fast"' in x]
    assert len(series) == 1 and float(series[0].split()[-1]) >= 6, series

    # disconnect / connect: the endpoint goes and comes back, with an address from bpfnet's IPAM
    dk("network", "disconnect", net, b)
    assert len(bpfnet_eps(d)) == 1 and len(d.host_veths()) == 1
    dk("network", "connect", net, b)
    ib = dk.inspect(b)["NetworkSettings"]["Networks"][net]
    assert f"docker:{ib['EndpointID']}" in bpfnet_eps(d)
    assert ping(dk, a, ib["IPAddress"])

    # bpfnet restarts: running containers stay connected (Docker does not replay Join)
    d.restart()
    assert dk.socket.is_socket()
    assert all(e["state"] == "ready" for e in bpfnet_eps(d).values())
    assert ping(dk, a, ib["IPAddress"]) and ping(dk, b, ea["ipv4"].split("/")[0])
    after_restart = stats(d)
    assert ping(dk, a, ib["IPAddress"])
    assert stats(d)[ea["name"]]["tx_fast_packets"] > after_restart[ea["name"]]["tx_fast_packets"]

    dk("rm", "-f", a, b)
    assert bpfnet_eps(d) == {} and d.host_veths() == set()
    assert d.client.get(f"/v1/networks/{nid[:12]}")["ipam"]["ipv4"]["in_use"] == 0
    dk("network", "rm", net)
    assert d.client.get("/v1/networks") == []
    assert f"br-{nid[:12]}" not in d.links()


def test_icc_false(docker: Docker) -> None:
    dk, d = docker, docker.d
    net = d.name("iso")
    nid = dk.network(net, "--subnet", "10.156.0.0/24", "-o", "icc=false")
    assert d.client.get(f"/v1/networks/{nid[:12]}")["icc"] is False
    a, b = d.name("ia"), d.name("ib")
    for name in (a, b):
        dk("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "600")
    ib = dk.inspect(b)["NetworkSettings"]["Networks"][net]
    assert not ping(dk, a, ib["IPAddress"], count=2)
    assert ping(dk, a, ib["Gateway"], count=1)
    dk("rm", "-f", a, b)
    dk("network", "rm", net)


def test_refusals_are_docker_errors(docker: Docker) -> None:
    dk, d = docker, docker.d
    r = dk("network", "create", "-d", dk.plugin, "--ipam-driver", dk.plugin, d.name("nosub"), check=False)
    assert r.returncode != 0 and "needs --subnet" in r.stderr
    r = dk("network", "create", "-d", dk.plugin, "--ipam-driver", dk.plugin, "--subnet", "10.157.0.0/24",
           "-o", "color=blue", d.name("badopt"), check=False)
    assert r.returncode != 0 and "not an option of bpfnet's driver" in r.stderr
    assert d.client.get("/v1/networks") == [] and dk("network", "ls", "-q", "--filter",
                                                        f"driver={dk.plugin}").stdout.strip() == ""


def test_dockerd_restart_with_live_containers_leaves_nothing(docker: Docker) -> None:
    dk, d = docker, docker.d
    net = d.name("rs")
    nid = dk.network(net, "--subnet", "10.158.0.0/24")
    for name in (d.name("r1"), d.name("r2")):
        dk("run", "-d", "--name", name, "--network", net, IMAGE, "sleep", "600")
    assert len(bpfnet_eps(d)) == 2
    dk.stop()  # stops the containers, which leave the network
    wait_until(lambda: bpfnet_eps(d) == {}, timeout=30, what="the endpoints to go with dockerd's containers")
    assert d.host_veths() == set()
    dk.start()
    r1 = d.name("r1")
    dk("start", r1)
    info = dk.inspect(r1)["NetworkSettings"]["Networks"][net]
    assert f"docker:{info['EndpointID']}" in bpfnet_eps(d)
    assert ping(dk, r1, info["Gateway"], count=1)
    dk("rm", "-f", r1, d.name("r2"))
    dk("network", "rm", net)
    assert bpfnet_eps(d) == {} and d.host_veths() == set()
    assert d.client.get("/v1/networks") == [] and f"br-{nid[:12]}" not in d.links()


def test_run_p_publishes_through_bpfnet(docker: Docker) -> None:
    """`docker run -p`: dockerd hands the bindings to the driver, bpfnet publishes them as its
    own published ports (nftables DNAT in the managed namespace), and `docker rm` takes them."""
    dk, d = docker, docker.d
    net = d.name("pub")
    dk.network(net, "--subnet", "10.159.0.0/24")
    web = d.name("web")
    run("ip", "-n", d.netns, "link", "set", "lo", "up")  # the host's loopback, for 127.0.0.1::81
    # busybox's nc answers one line per connection (-ll: for ever)
    dk("run", "-d", "--name", web, "--network", net, "-p", "18080:80", "-p", "127.0.0.1::81",
       "-p", "18090-18099:82/udp", IMAGE, "sh", "-c",
       "nc -ll -p 80 -e echo hello & nc -ll -p 81 -e echo hi81 & sleep 600")
    ep = next(iter(bpfnet_eps(d).values()))
    published = {(p["proto"], p["endpoint_port"]): p for p in ep["published"]}
    assert published[("tcp", 80)]["host_port"] == 18080 and published[("tcp", 80)]["host_ip"] is None
    assert published[("tcp", 81)]["host_ip"] == "127.0.0.1" and published[("tcp", 81)]["host_port"] >= 49153
    assert 18090 <= published[("udp", 82)]["host_port"] <= 18099

    def ask(port: int) -> str:
        # from the host itself (the managed namespace), as `curl localhost:PORT` next to dockerd
        r = run("ip", "netns", "exec", d.netns, "busybox", "nc", "-w", "2", "127.0.0.1", str(port), check=False)
        return r.stdout.strip()

    wait_until(lambda: ask(18080) == "hello", timeout=20, what="the published port 18080 to answer")
    assert ask(published[("tcp", 81)]["host_port"]) == "hi81"
    # a port already published is refused in Docker's words, and nothing is made
    other = d.name("web2")
    r = dk("run", "-d", "--name", other, "--network", net, "-p", "18080:80", IMAGE, "sleep", "60", check=False)
    assert r.returncode != 0 and "already published" in r.stderr, r.stderr
    dk("rm", "-f", other, check=False)
    assert len(bpfnet_eps(d)) == 1
    dk("rm", "-f", web)
    assert bpfnet_eps(d) == {}
    assert d.client.get("/v1/info")["outside"]["published_ports"] == 0
    dk("network", "rm", net)
