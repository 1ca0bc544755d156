"""The served /metrics (bpfnet.metrics.exposition + BpfnetCollector's direct text)
against prometheus_client's own formatters of the same registry and snapshot."""

from __future__ import annotations

import gzip
import urllib.error
import urllib.request
from typing import Any

import pytest
from bpfnet.metrics import build_registry, exposition
from bpfnet.metrics.collector import BpfnetCollector
from bpfnet.metrics.server import serve_metrics
from bpfnet.snapshot import EndpointRef, MetricsSnapshot, NetworkStats
from prometheus_client import CollectorRegistry, Metric, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

# What Prometheus 2.x sends; prometheus_client answers it with OpenMetrics 1.0.0.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
# Label values that must be escaped, and non-ASCII ones that must not be.
NASTY = ['back\\slash', 'double"quote', "new\nline", 'all\\"\n', "ünï €", ""]

# Values that change between two collections of the same registry.
VOLATILE = ("bpfnet_scrape_duration_seconds", "python_gc_", "process_")


def counters(i: int) -> dict[str, Any]:
    return {
        "tx_fast_packets": i,
        "tx_fast_bytes": 1000 * i,
        "tx_kernel_packets": 0,  # zero-valued series stay
        "tx_kernel_bytes": 0,
        "rx_fast_packets": 2**53 + i,  # not exact as a float
        "rx_fast_bytes": 2**64 - 1 - i,
        "rx_kernel_packets": 3 * i,
        "rx_kernel_bytes": 90 * i,
        "drops": {
            "tx": {"spoofed_source": i % 3, "policy": 0},
            "rx": {"policy": 7, NASTY[i % len(NASTY)]: i},
        },
    }


def big_snapshot(n: int = 400) -> MetricsSnapshot:
    nets = ["front", *NASTY]
    eps = [EndpointRef(f"ep{i}{NASTY[i % len(NASTY)]}", nets[i % len(nets)], i) for i in range(n)]
    eps.append(EndpointRef("no-counters", "front", 10_000))  # bridge mode: no traffic series
    eps.append(EndpointRef(eps[0].name, eps[0].network, 10_001))  # duplicate: skipped
    progs = [
        {"name": "ep_ingress", "id": 7 + i, "tag": "0123456789abcdef", "attach": f"v{NASTY[i % 6]}/in"}
        for i in range(2 * n)
    ]
    return MetricsSnapshot(
        networks=tuple(
            NetworkStats(name, 253, 3, n // len(nets), 2.0**64 if i % 2 else None, 5 if i % 2 else None)
            for i, name in enumerate(nets)
        ),
        endpoints=tuple(eps),
        datapath_info={"mode": "redirect-peer", "attach": "tc", "programs": progs,
                       "pin_dir": "/sys/fs/bpf/x"},
        counters={**{i: counters(i) for i in range(n)}, 10_001: counters(1), 99_999: counters(5)},
        requested_mode="redirect",
    )


def families(fams: Any) -> dict[str, tuple[str, str, list[tuple[str, tuple[Any, ...], float]]]]:
    """name -> (type, help, sorted samples), volatile values replaced by 0."""
    out = {}
    for f in fams:
        assert isinstance(f, Metric)
        assert f.name not in out, f"family {f.name} appears twice"
        samples = sorted(
            (
                s.name,
                tuple(sorted(s.labels.items())),
                0.0 if s.name.startswith(VOLATILE) else float(s.value),
            )
            for s in f.samples
        )
        out[f.name] = (f.type, f.documentation, samples)
    return out


def registry(snap: Any) -> CollectorRegistry:
    reg, cm = build_registry(snap if callable(snap) else lambda: snap)
    cm.api_request("/networks/{name}", "delete", 204)
    cm.endpoint_added(0.02)
    cm.reconcile_repair("veth")
    cm.reconcile_error()
    return reg


@pytest.mark.parametrize("snap", [big_snapshot(), MetricsSnapshot()], ids=["400-endpoints", "empty"])
def test_text_is_what_prometheus_client_writes(snap: MetricsSnapshot) -> None:
    reg = registry(snap)
    headers, body = exposition.render(reg, None, None)
    assert headers == [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")]
    ours = families(parse_text(body.decode()))
    theirs = families(parse_text(generate_latest(reg).decode()))
    assert ours == theirs
    if snap.endpoints:
        samples = ours["bpfnet_endpoint_drops"][2]
        assert sum(1 for s in samples if s[2] == 0) > 100  # zero drops are exported
        assert ('endpoint="ep1double\\"quote"' in body.decode())  # escaped once, not twice


@pytest.mark.parametrize("accept", [PROMETHEUS_ACCEPT, "application/openmetrics-text"])
def test_openmetrics_is_what_prometheus_client_writes(accept: str) -> None:
    reg = registry(big_snapshot())
    headers, body = exposition.render(reg, accept, None)
    assert headers[0][1].startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    ours = families(parse_openmetrics(text))
    assert ours == families(parse_openmetrics(generate_openmetrics(reg).decode()))
    assert ours["bpfnet_program"][0] == "info"


def test_failed_snapshot_renders_like_prometheus_client() -> None:
    def broken() -> MetricsSnapshot:
        raise RuntimeError("boom")

    reg = registry(broken)
    ours = families(parse_text(exposition.render(reg, None, None)[1].decode()))
    assert ours == families(parse_text(generate_latest(reg).decode()))
    assert ours["bpfnet_scrape_success"][2] == [("bpfnet_scrape_success", (), 0.0)]


def test_counters_are_exact_integers() -> None:
    reg = registry(big_snapshot(2))
    text = exposition.render(reg, None, None)[1].decode()
    assert f'path="fast"}} {2**64 - 2}\n' in text  # rx_fast_bytes of endpoint 1


def test_endpoint_changes_between_scrapes() -> None:
    state = {"snap": big_snapshot(10)}
    collector = BpfnetCollector(lambda: state["snap"])
    reg = CollectorRegistry()
    reg.register(collector)
    first = exposition.render(reg, None, None)[1].decode()
    assert 'endpoint="ep3all\\\\\\"\\n"' in first
    renamed = EndpointRef("renamed", "front", 3)
    state["snap"] = MetricsSnapshot(endpoints=(renamed,), counters={3: counters(3)})
    second = exposition.render(reg, None, None)[1].decode()
    assert 'endpoint="ep3' not in second
    assert second.count('endpoint="renamed"') == 20  # the tunnel path added 4 series
    assert families(parse_text(second)) == families(parse_text(generate_latest(reg).decode()))


def test_unusual_negotiation_is_left_to_prometheus_client() -> None:
    reg = registry(big_snapshot(3))
    # "dots" escaping rewrites underscores in names: only prometheus_client does that.
    headers, body = exposition.render(reg, "text/plain;version=1.0.0;escaping=dots", None)
    assert "escaping=dots" in headers[0][1]
    assert b"bpfnet__endpoint__receive__bytes__total" in body
    # Text 1.0.0 with legacy names is the same text as 0.0.4.
    headers, body = exposition.render(reg, "text/plain;version=1.0.0;escaping=allow-utf-8", None)
    assert "version=1.0.0" in headers[0][1]
    assert families(parse_text(body.decode())) == families(parse_text(generate_latest(reg).decode()))


def test_generate_latest_outside_render_still_gets_families() -> None:
    reg = registry(big_snapshot(3))
    assert exposition.direct_render() is None
    assert b'bpfnet_endpoint_receive_bytes_total{endpoint="ep0back\\\\slash"' in generate_latest(reg)


def http(url: str, method: str = "GET", **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_served_metrics_gzip_methods_and_name_filter() -> None:
    reg = registry(big_snapshot(50))
    with serve_metrics("127.0.0.1:0", reg) as srv:
        status, headers, body = http(srv.url, **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        plain = gzip.decompress(body).decode()
        assert families(parse_text(plain)) == families(parse_text(generate_latest(reg).decode()))
        status, headers, body = http(srv.url, Accept=PROMETHEUS_ACCEPT)
        assert headers["Content-Type"].startswith("application/openmetrics-text")
        assert "Content-Encoding" not in headers
        assert body.endswith(b"# EOF\n")
        status, headers, _ = http(srv.url, method="OPTIONS")
        assert status == 200 and headers["Allow"] == "OPTIONS,GET"
        assert http(srv.url, method="POST")[0] == 405
        status, _, body = http(srv.url + "?name[]=bpfnet_network_endpoints")
        names = {f.name for f in parse_text(body.decode())}
        assert names == {"bpfnet_network_endpoints"}
