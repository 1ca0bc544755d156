"""Unit tests of bpfnet.metrics (collector, controller metrics, /metrics server)
and of the stats document (bpfnet.snapshot)."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest
from bpfnet.metrics import build_registry
from bpfnet.metrics.collector import BpfnetCollector
from bpfnet.metrics.controller_metrics import ControllerMetrics
from bpfnet.metrics.server import DEFAULT_PORT, bind_metrics_socket, parse_address, serve_metrics
from bpfnet.snapshot import EndpointRef, MetricsSnapshot, NetworkStats, stats_document
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families


def counters(scale: int = 1, drops: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
    return {
        "tx_fast_packets": 10 * scale,
        "tx_fast_bytes": 1000 * scale,
        "tx_kernel_packets": 2 * scale,
        "tx_kernel_bytes": 300 * scale,
        "rx_fast_packets": 20 * scale,
        "rx_fast_bytes": 4000 * scale,
        "rx_kernel_packets": 1 * scale,
        "rx_kernel_bytes": 60 * scale,
        "drops": drops if drops is not None else {"tx": {"no_neigh": 3}, "rx": {"policy": 5}},
    }


def snapshot(with_db: bool = True) -> MetricsSnapshot:
    eps = [EndpointRef("web", "front", 1)]
    cnt: dict[int, dict[str, Any]] = {1: counters()}
    if with_db:
        eps.append(EndpointRef("db", "back", 7))
        cnt[7] = counters(2, {"tx": {}, "rx": {}})
    cnt[42] = counters(100)  # slot no endpoint owns: ignored
    return MetricsSnapshot(
        networks=(
            NetworkStats(
                "front",
                ipv4_total=253,
                ipv4_in_use=2,
                endpoints=1,
                ipv6_total=2.0**64,
                ipv6_in_use=1,
            ),
            NetworkStats(
                "back",
                ipv4_total=13,
                ipv4_in_use=13 if with_db else 12,
                endpoints=1 if with_db else 0,
                driver="overlay",
            ),
        ),
        endpoints=tuple(eps),
        datapath_info={
            "mode": "redirect-peer",
            "attach": "tcx",
            "endpoint_device": "netkit",
            "pin_dir": "/sys/fs/bpf/bpfnet",
            "programs": [
                {
                    "name": "bpfnet_ingress",
                    "id": 101,
                    "tag": "0123456789abcdef",
                    "attach": "tc-ingress veth-web",
                },
            ],
        },
        counters=cnt,
        requested_mode="redirect-peer",
    )


def registry_for(snap: Any) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(BpfnetCollector(snap if callable(snap) else lambda: snap))
    return reg


def value(reg: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_endpoint_traffic_values_and_labels() -> None:
    reg = registry_for(snapshot())
    ep = {"network": "front", "endpoint": "web"}
    assert value(reg, "bpfnet_endpoint_receive_bytes_total", **ep) == 4060
    assert value(reg, "bpfnet_endpoint_receive_packets_total", **ep) == 21
    assert value(reg, "bpfnet_endpoint_transmit_bytes_total", **ep) == 1300
    assert value(reg, "bpfnet_endpoint_transmit_packets_total", **ep) == 12
    assert value(reg, "bpfnet_endpoint_receive_path_packets_total", **ep, path="fast") == 20
    assert value(reg, "bpfnet_endpoint_receive_path_packets_total", **ep, path="kernel") == 1
    assert value(reg, "bpfnet_endpoint_transmit_path_bytes_total", **ep, path="kernel") == 300
    assert (
        value(reg, "bpfnet_endpoint_drops_total", **ep, direction="transmit", reason="no_neigh")
        == 3
    )
    assert (
        value(reg, "bpfnet_endpoint_drops_total", **ep, direction="receive", reason="policy") == 5
    )
    db = {"network": "back", "endpoint": "db"}
    assert value(reg, "bpfnet_endpoint_receive_bytes_total", **db) == 8120


def test_network_datapath_and_build_series() -> None:
    reg = registry_for(snapshot())
    assert value(reg, "bpfnet_network_ipam_addresses", network="front", family="ipv4") == 253
    assert value(reg, "bpfnet_network_ipam_addresses", network="front", family="ipv6") == 2.0**64
    assert value(reg, "bpfnet_network_ipam_addresses_in_use", network="back", family="ipv4") == 13
    assert value(reg, "bpfnet_network_ipam_addresses", network="back", family="ipv6") is None
    assert value(reg, "bpfnet_network_endpoints", network="back") == 1
    assert value(reg, "bpfnet_network_info", network="back", driver="overlay") == 1
    assert value(reg, "bpfnet_network_info", network="front", driver="bridge") == 1
    assert (
        value(reg, "bpfnet_datapath_info", mode="redirect-peer", requested_mode="redirect-peer",
              attach="tcx", endpoint_device="netkit")
        == 1
    )
    assert (
        value(
            reg,
            "bpfnet_program_info",
            name="bpfnet_ingress",
            id="101",
            tag="0123456789abcdef",
            attach="tc-ingress veth-web",
        )
        == 1
    )
    assert value(reg, "bpfnet_scrape_success") == 1
    build = [s for m in reg.collect() for s in m.samples if s.name == "bpfnet_build_info"]
    assert len(build) == 1 and build[0].labels["version"]


def test_no_ifindex_or_unowned_slot() -> None:
    text = generate_latest(registry_for(snapshot())).decode()
    assert "ifindex" not in text
    # Counters of slot 42 (no endpoint) would be 100x: 400000 rx fast bytes.
    assert "400000" not in text


def test_removed_endpoint_has_no_stale_series() -> None:
    state = {"snap": snapshot(with_db=True)}
    reg = registry_for(lambda: state["snap"])
    assert value(reg, "bpfnet_endpoint_receive_bytes_total", network="back", endpoint="db")
    state["snap"] = snapshot(with_db=False)
    text = generate_latest(reg).decode()
    assert 'endpoint="db"' not in text
    assert 'endpoint="web"' in text


def test_bridge_mode_fallback_and_no_counters() -> None:
    snap = MetricsSnapshot(
        networks=(NetworkStats("n", 253, 1, 1),),
        endpoints=(EndpointRef("a", "n", 0),),
        datapath_info={"mode": "bridge", "programs": [], "pin_dir": None},
        counters={},
        requested_mode="redirect-peer",
    )
    reg = registry_for(snap)
    assert value(reg, "bpfnet_datapath_info", mode="bridge", requested_mode="redirect-peer",
                 attach="none", endpoint_device="veth") == 1
    assert value(reg, "bpfnet_endpoint_receive_bytes_total", network="n", endpoint="a") is None
    assert value(reg, "bpfnet_network_endpoints", network="n") == 1


def test_requested_mode_defaults_to_running_mode() -> None:
    snap = MetricsSnapshot(datapath_info={"mode": "bridge"})
    reg = registry_for(snap)
    assert value(reg, "bpfnet_datapath_info", mode="bridge", requested_mode="bridge",
                 attach="none", endpoint_device="veth") == 1


def test_snapshot_failure_is_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> MetricsSnapshot:
        raise RuntimeError("state lock poisoned")

    reg = registry_for(broken)
    with caplog.at_level(logging.ERROR, logger="bpfnet.metrics"):
        text = generate_latest(reg).decode()
    assert "bpfnet_scrape_success 0.0" in text
    assert "bpfnet_build_info" in text
    assert "state lock poisoned" in caplog.text


def test_registering_does_not_call_snapshot() -> None:
    calls = []

    def snap() -> MetricsSnapshot:
        calls.append(1)
        return snapshot()

    reg = CollectorRegistry(auto_describe=True)
    reg.register(BpfnetCollector(snap))
    assert calls == []
    generate_latest(reg)
    assert calls == [1]  # exactly one snapshot per scrape


def test_openmetrics_output_parses() -> None:
    reg, cm = build_registry(snapshot, process=False)
    cm.api_request("/networks/{name}", "delete", 204)
    text = generate_openmetrics(reg).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["bpfnet_endpoint_receive_bytes"].type == "counter"
    assert fams["bpfnet_datapath"].type == "info"
    assert fams["bpfnet_network_ipam_addresses"].type == "gauge"
    assert fams["bpfnet_endpoint_add_duration_seconds"].type == "histogram"
    drops = [s for s in fams["bpfnet_endpoint_drops"].samples if s.name.endswith("_total")]
    assert {s.labels["reason"] for s in drops} == {"no_neigh", "policy"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_metrics() -> None:
    reg, cm = build_registry(snapshot, process=True)
    cm.api_request("/networks", "GET", 200)
    cm.endpoint_added(0.02)
    cm.reconcile_repair("veth")
    cm.reconcile_error()
    text = generate_latest(reg)
    res = subprocess.run(
        ["promtool", "check", "metrics"], check=False, input=text, capture_output=True, timeout=30
    )
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_stats_document() -> None:
    doc = stats_document(snapshot())
    assert doc["mode"] == "redirect-peer"
    names = [(e["network"], e["name"]) for e in doc["endpoints"]]
    assert names == [("back", "db"), ("front", "web")]
    web = doc["endpoints"][1]["counters"]
    assert web["rx_fast_bytes"] == 4000
    assert web["drops"] == {"tx": {"no_neigh": 3}, "rx": {"policy": 5}}
    assert json.loads(json.dumps(doc)) == doc


def test_stats_document_lists_endpoints_without_counters_last() -> None:
    snap = MetricsSnapshot(
        endpoints=(EndpointRef("z", "n", 1), EndpointRef("b", "n", 0), EndpointRef("a", "n", 2)),
        datapath_info={"mode": "bridge"},
        counters={1: counters()},
    )
    doc = stats_document(snap)
    assert doc == {"mode": "bridge", "endpoints": [
        {"name": "z", "network": "n", "counters": doc["endpoints"][0]["counters"]},
        {"name": "b", "network": "n", "counters": None},
        {"name": "a", "network": "n", "counters": None},
    ]}
    assert doc["endpoints"][0]["counters"]["tx_kernel_packets"] == 2


# --- ControllerMetrics -----------------------------------------------------


def test_controller_metrics() -> None:
    reg = CollectorRegistry()
    m = ControllerMetrics(reg)
    m.api_request("/networks", "get", 200)
    m.api_request("/networks", "GET", 200)
    m.api_request("/endpoints/{name}", "POST", 409)
    assert (
        value(reg, "bpfnet_api_requests_total", route="/networks", method="GET", status="200") == 2
    )
    assert (
        value(
            reg, "bpfnet_api_requests_total", route="/endpoints/{name}", method="POST", status="409"
        )
        == 1
    )

    m.endpoint_added(0.01)
    m.endpoint_added(2.0, ok=False)
    m.endpoint_removed(0.3)
    m.endpoint_removed(0.001, True)
    assert value(reg, "bpfnet_endpoint_add_duration_seconds_count", result="success") == 1
    assert value(reg, "bpfnet_endpoint_add_duration_seconds_count", result="error") == 1
    assert value(reg, "bpfnet_endpoint_remove_duration_seconds_count", result="success") == 2
    assert (
        value(reg, "bpfnet_endpoint_remove_duration_seconds_bucket", result="success", le="0.5")
        == 2
    )

    assert value(reg, "bpfnet_endpoint_add_duration_seconds_bucket", result="error", le="1.0") == 0
    assert value(reg, "bpfnet_endpoint_add_duration_seconds_bucket", result="error", le="2.5") == 1

    assert value(reg, "bpfnet_reconcile_errors_total") == 0
    m.reconcile_error()
    assert value(reg, "bpfnet_reconcile_errors_total") == 1

    assert value(reg, "bpfnet_reconcile_repairs_total", kind="veth") is None  # no kind until one happens
    m.reconcile_repair("veth")
    m.reconcile_repair("veth")
    m.reconcile_repair("route")
    assert value(reg, "bpfnet_reconcile_repairs_total", kind="veth") == 2
    assert value(reg, "bpfnet_reconcile_repairs_total", kind="route") == 1


def test_controller_metrics_is_the_services_observer() -> None:
    """The names the services call (their observer) and the daemon's current hooks wiring."""
    reg = CollectorRegistry()
    m = ControllerMetrics(reg)
    m.endpoint_added(0.02, False)
    m.endpoint_removed(0.02, True)
    assert value(reg, "bpfnet_endpoint_add_duration_seconds_count", result="error") == 1
    assert value(reg, "bpfnet_endpoint_remove_duration_seconds_count", result="success") == 1


def test_two_controller_metrics_in_private_registries() -> None:
    ControllerMetrics(CollectorRegistry())
    ControllerMetrics(CollectorRegistry())  # no "Duplicated timeseries"


# --- address parsing and serve_metrics ------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("127.0.0.1:9523", ("127.0.0.1", 9523)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        (":9523", ("0.0.0.0", 9523)),
    ],
)
def test_parse_address(addr: str, expected: tuple[str, int]) -> None:
    assert parse_address(addr) == expected


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1:80", "[::1]80", "[x]:1", "h:70000", "h:-1"])
def test_parse_address_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_address(addr)


def test_default_port() -> None:
    assert DEFAULT_PORT == 9523


@pytest.mark.parametrize("addr", ["0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"])
def test_serve_metrics_refuses_public_address(addr: str) -> None:
    # The message names the daemon's flag, not this function's keyword (issue 10 #19).
    with pytest.raises(ValueError, match="pass --allow-public-metrics to expose them"):
        serve_metrics(addr, CollectorRegistry())


def test_serve_metrics_refuses_public_socket() -> None:
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    try:
        with pytest.raises(ValueError, match="--allow-public-metrics"):
            serve_metrics(None, CollectorRegistry(), sock=s)
    finally:
        s.close()


def test_serve_metrics_allow_public_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="bpfnet.metrics"):
        srv = serve_metrics("0.0.0.0:0", CollectorRegistry(), allow_public=True)
    try:
        assert "non-loopback" in caplog.text
        port = srv.address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.status == 200
    finally:
        srv.close()


def get(url: str, accept: str | None = None, gz: bool = False) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url)
    if accept:
        req.add_header("Accept", accept)
    if gz:
        req.add_header("Accept-Encoding", "gzip")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            body = r.read()
            headers = dict(r.headers)
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    return status, headers, body.decode()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_serve_metrics_formats(host: str) -> None:
    if host == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    reg = registry_for(snapshot())
    with serve_metrics(f"{host}:0", reg) as srv:
        base = f"http://{host}:{srv.address[1]}"
        assert srv.url == base + "/metrics"
        status, headers, body = get(base + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert "bpfnet_endpoint_receive_bytes_total" in body
        status, headers, body = get(
            base + "/metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")
        list(text_string_to_metric_families(body))
        status, headers, body = get(base + "/metrics", gz=True)
        assert status == 200 and "bpfnet_build_info" in body
        assert get(base + "/nope")[0] == 404
        assert get(base + "/")[0] == 200


def test_serve_metrics_from_presocket_and_close_frees_port() -> None:
    sock = bind_metrics_socket("127.0.0.1:0")
    port = sock.getsockname()[1]
    srv = serve_metrics(None, registry_for(snapshot()), sock=sock)
    try:
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        srv.close()
        srv.close()  # idempotent
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{port}/metrics")
    again = serve_metrics(f"127.0.0.1:{port}", CollectorRegistry())
    again.close()


def test_serve_metrics_unlistened_socket() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    with serve_metrics(None, CollectorRegistry(), sock=s) as srv:
        assert get(srv.url)[0] == 200


def test_serve_metrics_addr_and_sock_exclusive() -> None:
    s = socket.socket()
    try:
        with pytest.raises(ValueError):
            serve_metrics("127.0.0.1:0", CollectorRegistry(), sock=s)
    finally:
        s.close()
