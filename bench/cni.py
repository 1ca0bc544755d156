"""A container's network set-up and teardown through CNI: bpfnet-cni vs the CNI bridge plugin.

Boundary: ``python -m bench.cni [N]``, JSON on stdout. One ``bpfnet daemon`` (redirect-peer)
manages a fresh namespace with a network; N container namespaces are given, in turn, an
interface by ``bpfnet-cni`` and by Debian's ``bridge`` + ``host-local`` plugins (the
baseline: what podman's default CNI network runs), both executed as a runtime executes them
(a process per call, configuration on stdin) and, for the bridge plugin, inside the daemon's
namespace where its bridge lives. The calls alternate, so drift hits both alike. Reported:
ADD and DEL medians and p95 per plugin, the CPU time of each ADD's process (user + system:
less sensitive to a loaded machine than wall time), and, for bpfnet, the daemon's own share
(the same endpoint made through ``POST``/``DELETE /v1/endpoints`` directly), so the rest is
the plugin process (a Python interpreter starting, imports, two API round trips).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

from bpfnet.datapath import bpffs

log = logging.getLogger(__name__)
BRIDGE_PLUGIN = "/usr/lib/cni/bridge"


def _stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    return {"median_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "n": len(ms)}


def _call(argv: list[str], command: str, conf: dict[str, Any], cid: str, netns: str) -> tuple[float, float]:
    """(wall time, CPU time of the plugin process) of one CNI call."""
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": cid,
               "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(argv, input=json.dumps(conf), capture_output=True, text=True, env=environ, timeout=60,
                       check=False)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[-1]} {command} failed: {r.stdout} {r.stderr}")
    return took, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(n: int = 40) -> dict[str, Any]:
    from . import env
    from .topology import BpfnetDaemon

    d = BpfnetDaemon("cni", "redirect-peer", "fd00:b0:c1::/64")
    d.start()
    d.client.post("/v1/networks", {"name": "cnib", "subnet4": "10.161.0.0/16"})
    work = env.tmpdir("cni")
    plugin = [os.path.join(os.path.dirname(sys.executable), "bpfnet-cni")]
    if not os.path.exists(plugin[0]):
        plugin = [sys.executable, "-m", "bpfnet.plugins.cni"]
    bpfnet_conf = {"cniVersion": "1.0.0", "name": "cnib", "type": "bpfnet", "socket": d.sock}
    bridge_conf = {"cniVersion": "1.0.0", "name": "cnibr", "type": "bridge", "bridge": "cnibr0", "isGateway": True,
                   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.162.0.0/16"}]],
                            "dataDir": f"{work}/ipam"}}
    bridge = ["nsenter", f"--net=/run/netns/{d.netns}", BRIDGE_PLUGIN]
    times: dict[str, list[float]] = {k: [] for k in ("bpfnet_add", "bpfnet_del", "bridge_add", "bridge_del",
                                                     "api_add", "api_del", "bpfnet_add_cpu", "bridge_add_cpu")}
    for i in range(n):
        ns = env.add_netns(env.ns_name(f"cni-c{i}"))
        path = f"/run/netns/{ns}"
        cid = uuid.uuid4().hex
        for kind, argv, conf in (("bpfnet", plugin, bpfnet_conf), ("bridge", bridge, bridge_conf)):
            wall, cpu = _call(argv, "ADD", conf, cid, path)
            times[f"{kind}_add"].append(wall)
            times[f"{kind}_add_cpu"].append(cpu)
            times[f"{kind}_del"].append(_call(argv, "DEL", conf, cid, path)[0])
        t0 = time.perf_counter()
        d.client.post("/v1/endpoints", {"name": f"api{i}", "network": "cnib", "netns_path": path})
        times["api_add"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        d.client.delete(f"/v1/endpoints/api{i}")
        times["api_del"].append(time.perf_counter() - t0)
        env.remove_namespaces([ns])
    out: dict[str, Any] = {k: _stats(v) for k, v in times.items()}
    for op in ("add", "del"):
        out[f"bpfnet_over_bridge_{op}"] = round(out[f"bpfnet_{op}"]["median_ms"] / out[f"bridge_{op}"]["median_ms"], 2)
    return out


def main(argv: list[str]) -> int:
    from . import env

    logging.basicConfig(level=logging.WARNING)
    n = int(argv[0]) if argv else 40
    env.install_handlers()
    env.sweep_dead_runs()
    try:
        with bpffs.mounted():
            print(json.dumps(measure(n), indent=2))
    finally:
        env.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
