"""End-to-end: Debian's real Prometheus scrapes a bpfnet /metrics endpoint.

The scrape target is the ``metrics_target`` fixture. By default it is a
serve_metrics() server on loopback whose fake snapshot counters rise with time.
To point the test at a running daemon instead, set ``BPFNET_METRICS_TARGET``
(``host:port``) and ``BPFNET_METRICS_ENDPOINT`` (``network/endpoint`` of an
endpoint that has traffic while the test runs), or override the fixture.

Also checks the alert rules in contrib/prometheus/ with ``promtool``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bpfnet.metrics.collector import BpfnetCollector
from bpfnet.metrics.controller_metrics import ControllerMetrics
from bpfnet.metrics.server import serve_metrics
from bpfnet.snapshot import EndpointRef, MetricsSnapshot, NetworkStats
from prom import PROMETHEUS, Prometheus, running_prometheus
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
PROMTOOL = shutil.which("promtool")

FAKE_RX_BYTES_PER_S = 125_000.0


@dataclass(frozen=True)
class MetricsTarget:
    """A /metrics endpoint to scrape and an endpoint whose counters rise."""

    address: str  # host:port, loopback
    network: str
    endpoint: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def metrics_target() -> Iterator[MetricsTarget]:
    env = os.environ.get("BPFNET_METRICS_TARGET")
    if env:
        network, _, endpoint = os.environ.get("BPFNET_METRICS_ENDPOINT", "").partition("/")
        if not endpoint:
            pytest.fail("BPFNET_METRICS_ENDPOINT=network/endpoint is needed with a real target")
        yield MetricsTarget(env, network, endpoint)
        return

    t0 = time.monotonic()

    def snapshot() -> MetricsSnapshot:
        dt = time.monotonic() - t0
        rx_bytes = int(FAKE_RX_BYTES_PER_S * dt)
        c = {
            "rx_fast_packets": rx_bytes // 1000,
            "rx_fast_bytes": rx_bytes,
            "rx_kernel_packets": 0,
            "rx_kernel_bytes": 0,
            "tx_fast_packets": int(10 * dt),
            "tx_fast_bytes": int(1000 * dt),
            "tx_kernel_packets": 1,
            "tx_kernel_bytes": 90,
            "drops": {"tx": {"no_neigh": int(dt)}, "rx": {}},
        }
        return MetricsSnapshot(
            networks=(NetworkStats("front", 253, 1, 1),),
            endpoints=(EndpointRef("web", "front", 3),),
            datapath_info={"mode": "redirect-peer", "programs": [], "pin_dir": None},
            counters={3: c},
            requested_mode="redirect-peer",
        )

    registry = CollectorRegistry()
    registry.register(BpfnetCollector(snapshot))
    ControllerMetrics(registry)
    server = serve_metrics("127.0.0.1:0", registry)
    try:
        host, port = server.address
        yield MetricsTarget(f"{host}:{port}", "front", "web")
    finally:
        server.close()


@pytest.fixture
def prometheus(metrics_target: MetricsTarget, tmp_path: Path) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package 'prometheus')")
    with running_prometheus(metrics_target.address, tmp_path, [ALERTS]) as prom:
        yield prom


def test_prometheus_scrapes_values_and_rates(
    prometheus: Prometheus, metrics_target: MetricsTarget
) -> None:
    sel = f'network="{metrics_target.network}",endpoint="{metrics_target.endpoint}"'
    assert prometheus.wait_value('up{job="bpfnet"}') == 1
    total = prometheus.wait_value(f"bpfnet_endpoint_receive_bytes_total{{{sel}}}")
    assert total > 0
    # rate() over a window only partly covered by samples extrapolates little:
    # wait until the 5s window is full before reading it.
    wait_until = time.monotonic() + 30
    while (
        prometheus.wait_value(f"count_over_time(bpfnet_endpoint_receive_bytes_total{{{sel}}}[6s])")
        < 5
    ):
        assert time.monotonic() < wait_until, "Prometheus does not scrape every second"
        time.sleep(0.5)
    rate = prometheus.wait_value(f"rate(bpfnet_endpoint_receive_bytes_total{{{sel}}}[5s])")
    if "BPFNET_METRICS_TARGET" not in os.environ:
        assert FAKE_RX_BYTES_PER_S / 2 < rate < FAKE_RX_BYTES_PER_S * 2
    # Metadata came through: Prometheus knows the type of our families.
    meta = prometheus.get("/api/v1/metadata?metric=bpfnet_endpoint_receive_bytes_total")
    types = {m["type"] for m in meta["data"].get("bpfnet_endpoint_receive_bytes_total", [])}
    assert types <= {"counter"}
    # The alert rules loaded and evaluate without errors.
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        evaluated = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
        if rules and evaluated and all(r["health"] == "ok" for r in rules):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"rules unhealthy: {rules}")
        time.sleep(0.5)
    assert {r["name"] for r in rules} >= {
        "BpfnetEndpointDropsRising",
        "BpfnetIpamPoolNearlyFull",
        "BpfnetDatapathFellBackToBridge",
    }


# --- alert rules ---------------------------------------------------------------


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_check_rules() -> None:
    res = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stdout + res.stderr


RULE_TESTS = """\
rule_files:
  - {alerts}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'bpfnet_endpoint_drops_total{{instance="h",network="n",endpoint="web",direction="transmit",reason="policy"}}'
        values: '0+120x30'
      - series: 'bpfnet_endpoint_drops_total{{instance="h",network="n",endpoint="db",direction="receive",reason="policy"}}'
        values: '0+6x30'
      - series: 'bpfnet_network_ipam_addresses{{instance="h",network="n",family="ipv4"}}'
        values: '13x30'
      - series: 'bpfnet_network_ipam_addresses_in_use{{instance="h",network="n",family="ipv4"}}'
        values: '13x30'
      - series: 'bpfnet_network_ipam_addresses{{instance="h",network="big",family="ipv6"}}'
        values: '1.8446744073709552e+19x30'
      - series: 'bpfnet_network_ipam_addresses_in_use{{instance="h",network="big",family="ipv6"}}'
        values: '100x30'
      - series: 'bpfnet_datapath_info{{instance="h",mode="bridge",requested_mode="redirect-peer"}}'
        values: '1x30'
      - series: 'bpfnet_datapath_info{{instance="h2",mode="bridge",requested_mode="bridge"}}'
        values: '1x30'
      - series: 'bpfnet_published_port_packets_total{{instance="h",network="n",endpoint="web",proto="tcp",host_ip="",host_port="8080",endpoint_port="80",direction="in"}}'
        values: '0+60x30'
      - series: 'bpfnet_published_port_packets_total{{instance="h",network="n",endpoint="web",proto="tcp",host_ip="",host_port="8080",endpoint_port="80",direction="out"}}'
        values: '0x30'
      - series: 'bpfnet_published_port_packets_total{{instance="h",network="n",endpoint="ok",proto="udp",host_ip="",host_port="53",endpoint_port="53",direction="in"}}'
        values: '0+60x30'
      - series: 'bpfnet_published_port_packets_total{{instance="h",network="n",endpoint="ok",proto="udp",host_ip="",host_port="53",endpoint_port="53",direction="out"}}'
        values: '0+60x30'
      - series: 'bpfnet_dns_queries_total{{instance="h",network="n",type="A",result="forwarded"}}'
        values: '0+60x30'
      - series: 'bpfnet_dns_queries_total{{instance="h",network="n",type="A",result="servfail"}}'
        values: '0+60x30'
      - series: 'bpfnet_dns_queries_total{{instance="h",network="ok",type="A",result="forwarded"}}'
        values: '0+600x30'
      - series: 'bpfnet_dns_queries_total{{instance="h",network="ok",type="A",result="servfail"}}'
        values: '0+6x30'
      - series: 'bpfnet_dns_resolver_up{{instance="h"}}'
        values: '1 1 0x28'
    alert_rule_test:
      - eval_time: 20m
        alertname: BpfnetEndpointDropsRising
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h, network: n, endpoint: web, direction: transmit, reason: policy}}
            exp_annotations:
              summary: "bpfnet is dropping packets of n/web"
              description: "2 packets/s dropped in direction transmit for reason policy on endpoint web of network n (instance h) for 10 minutes."
      - eval_time: 20m
        alertname: BpfnetIpamPoolNearlyFull
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h, network: n, family: ipv4}}
            exp_annotations:
              summary: "IPAM pool of network n (ipv4) is over 90% used"
              description: "100% of the ipv4 addresses of network n on h are allocated; new endpoints will fail once it is full."
      - eval_time: 10m
        alertname: BpfnetDatapathFellBackToBridge
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h, mode: bridge, requested_mode: redirect-peer}}
            exp_annotations:
              summary: "bpfnet on h fell back to bridge mode"
              description: "The eBPF datapath (requested mode redirect-peer) is not running; the Linux bridge forwards all traffic (slower path, no per-endpoint counters). Check the daemon log for the program load or attach error."
      - eval_time: 20m
        alertname: BpfnetPublishedPortUnanswered
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h, network: n, endpoint: web, proto: tcp, host_port: "8080"}}
            exp_annotations:
              summary: "published port 8080/tcp of web gets no answers"
              description: "Packets reach the published port :8080/tcp of endpoint web (network n, instance h) but none come back, for 10 minutes: is its service listening?"
      - eval_time: 20m
        alertname: BpfnetDnsUpstreamFailing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: h, network: n}}
            exp_annotations:
              summary: "DNS upstreams of network n are failing"
              description: "50% of the queries the embedded resolver forwards for network n (instance h) fail with SERVFAIL: no upstream answered. Check --dns / the resolv.conf the daemon started from."
      - eval_time: 10m
        alertname: BpfnetDnsResolverDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: h}}
            exp_annotations:
              summary: "bpfnet's embedded DNS resolver is not running on h"
              description: "Endpoints cannot resolve each other's names. The daemon starts the resolver again within a second; if this persists, see <state-dir>/dns/resolver.log."
"""


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_alert_rules_fire_as_intended(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(RULE_TESTS.format(alerts=ALERTS))
    res = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(tests)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


# --- Grafana dashboard -----------------------------------------------------------

DASHBOARD = ROOT / "contrib" / "grafana" / "bpfnet.json"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana variables filled in."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = (
                t["expr"]
                .replace("$__rate_interval", "10s")
                .replace("$instance", ".*")
                .replace("$network", ".*")
                .replace("$endpoint", ".*")
            )
            out.append((panel["title"], expr))
    return out


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] == "bpfnet"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
            assert "$" not in t["expr"].replace("$__rate_interval", "").replace(
                "$instance", ""
            ).replace("$network", "").replace("$endpoint", ""), t["expr"]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert names == {"datasource", "instance", "network", "endpoint"}
    assert len(dashboard_queries()) >= 15


def test_dashboard_queries_run_in_prometheus(
    prometheus: Prometheus, metrics_target: MetricsTarget
) -> None:
    sel = f'network="{metrics_target.network}",endpoint="{metrics_target.endpoint}"'
    prometheus.wait_value(f"rate(bpfnet_endpoint_receive_bytes_total{{{sel}}}[10s])")
    empty = set()
    for title, expr in dashboard_queries():
        result = prometheus.query(expr)  # raises on a PromQL error (HTTP 400)
        if not result:
            empty.add(title)
    must_have_data = {
        "Datapath mode",
        "Fell back to bridge",
        "Endpoints",
        "Fast-path share",
        "Receive bit/s",
        "Transmit packets/s",
        "Fast-path share per endpoint",
        "Drops by reason",
        "IPAM pool usage",
    }
    assert not (must_have_data & empty), must_have_data & empty
