"""A test cluster: one etcd and several "hosts", each the managed namespace of its own daemon.

Topology (every piece a namespace this module makes and removes; never the root namespace)::

    <tag>-ul  (the underlay)  bridge ul0 10.77.0.1/24, etcd on 10.77.0.1:2379 (data in a temp dir)
       |  veth per host
    <host tag>  ul 10.77.0.(10+i)/24   <- each daemon's --netns, --advertise-addr 10.77.0.(10+i)

``Etcd`` runs Debian's etcd-server inside the underlay namespace (``nsenter --net=``), stopped by
its PID; ``Cluster.add_host`` wires a namespace to the underlay and starts a daemon with
``--cluster-store etcd://10.77.0.1:2379``. ``in_netns`` runs Python code in another namespace (a
thread that setns()es itself) for tests that talk to etcd directly.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from helpers import (
    SLOWDOWN,
    DaemonFactory,
    DaemonProcess,
    delete_netns,
    make_netns,
    run,
    unique_tag,
)

UNDERLAY = "10.77.0"
ETCD_ADDR = f"{UNDERLAY}.1"
ETCD_PORT = 2379
ETCD_URL = f"etcd://{ETCD_ADDR}:{ETCD_PORT}"
CLONE_NEWNET = 0x40000000
TTL = 5  # the hosts' node lease in seconds: a restart (stop + start until etcd) must fit in it
T = TypeVar("T")


def in_netns(ns: str, fn: Callable[[], T], timeout: float = 60) -> T:
    """FN() on a thread that has entered network namespace NS (setns affects only that thread;
    threads it starts inherit NS)."""
    out: list[Any] = []

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {ns}")
            finally:
                os.close(fd)
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    t.join(timeout * SLOWDOWN)
    if not out:
        raise TimeoutError(f"in_netns({ns}) did not finish within {timeout}s")
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]  # type: ignore[no-any-return]


class Etcd:
    """etcd inside namespace NS on ADDR:ETCD_PORT, data in a temp dir; start/stop/kill by PID."""

    def __init__(self, ns: str, addr: str = ETCD_ADDR) -> None:
        self.ns = ns
        self.addr = addr
        self.data = Path(tempfile.mkdtemp(prefix="bpfnet-etcd-"))
        self.log = self.data.parent / f"{self.data.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://{self.addr}:{ETCD_PORT}"

    def start(self) -> Etcd:
        client = f"http://{self.addr}:{ETCD_PORT}"
        peer = f"http://{self.addr}:2380"
        cmd = ["nsenter", f"--net=/run/netns/{self.ns}", "etcd", "--name", "t", "--data-dir", str(self.data / "d"),
               "--listen-client-urls", client, "--advertise-client-urls", client,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"t={peer}", "--log-level", "warn", "--logger", "zap"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20 * SLOWDOWN
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log.read_text()[-2000:]}")
            r = run("ip", "netns", "exec", self.ns, "etcdctl", f"--endpoints={client}", "endpoint", "health",
                    check=False, timeout=10)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"etcd did not become healthy: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def ctl(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.ns, "etcdctl", f"--endpoints=http://{self.addr}:{ETCD_PORT}",
                   *args).stdout

    def keys(self, prefix: str = "/bpfnet/") -> list[str]:
        return [k for k in self.ctl("get", "--prefix", "--keys-only", prefix).splitlines() if k]

    def wipe(self) -> None:
        self.ctl("del", "--prefix", "/bpfnet/")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        self.log.unlink(missing_ok=True)


class Cluster:
    """The underlay namespace with etcd, and hosts added to it (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        self.tag = unique_tag()
        self.underlay = make_netns(f"{self.tag}-ul")
        ns = self.underlay
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "add", "ul0", "type", "bridge")
        run("ip", "-n", ns, "addr", "add", f"{ETCD_ADDR}/24", "dev", "ul0")
        run("ip", "-n", ns, "link", "set", "ul0", "up")
        self.etcd = Etcd(ns)
        self.factory = DaemonFactory(workdir)
        self.hosts: list[DaemonProcess] = []

    def add_host(self, *args: str, datapath: str = "auto", ttl: int = TTL, start: bool = True) -> DaemonProcess:
        i = len(self.hosts)
        addr = f"{UNDERLAY}.{10 + i}"
        d = self.factory.create("--cluster-store", self.etcd.url, "--advertise-addr", addr,
                                "--node-name", f"h{i}", "--bridge", "none", *args, datapath=datapath,
                                env={"BPFNET_CLUSTER_TTL": str(ttl)})
        make_netns(d.netns)
        run("ip", "link", "add", f"ul{d.tag[-6:]}", "netns", self.underlay, "type", "veth", "peer", "name", "ul",
            "netns", d.netns)
        run("ip", "-n", self.underlay, "link", "set", f"ul{d.tag[-6:]}", "master", "ul0", "up")
        run("ip", "-n", d.netns, "addr", "add", f"{addr}/24", "dev", "ul")
        run("ip", "-n", d.netns, "link", "set", "ul", "up")
        run("ip", "-n", d.netns, "link", "set", "lo", "up")
        d.advertise = addr  # type: ignore[attr-defined]
        self.hosts.append(d)
        if start:
            d.start(timeout=60)
        return d

    def cleanup(self) -> list[str]:
        left = self.factory.cleanup()
        self.etcd.remove()
        delete_netns(self.underlay)
        return left
