"""Debian's real Prometheus scraping the real daemon's /metrics (datapath auto).

The daemon's metrics listener is on the loopback of the namespace the test runs
in (``--metrics-addr 127.0.0.1:<free port>``, bound before the daemon enters its
managed namespace); Prometheus listens on another loopback port with a
throwaway config and TSDB. Traffic flows only between the daemon's endpoints.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from helpers import DaemonFactory, DaemonProcess, free_port, ping, run
from prom import PROMETHEUS, Prometheus, running_prometheus

pytestmark = pytest.mark.kernel

PROMTOOL = shutil.which("promtool")
N = 20


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    """prometheus_for("127.0.0.1:PORT") starts Prometheus scraping that target every second."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package 'prometheus')")
    with ExitStack() as stack:
        yield lambda target: stack.enter_context(running_prometheus(target, tmp_path / "prometheus"))


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        return r.read().decode()


def series_of(text: str, endpoint: str) -> list[str]:
    return [line for line in text.splitlines() if f'endpoint="{endpoint}"' in line and not line.startswith("#")]


def sample(text: str, name: str, **labels: str) -> float:
    """Value of the one sample of NAME whose labels include LABELS."""
    found = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)\{(.*)\} (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(lab.get(k) == v for k, v in labels.items()):
            found.append(float(m.group(3)))
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_prometheus_scrapes_real_daemon(daemons: DaemonFactory, prometheus_for: Callable[[str], Prometheus]) -> None:
    mport = free_port()
    addr = f"127.0.0.1:{mport}"
    d: DaemonProcess = daemons.start("--metrics-addr", addr, datapath="auto")
    assert d.cli_json("info")["metrics_url"] == f"http://{addr}/metrics"
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    b4 = str(b["ipv4"]).split("/")[0]
    r = run("ip", "netns", "exec", a["netns"], "ping", "-c", str(N), "-i", "0.02", "-W", "1", "-q", b4,
            check=False)
    assert f"{N} packets transmitted, {N} received" in r.stdout, r.stdout

    # the exposition itself: valid for promtool, and the numbers the datapath counted
    text = scrape(addr)
    if PROMTOOL is not None:
        chk = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                             timeout=30, check=False)
        assert chk.returncode == 0, chk.stdout + chk.stderr
    sa = {"network": "bridge", "endpoint": a["name"]}
    sb = {"network": "bridge", "endpoint": b["name"]}
    tx_fast = sample(text, "bpfnet_endpoint_transmit_path_packets_total", **sa, path="fast")
    assert N <= tx_fast <= N + 5, tx_fast  # the echo requests, and not much else
    assert sample(text, "bpfnet_endpoint_receive_path_packets_total", **sb, path="fast") >= N
    assert sample(text, "bpfnet_endpoint_transmit_packets_total", **sa) == tx_fast + sample(
        text, "bpfnet_endpoint_transmit_path_packets_total", **sa, path="kernel")

    prom = prometheus_for(addr)
    sel_a = f'endpoint="{a["name"]}"'
    sel_b = f'endpoint="{b["name"]}"'
    prom.wait('up{job="bpfnet"}', lambda v: v == 1)
    assert prom.wait(f'bpfnet_endpoint_transmit_path_packets_total{{{sel_a},path="fast"}}',
                     lambda v: v is not None) >= N
    assert prom.value(f'bpfnet_endpoint_receive_path_packets_total{{{sel_b},path="fast"}}') >= N
    assert prom.value('bpfnet_network_endpoints{network="bridge"}') == 2
    assert prom.value('bpfnet_network_info{network="bridge",driver="bridge"}') == 1
    # programs attach with tcx links where the kernel has them (this machine's does), veth endpoints
    assert prom.value('bpfnet_datapath_info{mode="redirect-peer",requested_mode="auto",attach="tcx",'
                      'endpoint_device="veth"}') == 1
    assert prom.value('count(bpfnet_program_info{name="ep_ingress"})') == 2

    # continuous traffic across a daemon restart: counters carry on, rate stays > 0
    tx = f"bpfnet_endpoint_transmit_packets_total{{{sel_a}}}"
    pinger = subprocess.Popen(["ip", "netns", "exec", a["netns"], "ping", "-i", "0.02", "-q", b4],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = prom.wait(tx, lambda v: v is not None and v > tx_fast + 20)
        d.restart()
        prom.wait('up{job="bpfnet"}', lambda v: v == 1)
        # a few scrapes of the new daemon
        prom.wait(f"count_over_time({tx}[4s])", lambda v: v is not None and v >= 4, timeout=15)
        after = prom.value(tx)
        assert after is not None and before is not None and after > before, (before, after)
        assert prom.value(f"resets({tx}[1m])") == 0
        assert prom.value(f"resets(bpfnet_endpoint_receive_packets_total{{{sel_b}}}[1m])") == 0
        rate = prom.value(f"rate({tx}[3s])")
        assert rate is not None and rate > 10, rate  # ~50 packets/s
    finally:
        pinger.kill()
        pinger.wait(timeout=5)

    # endpoint rm: its series go from /metrics at once, and Prometheus marks them stale
    assert series_of(scrape(addr), a["name"])
    d.cli("endpoint", "rm", a["name"], check=True)
    gone = scrape(addr)
    assert series_of(gone, a["name"]) == [], series_of(gone, a["name"])
    assert series_of(gone, b["name"]), "b's series went too"
    assert sample(gone, "bpfnet_network_endpoints", network="bridge") == 1
    prom.wait(f"count({tx})", lambda v: v is None)
    prom.wait('bpfnet_network_endpoints{network="bridge"}', lambda v: v == 1)
    assert ping(b["netns"], str(b["gateway4"]))
