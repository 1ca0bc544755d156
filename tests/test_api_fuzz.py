"""schemathesis against a live daemon, driven by the API's generated OpenAPI document.

One daemon (bridge datapath, its own namespace, a loopback TCP listener next to its unix socket)
gets positive and negative cases for every operation, a bounded number each (the whole test runs
in well under 90 s). Every response is checked: no 5xx, the status documented, the body conforming
to the document's schema for it, and every error one line of JSON ``{"error": ...}`` plus a
newline. Afterwards nothing may be left behind: the tag's namespaces are the daemon's own plus its
endpoints', the managed namespace's links are its bridges and its endpoints' veths, and removing
every endpoint and network through the API leaves only the managed namespace.

Fuzzed names never leave the test's tag: an endpoint name or ``netns`` that is a valid name is
rewritten to ``<tag>-f<n>`` before sending (an endpoint's name is its namespace's name, and the
daemon adopts any existing namespace given as ``netns``), so the fuzzer can neither make a
namespace outside the tag nor reach one it did not make.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from bpfnet.config import NAME_RE
from bpfnet.schemas import openapi
from helpers import DaemonFactory, DaemonProcess, netns_list, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

pytestmark = pytest.mark.kernel

EXAMPLES = 100  # per operation and generation mode: at most 11 x 2 x 100 requests
BUDGET = 90.0  # seconds for the fuzzing itself
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


class Findings:
    """Failures by kind, with the first example of each (the run goes on after a failure)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.example: dict[str, str] = {}
        self.requests = 0
        self.statuses: Counter[str] = Counter()  # "POST /v1/networks [negative] 400" -> count
        self.sent_names: set[str] = set()

    def add(self, kind: str, example: str) -> None:
        self.count[kind] += 1
        self.example.setdefault(kind, example[:600])

    def report(self) -> str:
        failures = [f"{n:4d} x {kind}\n       e.g. {self.example[kind]}" for kind, n in self.count.most_common()]
        statuses = [f"{n:4d} x {key}" for key, n in sorted(self.statuses.items())]
        return "\n".join(failures + ["responses:"] + statuses)


def confine_names(case: Case, tag: str, serial: Callable[[], int], sent: set[str]) -> None:
    """Keep a valid endpoint name or netns inside the test's tag (invalid ones go as generated);
    SENT collects every string sent as either, to prove afterwards that none became a namespace."""
    body = case.body
    if case.path != "/v1/endpoints" or case.method.upper() != "POST" or not isinstance(body, dict):
        return
    for key in ("name", "netns"):
        value = body.get(key)
        if isinstance(value, str) and NAME_RE.fullmatch(value) and not value.startswith(f"{tag}-"):
            body[key] = value = f"{tag}-f{serial()}"
        if isinstance(value, str):
            sent.add(value)


def positive_document(doc: dict[str, Any], tag: str) -> dict[str, Any]:
    """DOC with narrower strings, so that positive cases often succeed and then meet each other.

    Every value it allows, the real document allows too (so positive cases stay valid); the
    negative cases come from the real document. Networks are n0-n9 on 10.x.0.0 (overlapping ones
    conflict), endpoints take the default network's addresses (172.29.0.0/16, fd00:29::/64) and
    are named <tag>-f<n> (see confine_names), which the /{name} operations then find.
    """
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]

    def narrow(model: str, field: str, pattern: str | None) -> None:
        prop = schemas[model]["properties"][field]
        choices = prop.get("anyOf", [prop])
        for choice in choices:
            if choice.get("type") == "string":
                if pattern is None:
                    choices.remove(choice)
                else:
                    choice.update(pattern=pattern)
                break

    narrow("NetworkCreate", "name", r"^n[0-9]$")
    narrow("NetworkCreate", "subnet4", r"^10\.[0-9]{1,2}\.0\.0/(16|20|24)$")
    narrow("NetworkCreate", "subnet6", r"^fd00:[0-9a-f]{1,2}::/(48|64)$")
    narrow("EndpointCreate", "network", r"^(bridge|n[0-9])$")
    narrow("EndpointCreate", "ip", r"^172\.29\.0\.[0-9]{1,2}$")
    narrow("EndpointCreate", "ip6", r"^fd00:29::[0-9a-f]{1,2}$")
    narrow("EndpointCreate", "netns", None)  # adoption needs namespaces made for it; not fuzzed
    for path, pattern in (("/v1/networks/{name}", r"^n[0-9]$"), ("/v1/endpoints/{name}", rf"^{tag}-f[0-9]{{1,2}}$")):
        for op in doc["paths"][path].values():
            op["parameters"][0]["schema"]["pattern"] = pattern
    return doc


def check_error_line(status: int, text: str) -> str | None:
    """None if TEXT is one line of JSON {"error": "<string>"} and a newline, else what is wrong."""
    if status < 400:
        return None
    if not text.endswith("\n") or text.count("\n") != 1:
        return "error body is not exactly one line ending in a newline"
    try:
        doc = json.loads(text)
    except ValueError:
        return "error body is not JSON"
    if not (isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str) and doc["error"]):
        return 'error body is not {"error": "<message>"}'
    return None


def fuzz_operation(op: Any, mode: GenerationMode, base_url: str, tag: str, findings: Findings,
                   deadline: float, serial: Callable[[], int]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        if time.monotonic() > deadline:
            return
        case = data.draw(op.as_strategy(generation_mode=mode))
        confine_names(case, tag, serial, findings.sent_names)
        label = f"{case.method.upper()} {case.path} [{mode.value}]"
        try:
            response = case.call(base_url=base_url, timeout=30)
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding, not a crash
            findings.add(f"{label}: no response ({type(exc).__name__})", repr(case.body)[:300])
            return
        findings.requests += 1
        findings.statuses[f"{label} {response.status_code}"] += 1
        if os.environ.get("BPFNET_FUZZ_TRACE"):  # where to append every exchange, for a report
            with open(os.environ["BPFNET_FUZZ_TRACE"], "a") as trace:
                trace.write(json.dumps([label, case.path_parameters, repr(case.body)[:300],
                                        response.status_code, response.text[:300]]) + "\n")
        shown = f"{case.path_parameters or ''} body={case.body!r:.300} -> {response.status_code} {response.text[:200]!r}"
        problem = check_error_line(response.status_code, response.text)
        if problem:
            findings.add(f"{label}: {problem}", shown)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:  # one per failed check
            for failure in group.exceptions:
                title = getattr(failure, "title", type(failure).__name__)
                findings.add(f"{label} {response.status_code}: {title}", shown)

    try:
        run()
    except Unsatisfiable:
        # Nothing to negate: an operation without parameters or body has no negative cases.
        assert mode is GenerationMode.NEGATIVE and not op.body and not op.path_parameters


def leftovers(d: DaemonProcess) -> list[str]:
    """What the daemon's state does not account for: extra namespaces of the tag, extra links."""
    nets = d.client.get("/v1/networks")
    eps = d.client.get("/v1/endpoints")
    problems = []
    # A handoff endpoint has no namespace until its runtime moves the peer: the peer waits,
    # named ifname, beside its host end in the managed namespace.
    waiting = {e["ifname"] for e in eps if e["handoff"] and not e["netns"]}
    want_ns = {d.netns} | {e["netns"] for e in eps if e["netns"]}
    if d.owned_netns() != want_ns:
        problems.append(f"namespaces {sorted(d.owned_netns() ^ want_ns)} differ from the daemon's state")
    want_links = {"lo"} | {n["bridge"] for n in nets} | {e["host_ifname"] for e in eps} | waiting
    if d.links() != want_links:
        problems.append(f"links {sorted(d.links() ^ want_links)} differ from the daemon's state")
    return problems


def remove_everything(d: DaemonProcess) -> list[str]:
    problems = []
    for e in d.client.get("/v1/endpoints"):
        status = d.client.request("DELETE", f"/v1/endpoints/{e['name']}")
        if status is not None:
            problems.append(f"DELETE endpoint {e['name']!r} answered {status!r}")
    for n in d.client.get("/v1/networks"):
        if not n["default"]:
            d.client.delete(f"/v1/networks/{n['name']}")
    left_ns = d.owned_netns() - {d.netns}
    if left_ns:
        problems.append(f"namespaces left after removing everything: {sorted(left_ns)}")
    defaults = {n["bridge"] for n in d.client.get("/v1/networks")}
    if d.links() - {"lo"} - defaults:
        problems.append(f"links left after removing everything: {sorted(d.links() - {'lo'} - defaults)}")
    return problems


def test_schemathesis_live_daemon(daemons: DaemonFactory) -> None:
    outside_before = netns_list()
    d = daemons.start("--bip", "172.29.0.1/16", "--ipv6", "--fixed-cidr-v6", "fd00:29::/64", tcp=True)
    base_url = f"http://127.0.0.1:{d.tcp_port}"
    documents = {GenerationMode.NEGATIVE: schemathesis.openapi.from_dict(openapi()),
                 GenerationMode.POSITIVE: schemathesis.openapi.from_dict(positive_document(openapi(), d.tag))}
    findings = Findings()
    counter = iter(range(1, 1 << 30))
    started = time.monotonic()
    deadline = started + BUDGET
    for mode, schema in documents.items():
        for result in schema.get_all_operations():
            fuzz_operation(result.ok(), mode, base_url, d.tag, findings, deadline, lambda: next(counter) % 100)
    elapsed = time.monotonic() - started

    assert d.running(), f"the daemon died during fuzzing:\n{d.log_tail()}"
    assert findings.requests > 100, f"only {findings.requests} requests were made in {elapsed:.0f} s"
    problems = leftovers(d) + remove_everything(d)
    # Other tests may run meanwhile: only a namespace named like something the fuzzer sent counts.
    made_outside = (findings.sent_names & netns_list()) - outside_before - d.owned_netns()
    assert not made_outside, f"namespaces made outside the test's tag: {made_outside}"
    summary = f"{findings.requests} requests in {elapsed:.0f} s; {sum(findings.count.values())} failures"
    logging.getLogger(__name__).info("schemathesis: %s; statuses %s", summary, dict(findings.statuses))
    assert not findings.count and not problems, f"{summary}\n{findings.report()}\n" + "\n".join(problems)


# Issue 10 defects 5 (500s) and 6 (accepted) as raw bodies over HTTP. NAME becomes a name of
# the test's tag: an endpoint's name is its namespace's, and none may be made outside the tag.
HOSTILE_BODIES = [
    ("/v1/networks", b'{"name": "h1", "subnet4": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("/v1/endpoints", b"[" * 100_000 + b"]" * 100_000),
    ("/v1/networks", b'{"name": "h1", "subnet4": 17}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "mtu": Infinity}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "mtu": 1500.5}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "subnet6": "::/64"}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "subnet6": "fd00:77::/64", '
                     + b'"default_gateway6": "fe80::1%eth0"}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "ipv6": "false"}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "gateway6": "fd00:77::1"}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "127.77.0.0/24"}'),
    ("/v1/networks", b'{"name": "h1", "subnet4": "10.77.0.0/24", "subnet6": "::ffff:0:0/96"}'),
    ("/v1/networks", b'{"name": "h1\\n", "subnet4": "10.77.0.0/24"}'),
    ("/v1/endpoints", b'{"name": "NAME\\n"}'),
    ("/v1/endpoints", b'{"name": "NAME", "ip6": "fd00:29::5%eth0"}'),
    ("/v1/endpoints", b'{"name": "NAME", "network": false}'),
]


def test_hostile_bodies_live(daemons: DaemonFactory) -> None:
    """Each body gets a 400 with one line of JSON, and nothing is made."""
    d = daemons.start("--bip", "172.29.0.1/16", "--ipv6", "--fixed-cidr-v6", "fd00:29::/64", tcp=True)
    before = (d.links(), d.owned_netns())
    wrong = []
    for path, raw in HOSTILE_BODIES:
        raw = raw.replace(b"NAME", d.name("h1").encode())
        conn = http.client.HTTPConnection("127.0.0.1", d.tcp_port, timeout=30)
        try:
            conn.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            status, text = response.status, response.read().decode(errors="replace")
        finally:
            conn.close()
        problem = check_error_line(status, text) if status == 400 else f"status {status}"
        if problem:
            wrong.append(f"POST {path} {raw[:70]!r}: {problem}: {text[:200]!r}")
    assert d.running(), d.log_tail()
    if (d.links(), d.owned_netns()) != before:
        wrong.append(f"made: {sorted((d.links() - before[0]) | (d.owned_netns() - before[1]))}")
    assert not wrong, "\n".join(wrong)


def test_state_checks_count_a_waiting_handoff_peer(daemons: DaemonFactory) -> None:
    """The fuzzer's own state checks: a handoff endpoint (no namespace, its peer waiting in the
    managed namespace) is state the daemon accounts for; a stray link is not."""
    d = daemons.start("--bip", "172.29.0.1/16")
    d.client.post("/v1/endpoints", {"name": d.name("plain")})
    waiting = d.client.post("/v1/endpoints", {"name": d.name("hand"), "handoff": True})
    assert waiting["netns"] == "" and waiting["ifname"] in d.links()
    assert leftovers(d) == []
    run("ip", "-n", d.netns, "link", "add", "stray0", "type", "veth", "peer", "name", "stray1")
    assert leftovers(d) == ["links ['stray0', 'stray1'] differ from the daemon's state"]
    run("ip", "-n", d.netns, "link", "del", "stray0")
    assert remove_everything(d) == []
