"""Multicast DNS between endpoints, with a real client and server (python-zeroconf): a service
registered in one endpoint is browsed and resolved from another, over IPv4 (224.0.0.251) and
IPv6 (ff02::fb), through the eBPF datapath (multicast goes to the bridge, which floods it).
Under --no-icc the datapath drops mDNS between endpoints, as it drops their unicast: names and
services of isolated endpoints are not announced to each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import DaemonFactory, DaemonProcess, run

pytestmark = pytest.mark.kernel
PEER = str(Path(__file__).resolve().parent / "mdns_peer.py")


def register(ns: str, ipv: str, name: str, address: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PEER, "register", ipv, name, address, "8080"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
    return proc


def browse(ns: str, ipv: str, seconds: float = 5) -> dict:  # type: ignore[type-arg]
    r = run("ip", "netns", "exec", ns, sys.executable, PEER, "browse", ipv, str(seconds), timeout=60)
    return dict(json.loads(r.stdout))


@pytest.fixture
def pair(daemons: DaemonFactory, request: pytest.FixtureRequest) -> Iterator[tuple[DaemonProcess, dict, dict]]:  # type: ignore[type-arg]
    d = daemons.start("--bip", "10.157.0.1/24", "--ipv6", "--fixed-cidr-v6", "fd57:1::/64", *request.param,
                      datapath=None)
    yield d, d.add_endpoint("a"), d.add_endpoint("b")


@pytest.mark.parametrize("pair", [()], indirect=True)
@pytest.mark.parametrize("ipv", ["4", "6"])
def test_service_is_browsed_and_resolved_from_another_endpoint(pair: tuple, ipv: str) -> None:  # type: ignore[type-arg]
    d, a, b = pair
    assert d.client.get("/v1/info")["datapath"]["mode"] != "bridge"
    address = a["ipv4"].split("/")[0] if ipv == "4" else a["ipv6"][0].split("/")[0]
    server = register(a["netns"], ipv, "svc-a", address)
    try:
        found = browse(b["netns"], ipv)
    finally:
        server.communicate(input="", timeout=20)
    assert found == {"svc-a._bpfnet-test._tcp.local.": {"addresses": [address], "port": 8080,
                                                         "server": "svc-a.local.", "properties": {"from": "svc-a"}}}


@pytest.mark.parametrize("pair", [("--no-icc",)], indirect=True)
@pytest.mark.parametrize("ipv", ["4", "6"])
def test_no_icc_keeps_endpoints_from_discovering_each_other(pair: tuple, ipv: str) -> None:  # type: ignore[type-arg]
    d, a, b = pair
    address = a["ipv4"].split("/")[0] if ipv == "4" else a["ipv6"][0].split("/")[0]
    server = register(a["netns"], ipv, "svc-a", address)
    try:
        assert browse(b["netns"], ipv, seconds=3) == {}
    finally:
        server.communicate(input="", timeout=20)
    drops = {e["name"]: e for e in d.client.get("/v1/stats")["endpoints"]}
    assert drops[a["name"]]["counters"]["drops"]["tx"]["policy"] >= 1  # counted where it was dropped
