"""Shared test helpers: a real bpfnet daemon process and kernel inspection.

Everything a test makes is named after one random tag ``bpfnet-t<hex>``: the
daemon's managed namespace is the tag itself and endpoint / adopted namespaces
are ``<tag>-<suffix>`` (see ``DaemonProcess.name``). Cleanup therefore deletes
every namespace whose name starts with the tag, and nothing else; the root
namespace is only ever read.

Typical use (fixtures in conftest.py do this for you)::

    with DaemonFactory(tmp_path) as daemons:
        d = daemons.start("--bip", "172.30.0.1/16")
        ep = d.client.post("/v1/endpoints", {"name": d.name("a")})
        assert ping(ep["netns"], "172.30.0.1")
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from bpfnet.client import Client, ClientError

ROOT = Path(__file__).resolve().parent.parent
BPFNET = str(ROOT / ".venv" / "bin" / "bpfnet")
if not Path(BPFNET).exists():  # running from another venv: use this interpreter's module
    BPFNET = ""
NETNS_DIR = Path("/run/netns")
# Multiplies the waits below: vagrant/run-kernel sets it under qemu's CPU
# emulation (TCG), where compiling the datapath alone takes longer than 30 s.
SLOWDOWN = float(os.environ.get("BPFNET_TEST_SLOWDOWN", "1"))
TAG_PREFIX = "bpfnet-t"


def bpfnet_cmd() -> list[str]:
    return [BPFNET] if BPFNET else [sys.executable, "-m", "bpfnet"]


def unique_tag() -> str:
    """A fresh name prefix, e.g. bpfnet-t3f9a1c (short: namespace names end up in logs and argv)."""
    return f"{TAG_PREFIX}{secrets.token_hex(3)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def is_root() -> bool:
    return os.geteuid() == 0


# kernel inspection (read-only unless the name says otherwise) -------------
def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=check, timeout=timeout * SLOWDOWN)


def netns_list() -> set[str]:
    """Names under /run/netns (what ``ip netns list`` shows)."""
    try:
        return {p.name for p in NETNS_DIR.iterdir()}
    except FileNotFoundError:
        return set()


def netns_with_prefix(prefix: str) -> set[str]:
    return {n for n in netns_list() if n == prefix or n.startswith(prefix + "-")}


def ip_json(ns: str | None, *args: str) -> Any:
    cmd = ["ip"] + (["-n", ns] if ns else []) + ["-j", *args]
    out = run(*cmd).stdout
    return json.loads(out) if out.strip() else []


def link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in ip_json(ns, "link", "show")}


def addresses(ns: str, dev: str, family: str = "") -> list[dict[str, Any]]:
    """addr_info entries of DEV in NS (family "-4", "-6" or "" for both)."""
    args = ([family] if family else []) + ["addr", "show", "dev", dev]
    data = ip_json(ns, *args)
    return data[0]["addr_info"] if data else []


def address_set(ns: str, dev: str) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in addresses(ns, dev)}


def sysctl(ns: str, key: str) -> str:
    """Read /proc/sys/KEY (slash separated) inside NS."""
    return run("ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}").stdout.strip()


def ping(ns: str, address: str, count: int = 1, wait: float = 2) -> bool:
    r = run("ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", str(wait), "-q", address,
            check=False)
    return r.returncode == 0


def delete_netns(name: str) -> None:
    """ip netns del NAME; missing is fine."""
    if name in netns_list():
        run("ip", "netns", "del", name, check=False)


# the daemon ---------------------------------------------------------------
class DaemonError(RuntimeError):
    pass


class DaemonProcess:
    """One ``bpfnet daemon`` process managing its own namespace (the tag).

    start()/stop()/kill()/restart() keep the namespace and state dir, so a
    restarted daemon finds what the previous one left; cleanup() removes
    everything whose name starts with the tag.
    """

    def __init__(self, tag: str, workdir: Path, args: Sequence[str] = (), *, tcp: bool = False,
                 datapath: str | None = "bridge", env: dict[str, str] | None = None) -> None:
        self.tag = tag
        self.netns = tag
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.state_dir = workdir / "state"
        # sun_path holds 107 bytes: deep pytest tmp dirs do not fit, so fall back to a short dir
        self._sock_dir = workdir if len(str(workdir)) < 80 else Path(tempfile.mkdtemp(prefix="bpfnet-s", dir="/tmp"))
        self.sock = self._sock_dir / "bpfnet.sock"
        self.host = f"unix://{self.sock}"
        self.tcp_port = free_port() if tcp else None
        self.tcp_host = f"tcp://127.0.0.1:{self.tcp_port}" if tcp else None
        self.args = list(args)
        self.datapath = datapath
        self.env = dict(env or {})
        self.log_path = workdir / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = Client(self.host, timeout=60)
        self.starts = 0

    # naming
    def name(self, suffix: str) -> str:
        """A name owned by this daemon's tag (endpoint and namespace names)."""
        return f"{self.tag}-{suffix}"

    def command(self) -> list[str]:
        cmd = bpfnet_cmd() + ["daemon", "--netns", self.netns, "--state-dir", str(self.state_dir),
                              "-H", self.host, "--metrics-addr", "127.0.0.1:0", "--log-level", "debug"]
        if self.tcp_host:
            cmd += ["-H", self.tcp_host]
        if self.datapath:
            cmd += ["--datapath", self.datapath]
        # The suite's forced modes (make test runs the datapath tests once more with
        # BPFNET_TEST_ATTACH=tc: the cls_bpf fallback); a test's own flag wins.
        for env, flag in (("BPFNET_TEST_ATTACH", "--datapath-attach"),
                          ("BPFNET_TEST_ENDPOINT_DEVICE", "--endpoint-device")):
            if os.environ.get(env) and flag not in self.args:
                cmd += [flag, os.environ[env]]
        return cmd + self.args

    # lifecycle
    def start(self, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 30) -> DaemonProcess:
        """Spawn the daemon and wait until it answers.

        ENV is added for this start only; BPFNET_DEBUG_PAUSE is never inherited from the test's own
        environment, so a restart without ENV runs without it.
        """
        if self.running():
            raise DaemonError("daemon already running")
        full_env = {k: v for k, v in os.environ.items() if k != "BPFNET_DEBUG_PAUSE"}
        full_env.update({**self.env, **(env or {})})
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n===== start {self.starts}: {' '.join(self.command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                         stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        timeout *= SLOWDOWN
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise DaemonError(f"daemon exited with status {code}:\n{self.log_tail()}")
            try:
                Client(self.host, timeout=2).get("/v1/info")
                return
            except ClientError:
                time.sleep(0.05)
        raise DaemonError(f"daemon did not answer on {self.host} within {timeout}s:\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not exit. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to clean anything up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def restart(self, env: dict[str, str] | None = None) -> DaemonProcess:
        self.stop()
        return self.start(env=env)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # talking to it
    def cli(self, *args: str, host: str | None = None, check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``bpfnet <args> -H <host>`` (the -H goes after the subcommand words)."""
        cmd = bpfnet_cmd() + ["-H", host or self.host, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise DaemonError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
        return r

    def cli_json(self, *args: str) -> Any:
        r = self.cli(*args, "--json", check=True)
        return json.loads(r.stdout)

    def add_endpoint(self, suffix: str, **fields: Any) -> dict[str, Any]:
        body = {"name": self.name(suffix), **fields}
        result: dict[str, Any] = self.client.post("/v1/endpoints", body)
        return result

    def remove_endpoint(self, name: str) -> None:
        self.client.delete(f"/v1/endpoints/{name}")

    def network(self, name: str = "bridge") -> dict[str, Any]:
        result: dict[str, Any] = self.client.get(f"/v1/networks/{name}")
        return result

    def links(self) -> set[str]:
        """Link names in the managed namespace."""
        return link_names(self.netns)

    def host_veths(self) -> set[str]:
        return {n for n in self.links() if n.startswith("bnv")}

    def owned_netns(self) -> set[str]:
        """Every namespace named after this daemon's tag, the managed one included."""
        return netns_with_prefix(self.tag)

    # cleanup
    def resolver_pid(self) -> int | None:
        """The DNS resolver this daemon spawned (or adopted), from its pidfile."""
        try:
            pid = int((self.state_dir / "dns" / "resolver.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"bpfnet.dns.server" in cmd and str(self.state_dir).encode() in cmd else None

    def stop_resolver(self) -> None:
        """SIGKILL the resolver by its PID (a daemon that is killed leaves it running, by design)."""
        pid = self.resolver_pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: self.resolver_pid() is None, timeout=5, what="the resolver to exit")

    def cleanup(self) -> list[str]:
        """Kill the daemon and its DNS resolver, delete every namespace of the tag and the DNS files
        of its endpoints; return what could not be removed."""
        self.kill()
        self.stop_resolver()
        for files in Path("/etc/netns").glob(f"{self.tag}-*"):
            shutil.rmtree(files, ignore_errors=True)
        for name in sorted(self.owned_netns(), reverse=True):  # endpoint namespaces before the managed one
            delete_netns(name)
        pins = Path("/sys/fs/bpf/bpfnet") / self.netns
        if pins.exists():
            shutil.rmtree(pins, ignore_errors=True)
        try:
            pins.parent.rmdir()  # the daemon made /sys/fs/bpf/bpfnet too; others may still use it
        except OSError:
            pass
        if self._sock_dir != self.workdir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
        left = sorted(self.owned_netns())
        left += [str(p) for p in Path("/etc/netns").glob(f"{self.tag}-*")]
        if pins.exists():
            left.append(str(pins))
        return left


class DaemonFactory:
    """Starts daemons (each with a fresh tag) and removes all of them and their namespaces on exit."""

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_tmp = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="bpfnet-test-")) if workdir is None else workdir
        self.daemons: list[DaemonProcess] = []
        self.extra_netns: set[str] = set()

    def create(self, *args: str, tcp: bool = False, datapath: str | None = "bridge",
               env: dict[str, str] | None = None, tag: str | None = None) -> DaemonProcess:
        """Make a DaemonProcess without starting it (e.g. to prepare its namespace first)."""
        tag = tag or unique_tag()
        d = DaemonProcess(tag, self.workdir / tag, args, tcp=tcp, datapath=datapath, env=env)
        self.daemons.append(d)
        return d

    def start(self, *args: str, tcp: bool = False, datapath: str | None = "bridge",
              env: dict[str, str] | None = None) -> DaemonProcess:
        d = self.create(*args, tcp=tcp, datapath=datapath, env=env)
        try:
            return d.start()
        except DaemonError:
            d.cleanup()
            raise

    def track_netns(self, name: str) -> str:
        """Delete namespace NAME at cleanup too (for namespaces a test makes itself)."""
        self.extra_netns.add(name)
        return name

    def cleanup(self) -> list[str]:
        left: list[str] = []
        for d in self.daemons:
            left += d.cleanup()
        for name in self.extra_netns:
            delete_netns(name)
            if name in netns_list():
                left.append(name)
        if self._own_tmp:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return left

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        left = self.cleanup()
        if left:
            raise AssertionError(f"test cleanup left these behind: {left}")


def make_netns(name: str) -> str:
    """ip netns add NAME (the caller owns its removal, e.g. via DaemonFactory.track_netns)."""
    run("ip", "netns", "add", name)
    return name


def in_thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[Any]]:
    """Run fn(*args) on a thread; the list receives its result or exception."""
    out: list[Any] = []

    def body() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, out


def wait_until(predicate: Any, timeout: float = 20, interval: float = 0.05, what: str = "condition") -> Any:
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
