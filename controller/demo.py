"""``bpfnet demo``: the whole product in one command, cleaned up afterwards.

Boundary: orchestration only, through the real daemon process and the API.
It starts a daemon that manages a fresh namespace, makes a dual-stack default
network (Docker's example prefix 1553:ba3:2::/64), three endpoints, shows their
addresses, pings between them over IPv4 and IPv6, shows the datapath counters,
and removes everything, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import netns
from .client import Client, ClientError, object_path
from .datapath import bpffs
from .tables import stats_table, table

V6_PREFIX = "1553:ba3:2::/64"


def _say(text: str) -> None:
    print(text, flush=True)


def _wait_for(client: Client, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            client.get("/v1/info")
            return
        except ClientError:
            time.sleep(0.1)
    raise RuntimeError(f"the daemon did not answer within {timeout:.0f}s:\n{log.read_text()[-2000:]}")


def _ping(ns: str, address: str) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", address],
                       capture_output=True, text=True, check=False)
    summary = next((line for line in r.stdout.splitlines() if "packets transmitted" in line), r.stderr.strip())
    _say(f"  {ns} -> {address:<28} {'ok ' if r.returncode == 0 else 'FAIL'}  {summary}")
    return r.returncode == 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C


def run_demo() -> int:
    return as_root(_run_demo)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process we started (by its PID), SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def as_root(body: Callable[[], int]) -> int:
    """BODY() as root, with bpffs mounted around it: the daemon mounts it if missing; the demo,
    having made it necessary, unmounts it after."""
    if os.geteuid() != 0:
        print("bpfnet demo: must run as root", file=sys.stderr)
        return 1
    with bpffs.mounted():
        return body()


def _run_demo() -> int:
    tag = f"bpfnet-demo-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bpfnet-demo-"))
    sock = f"unix://{tmp}/bpfnet.sock"
    log = tmp / "daemon.log"
    client = Client(sock)
    names = [f"{tag}-c{i}" for i in (1, 2, 3)]
    cmd = [sys.executable, "-m", "bpfnet", "daemon", "--netns", tag, "--state-dir", str(tmp / "state"),
           "-H", sock, "--ipv6", "--fixed-cidr-v6", V6_PREFIX, "--metrics-addr", "127.0.0.1:0"]
    _say(f"$ bpfnet daemon --netns {tag} --ipv6 --fixed-cidr-v6 {V6_PREFIX} -H {sock}")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        _wait_for(client, proc, log)
        info = client.get("/v1/info")
        _say(f"daemon ready: kernel {info['kernel']}, datapath {info['datapath']['mode']}")
        net = client.get("/v1/networks")[0]
        _say(f"default network {net['name']!r} on bridge {net['bridge']}: {net['ipam']['ipv4']['subnet']} "
             f"(gateway {net['ipam']['ipv4']['gateway']}), {net['ipam']['ipv6']['subnet']} "
             f"(gateway {net['ipam']['ipv6']['gateway']} and fe80::1)")
        eps = [client.post("/v1/endpoints", {"name": n}) for n in names]
        _say("\nendpoints:")
        _say(table([[e["name"], e["mac"], e["ipv4"], ", ".join(e["ipv6"]), e["link_local"]] for e in eps],
                   ["NAME", "MAC", "IPV4", "IPV6", "LINK-LOCAL"]))
        _say("\nping (IPv4, IPv6, and the gateway):")
        results = []
        for src, dst in ((eps[0], eps[1]), (eps[1], eps[2]), (eps[2], eps[0])):
            results.append(_ping(src["netns"], dst["ipv4"].split("/")[0]))
            results.append(_ping(src["netns"], dst["ipv6"][0].split("/")[0]))
        results.append(_ping(eps[0]["netns"], net["ipam"]["ipv4"]["gateway"]))
        results.append(_ping(eps[0]["netns"], net["ipam"]["ipv6"]["gateway"]))
        _say("\nping by name (each endpoint's /etc/netns/NAME/resolv.conf names bpfnet's resolver):")
        results.append(_ping(eps[0]["netns"], eps[1]["name"]))
        results.append(_ping(eps[1]["netns"], f"{eps[2]['name']}.{net['name']}"))
        _say("\ncounters from the BPF maps (bpfnet stats):")
        _say(stats_table(client.get("/v1/stats")))
        url = client.get("/v1/info").get("metrics_url")
        if url:
            _say(f"\nPrometheus {url} (excerpt):")
            with urllib.request.urlopen(url, timeout=10) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith(("bpfnet_endpoint_transmit_path_packets_total", "bpfnet_datapath_info",
                                        "bpfnet_network_ipam_addresses")):
                        _say(f"  {line}")
        ok = all(results)
        _say(f"\n{'all pings answered' if ok else 'SOME PINGS FAILED'}; cleaning up")
    except KeyboardInterrupt:
        _say("\ninterrupted; cleaning up")
    except (ClientError, RuntimeError) as exc:
        print(f"bpfnet demo: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _cleanup(client, proc, names, tag, tmp, sys.executable)
    return 0 if ok else 1


def _cleanup(client: Client, proc: subprocess.Popen[bytes], names: list[str], tag: str, tmp: Path,
             python: str) -> None:
    for name in names:
        try:
            client.delete(object_path("endpoints", name))
        except ClientError:
            pass
    stop_process(proc)
    # Remove programs and pins, then the namespaces the daemon may have left.
    subprocess.run([python, "-m", "bpfnet", "daemon", "--cleanup", "--netns", tag, "--state-dir",
                    str(tmp / "state"), "-H", f"unix://{tmp}/cleanup.sock", "--metrics-addr", "127.0.0.1:0"],
                   capture_output=True, check=False)
    for name in names + [tag]:
        try:
            netns.remove(name)
        except OSError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
