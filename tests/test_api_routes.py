"""The API's route table without HTTP or root: routing, path decoding, documents;
the client's encoding of names; the tables the CLI and demo print."""

from __future__ import annotations

import json
import subprocess
import sys
from http import HTTPStatus
from typing import Any

import pytest
from bpfnet.api.routes import UNMATCHED, Router, install
from bpfnet.client import ClientError, object_path
from bpfnet.datapath import counters
from bpfnet.errors import InvalidArgument
from bpfnet.schemas import openapi
from bpfnet.snapshot import EndpointRef, MetricsSnapshot
from bpfnet.tables import stats_table, table


class FakeService:
    """Records what the routes ask of a service."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def call(arg: Any = None) -> Any:
            self.calls.append((name, arg))
            if name == "config":
                return (arg, None)
            return {"called": name, "arg": arg}
        return call


@pytest.fixture
def routed() -> tuple[Router, FakeService, FakeService]:
    router, nets, eps = Router(), FakeService(), FakeService()
    snap = MetricsSnapshot(endpoints=(EndpointRef("web", "front", 1),),
                           datapath_info={"mode": "redirect"}, counters={1: counters.empty()})
    install(router, networks=nets, endpoints=eps,  # type: ignore[arg-type]
            info=lambda: {"version": "x"}, snapshot=lambda: snap)
    return router, nets, eps


def call(router: Router, method: str, path: str, body: Any = None) -> tuple[str, int, Any]:
    template, handler, params, _ = router.match(method, path)
    assert handler is not None, (method, path)
    raw = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    status, doc = handler(params, raw)
    return template, status, doc


def test_route_templates_are_the_metrics_route_labels(routed: tuple[Router, FakeService, FakeService]) -> None:
    router = routed[0]
    served = {(r.method, r.template) for r in router.routes}
    assert ("DELETE", "/v1/endpoints/{name}") in served and ("GET", "/v1/openapi.json") in served
    # every route served is documented in the OpenAPI document, and nothing else is
    documented = {(method.upper(), path) for path, ops in openapi()["paths"].items() for method in ops}
    assert served == documented


def test_path_segments_are_decoded_after_matching(routed: tuple[Router, FakeService, FakeService]) -> None:
    router, nets, eps = routed
    # issue 10 #2: an encoded "?" is part of the name, never a query that drops the rest;
    # the decoded name is then checked like a created one, so it never reaches the service
    with pytest.raises(InvalidArgument, match=r"invalid endpoint name 'a\?force'"):
        call(router, "DELETE", "/v1/endpoints/a%3Fforce")
    # an encoded "/" stays inside its segment; a space arrives as a space
    assert router.match("GET", "/v1/networks/a%2Fb")[:1] == ("/v1/networks/{name}",)
    with pytest.raises(InvalidArgument, match="invalid network name 'a/b'"):
        call(router, "GET", "/v1/networks/a%2Fb")
    with pytest.raises(InvalidArgument, match="invalid endpoint name 'a b'"):
        call(router, "GET", "/v1/endpoints/a%20b")
    assert nets.calls == [] and eps.calls == []
    assert call(router, "DELETE", "/v1/endpoints/web%2D1")[1:] == (HTTPStatus.NO_CONTENT, None)
    assert eps.calls == [("remove", "web-1")]


def test_unknown_paths_and_methods(routed: tuple[Router, FakeService, FakeService]) -> None:
    router = routed[0]
    assert router.match("GET", "/v1/endpoints/a/b") == (UNMATCHED, None, {}, False)
    assert router.match("PUT", "/v1/endpoints/a") == (UNMATCHED, None, {}, True)
    assert router.match("GET", "/v2/info")[3] is False


def test_documents(routed: tuple[Router, FakeService, FakeService]) -> None:
    router, nets, eps = routed
    assert call(router, "GET", "/v1/info")[1:] == (HTTPStatus.OK, {"version": "x"})
    _, status, stats = call(router, "GET", "/v1/stats")
    assert status == HTTPStatus.OK and stats["mode"] == "redirect"
    assert [e["name"] for e in stats["endpoints"]] == ["web"]
    assert call(router, "POST", "/v1/networks", {"name": "n", "subnet4": "10.9.0.0/24"})[1] == HTTPStatus.CREATED
    (verb, cfg), = nets.calls
    assert verb == "create" and cfg["name"] == "n" and cfg["bridge"] == "br-n" and cfg["subnet4"] == "10.9.0.0/24"
    for body in ([1], "x", 3):
        with pytest.raises(InvalidArgument, match="JSON object"):
            call(router, "POST", "/v1/endpoints", body)
    with pytest.raises(InvalidArgument):
        call(router, "POST", "/v1/endpoints", None)
    with pytest.raises(InvalidArgument, match="subnet4"):
        call(router, "POST", "/v1/networks", {"name": "n", "subnet4": 17})
    assert eps.calls == [] and len(nets.calls) == 1


def test_object_path_checks_then_encodes() -> None:
    assert object_path("endpoints", "web-1.a_b") == "/v1/endpoints/web-1.a_b"
    assert object_path("networks", "bridge") == "/v1/networks/bridge"
    for bad in ("a?force", "a b", "a/b", "", "-a", "x" * 64):
        with pytest.raises(ClientError, match="invalid endpoint name"):
            object_path("endpoints", bad)
    with pytest.raises(ClientError, match="invalid network name"):
        object_path("networks", "bridge?x")
    # what the client sends, the router hands back unchanged
    router = Router()
    router.add("DELETE", "/v1/endpoints/{name}", lambda p, b: (204, None))
    for name in ("a", "web-1.a_b", "A" * 63):
        assert router.match("DELETE", object_path("endpoints", name))[2] == {"name": name}


def test_counter_names_have_one_home() -> None:
    units = ("packets", "bytes")
    assert set(counters.PATH_FIELDS) == {f"{p}_{u}" for p in counters.PATHS for u in units}
    assert set(counters.COUNTER_KEYS) == {
        counters.key(d, p, u) for d in counters.DIRECTIONS for p in counters.PATHS for u in units}
    c = {"rx_fast_packets": 3, "rx_kernel_packets": 4, "tx_fast_bytes": 10}
    assert counters.total_packets(c, "rx") == 7
    assert counters.total_bytes(c, "tx") == 10
    assert counters.total_packets({}, "tx") == 0


def test_stats_table() -> None:
    c = {**counters.empty(), "rx_fast_packets": 3, "rx_kernel_packets": 4, "tx_fast_packets": 5,
         "tx_kernel_packets": 1, "tx_fast_bytes": 600}
    c["drops"] = {"tx": {"policy": 2}, "rx": {"spoofed_source": 1}}
    text = stats_table({"mode": "redirect", "endpoints": [
        {"name": "web", "network": "front", "counters": c},
        {"name": "db", "network": "back", "counters": None},
    ]})
    head, header, web, db = text.splitlines()
    assert head == "datapath: redirect"
    assert header.split()[:3] == ["ENDPOINT", "NETWORK", "RX"]
    assert web.split() == ["web", "front", "7", "0", "6", "600", "5", "0", "0", "1", "3"]  # TX TUNNEL, ROUTED 0
    assert db.split() == ["db", "back", "0", "0", "0", "0", "0", "0", "0", "0", "0"]
    assert table([["a", None]], ["X", "YY"]) == "X  YY\na"


def test_demo_does_not_import_the_cli() -> None:
    """The cli <-> demo import cycle is gone: both use bpfnet.tables."""
    code = "import sys, bpfnet.demo; sys.exit('bpfnet.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
