"""``bpfnet demo --cluster``: two hosts, etcd and an overlay network in one command, cleaned up after.

Boundary: orchestration only, through real processes and the API, like ``bpfnet demo``. In
namespaces of its own: an underlay (a bridge, etcd on 10.88.0.1:2379 with its data in a temp
dir), two "hosts" wired to it (each the managed namespace of its own ``bpfnet daemon
--cluster-store``), an overlay network made on the first host, one endpoint on each, pings
between them over IPv4 and IPv6 through the eBPF tunnel, the counters and ``node ls``. Every
process is stopped by its PID and every namespace removed, on Ctrl-C and on failure too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import netns
from .client import Client, ClientError, object_path
from .demo import _interrupt, _ping, _say, _wait_for, as_root, stop_process
from .tables import stats_table, table

ETCD = "10.88.0.1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def run_cluster_demo() -> int:
    if shutil.which("etcd") is None:
        print("bpfnet demo --cluster: needs etcd (Debian's etcd-server; scripts/setup installs it)", file=sys.stderr)
        return 1
    return as_root(_run)


def _run() -> int:
    tag = f"bpfnet-cd-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="bpfnet-demo-cluster-"))
    underlay, hosts = f"{tag}-ul", [f"{tag}-h{i}" for i in (0, 1)]
    procs: list[subprocess.Popen[bytes]] = []
    clients = [Client(f"unix://{tmp}/h{i}.sock") for i in (0, 1)]
    eps: list[dict[str, object]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)
    ok = False
    try:
        for ns in (underlay, *hosts):
            netns.create(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", underlay, "link", "add", "ul0", "type", "bridge")
        _ip("-n", underlay, "addr", "add", f"{ETCD}/24", "dev", "ul0")
        _ip("-n", underlay, "link", "set", "ul0", "up")
        for i, ns in enumerate(hosts):
            _ip("-n", ns, "link", "add", "ul", "type", "veth", "peer", "name", f"ul-h{i}", "netns", underlay)
            _ip("-n", underlay, "link", "set", f"ul-h{i}", "master", "ul0", "up")
            _ip("-n", ns, "addr", "add", f"10.88.0.{10 + i}/24", "dev", "ul")
            _ip("-n", ns, "link", "set", "ul", "up")
        url = f"http://{ETCD}:2379"
        _say(f"$ etcd --listen-client-urls {url}   (in namespace {underlay}, data in {tmp}/etcd)")
        procs.append(subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{underlay}", "etcd", "--name", "demo", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", url, "--advertise-client-urls", url,
             "--listen-peer-urls", f"http://{ETCD}:2380", "--initial-advertise-peer-urls", f"http://{ETCD}:2380",
             "--initial-cluster", f"demo=http://{ETCD}:2380", "--log-level", "warn", "--logger", "zap"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)
        for i, ns in enumerate(hosts):
            args = ["daemon", "--netns", ns, "--state-dir", str(tmp / f"state{i}"), "-H", f"unix://{tmp}/h{i}.sock",
                    "--metrics-addr", "", "--bridge", "none", "--cluster-store", f"etcd://{ETCD}:2379",
                    "--advertise-addr", f"10.88.0.{10 + i}", "--node-name", f"host{i}"]
            _say(f"$ bpfnet {' '.join(args)}")
            log = tmp / f"h{i}.log"
            with log.open("wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "bpfnet", *args], stdout=out,
                                              stderr=subprocess.STDOUT))
            _wait_for(clients[i], procs[-1], log, timeout=120)
        _say("$ bpfnet network create web --driver overlay --subnet 10.89.0.0/24 --ipv6 --subnet6 fd89::/64"
             "   (on host0)")
        clients[0].post("/v1/networks", {"name": "web", "driver": "overlay", "subnet4": "10.89.0.0/24",
                                         "subnet6": "fd89::/64"})
        deadline = time.monotonic() + 10
        while not any(n["name"] == "web" for n in clients[1].get("/v1/networks")):
            if time.monotonic() > deadline:
                raise RuntimeError("host1 did not learn network web")
            time.sleep(0.1)
        for i, c in enumerate(clients):
            eps.append(c.post("/v1/endpoints", {"name": f"{tag}-e{i}", "network": "web"}))
        time.sleep(0.5)
        _say("\nendpoints (one per host):")
        _say(table([[f"host{i}", e["name"], e["ipv4"], ", ".join(e["ipv6"])] for i, e in enumerate(eps)],  # type: ignore[arg-type]
                   ["HOST", "NAME", "IPV4", "IPV6"]))
        _say("\nbpfnet node ls (on host1):")
        nodes = clients[1].get("/v1/nodes")
        _say(table([[n["name"] + (" *" if n["self"] else ""), n["address"], n["state"], n["endpoints"]]
                    for n in nodes], ["NODE", "ADDRESS", "STATE", "ENDPOINTS"]))
        _say("\nping across hosts (VXLAN, encapsulated and delivered by eBPF):")
        results = []
        for src, dst in ((eps[0], eps[1]), (eps[1], eps[0])):
            results.append(_ping(str(src["netns"]), str(dst["ipv4"]).split("/")[0]))
            results.append(_ping(str(src["netns"]), str(dst["ipv6"][0]).split("/")[0]))  # type: ignore[index]
        for i, c in enumerate(clients):
            _say(f"\nhost{i}: bpfnet stats")
            _say(stats_table(c.get("/v1/stats")))
        ok = all(results)
        _say(f"\n{'all pings answered' if ok else 'SOME PINGS FAILED'}; cleaning up")
    except KeyboardInterrupt:
        _say("\ninterrupted; cleaning up")
    except (ClientError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"bpfnet demo --cluster: {exc}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
        _cleanup(clients, eps, procs, hosts, underlay, tmp)
    return 0 if ok else 1


def _cleanup(clients: list[Client], eps: list[dict[str, object]], procs: list[subprocess.Popen[bytes]],
             hosts: list[str], underlay: str, tmp: Path) -> None:
    for c, e in zip(clients, eps):
        try:
            c.delete(object_path("endpoints", str(e["name"])))
        except ClientError:
            pass
    try:
        clients[0].delete(object_path("networks", "web"))
    except ClientError:
        pass
    for proc in reversed(procs):  # the daemons, then etcd: each by its PID
        stop_process(proc)
    for i, ns in enumerate(hosts):
        subprocess.run([sys.executable, "-m", "bpfnet", "daemon", "--cleanup", "--netns", ns, "--state-dir",
                        str(tmp / f"state{i}"), "-H", f"unix://{tmp}/c{i}.sock", "--metrics-addr", ""],
                       capture_output=True, check=False)
    for name in [str(e["netns"]) for e in eps] + hosts + [underlay]:
        try:
            netns.remove(name)
        except OSError:
            pass
    shutil.rmtree(tmp, ignore_errors=True)
