"""Topologies under test: a direct veth pair, and bpfnet daemons per datapath mode.

Boundary: builds namespaces and links (direct pair) or drives a real
``bpfnet daemon`` through its API (``--netns``, temporary ``--state-dir``,
unix ``-H``), and hands back the two endpoints a measurement needs as a
``Pair``. Tearing down is ``close()`` (also registered with ``bench.env``
clean-up): stop the daemon by pid, ``bpfnet daemon --cleanup --netns ...``,
delete the run's namespaces.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import env

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Host:
    """One endpoint: the namespace and its eth0."""

    ns: str
    mac: str
    ipv4: str
    ipv6: str
    ifname: str = "eth0"


@dataclass(frozen=True)
class Pair:
    """Sender and receiver of one variant; traffic goes sender -> receiver."""

    variant: str
    sender: Host
    receiver: Host


class DirectPair:
    """Variant "direct": one veth pair straight between two namespaces (the limit)."""

    variant = "direct"

    def __init__(self) -> None:
        self.pair: Pair | None = None

    def start(self) -> Pair:
        s, r = env.add_netns(env.ns_name("d-s")), env.add_netns(env.ns_name("d-r"))
        # Created inside s, peer moved to r at once: the root namespace never sees it.
        env.run(["ip", "-n", s, "link", "add", "eth0", "address", "02:42:0a:fe:00:02", "type", "veth",
                 "peer", "name", "eth0", "address", "02:42:0a:fe:00:03", "netns", r])
        hosts = []
        for ns, last in ((s, 2), (r, 3)):
            for key in ("all", "default"):
                env.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"])
            env.run(["ip", "-n", ns, "addr", "add", f"10.254.0.{last}/24", "dev", "eth0"])
            env.run(["ip", "-n", ns, "addr", "add", f"fd00:b0:fe::{last}/64", "dev", "eth0", "nodad"])
            env.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            hosts.append(Host(ns, f"02:42:0a:fe:00:0{last}", f"10.254.0.{last}", f"fd00:b0:fe::{last}"))
        self.pair = Pair(self.variant, hosts[0], hosts[1])
        return self.pair

    def close(self) -> None:
        if self.pair is not None:
            env.remove_namespaces([self.pair.sender.ns, self.pair.receiver.ns])
            self.pair = None


class BarePeer:
    """Variant "bare-peer": the issue's bare bpf_redirect_peer prototype, the floor of a tc design.

    Sender and receiver namespaces each hang off a host namespace by a veth
    pair (as bpfnet endpoints do); on each host end a 4-instruction program
    at tc ingress redirect-peers every packet to the other endpoint's eth0
    (``bench.bare_prog``). No bridge, maps, policy or counters.
    """

    variant = "bare-peer"

    def __init__(self) -> None:
        self.pair: Pair | None = None
        self.namespaces: list[str] = []

    def start(self) -> Pair:
        h = env.add_netns(env.ns_name("bp-h"))
        hosts = []
        for role, last in (("s", 2), ("r", 3)):
            ns = env.add_netns(env.ns_name(f"bp-{role}"))
            mac = f"02:42:0a:fd:00:0{last}"
            env.run(["ip", "-n", ns, "link", "add", "eth0", "address", mac, "type", "veth",
                     "peer", "name", f"h{role}", "netns", h])
            for key in ("all", "default"):
                env.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"])
            env.run(["ip", "-n", ns, "addr", "add", f"10.253.0.{last}/24", "dev", "eth0"])
            env.run(["ip", "-n", ns, "addr", "add", f"fd00:b0:fd::{last}/64", "dev", "eth0", "nodad"])
            env.run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            env.run(["ip", "-n", h, "link", "set", f"h{role}", "up"])
            hosts.append(Host(ns, mac, f"10.253.0.{last}", f"fd00:b0:fd::{last}"))
            self.namespaces.append(ns)
        self.namespaces.append(h)
        env.run([env.PYTHON, "-m", "bench.bare_prog", h, "hs", "hr"])
        self.pair = Pair(self.variant, hosts[0], hosts[1])
        return self.pair

    def close(self) -> None:
        env.remove_namespaces(self.namespaces)
        self.namespaces = []


class DaemonError(RuntimeError):
    pass


class BpfnetDaemon:
    """A ``bpfnet daemon`` managing a fresh namespace, with the requested datapath.

    ``mode`` is what the daemon reports (``GET /v1/info`` datapath.mode) once
    started; it can differ from ``requested`` when the daemon or kernel does
    not offer that mode, and callers must check.
    The daemon runs through ``bench.daemon_shim`` (see there: optional
    cProfile of endpoint add/remove with ``profile=True``, and --datapath
    wiring while the daemon lacks it).
    """

    def __init__(self, tag: str, requested: str, v6_prefix: str, profile: bool = False,
                 extra: tuple[str, ...] = ()) -> None:
        self.tag = tag
        self.extra = extra  # more daemon flags, e.g. ("--datapath-attach", "tc")
        self.requested = requested
        self.v6_prefix = v6_prefix
        self.profile = profile
        self.netns = env.ns_name(tag)
        self.dir = Path(env.tmpdir(tag))
        self.sock = f"unix://{self.dir}/api.sock"
        self.log_path = self.dir / "daemon.log"
        self.profile_prefix = self.dir / "endpoint"
        self.profile_gate = self.dir / "endpoint.on"  # profiling is on while it exists
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.client: Any = None
        self.endpoints: list[str] = []
        self._closed = False
        env.on_cleanup(self.close)

    @property
    def mode(self) -> str:
        return str(self.info.get("datapath", {}).get("mode", "?"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _daemon_args(self, extra: list[str]) -> list[str]:
        return ["--netns", self.netns, "--state-dir", str(self.dir / "state"), "--log-level", "warning",
                *extra]

    def start(self, timeout: float = 120.0) -> None:
        from bpfnet.client import Client, ClientError

        args = self._daemon_args(["-H", self.sock, "--metrics-addr", "127.0.0.1:0", "--datapath",
                                  self.requested, "--ipv6", "--fixed-cidr-v6", self.v6_prefix,
                                  *self.extra])
        cmd = [env.PYTHON, "-m", "bench.daemon_shim"]
        if self.profile:
            cmd += ["--profile", str(self.profile_prefix)]
        out = self.log_path.open("wb")
        self.proc = env.spawn(cmd + args, stdout=out, env=_environ())
        out.close()
        self.client = Client(self.sock, timeout=120.0)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DaemonError(f"bpfnet daemon ({self.requested}) exited {self.proc.returncode}: "
                                  f"{self.log_tail()}")
            try:
                self.info = self.client.get("/v1/info")
                break
            except ClientError:
                if time.monotonic() > deadline:
                    raise DaemonError(f"bpfnet daemon ({self.requested}) did not answer: "
                                      f"{self.log_tail()}") from None
                time.sleep(0.1)
        log.info("daemon %s up: requested %s, mode %s, pid %d", self.tag, self.requested, self.mode,
                 self.pid)

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def endpoint_name(self, i: int) -> str:
        return env.ns_name(f"{self.tag}-e{i}")

    def add_endpoint(self, name: str) -> Host:
        ep = self.client.post("/v1/endpoints", {"name": name})
        self.endpoints.append(name)
        return host_of(ep)

    def remove_endpoint(self, name: str) -> None:
        self.client.delete(f"/v1/endpoints/{name}")
        self.endpoints.remove(name)

    def pair(self, variant: str) -> Pair:
        """Two fresh endpoints (the first two of this daemon)."""
        a = self.add_endpoint(self.endpoint_name(len(self.endpoints)))
        b = self.add_endpoint(self.endpoint_name(len(self.endpoints)))
        return Pair(variant, a, b)

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def close(self) -> None:
        """Stop the daemon (SIGTERM by pid), --cleanup its BPF state, delete its namespaces."""
        if self._closed:
            return
        self._closed = True
        if self.proc is not None:
            env.stop(self.proc, signal.SIGTERM, timeout=20)
        cleanup_sock = f"unix://{self.dir}/cleanup.sock"
        r = subprocess.run([env.PYTHON, "-m", "bench.daemon_shim", "--cleanup", "--datapath", self.requested,
                            *self._daemon_args(["-H", cleanup_sock, "--metrics-addr", "127.0.0.1:0"])],
                           capture_output=True, text=True, timeout=120, check=False, env=_environ())
        if r.returncode != 0:
            log.warning("bpfnet daemon --cleanup (%s) failed: %s", self.tag, r.stderr.strip()[-300:])
        prefix = env.ns_name(f"{self.tag}-")
        env.remove_namespaces([n for n in env.our_namespaces() if n.startswith(prefix)] + [self.netns])
        # the endpoints' DNS files (bpfnet.dns): endpoints left at SIGTERM keep theirs, as they keep their veths
        for files in Path("/etc/netns").glob(f"{prefix}*"):
            shutil.rmtree(files, ignore_errors=True)


def _environ() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def host_of(ep: dict[str, Any]) -> Host:
    """A Host from an endpoint object of the API."""
    v6 = ep.get("ipv6") or []
    return Host(ns=ep["netns"], mac=ep["mac"], ipv4=ep["ipv4"].split("/")[0],
                ipv6=v6[0].split("/")[0] if v6 else "")
