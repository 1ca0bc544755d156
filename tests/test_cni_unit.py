"""bpfnet-cni's protocol logic without a daemon: configuration, environment, names, results,
CHECK's comparison, and the plugin driven by a fake API client."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from bpfnet.client import ClientError
from bpfnet.plugins import cni
from hypothesis import given
from hypothesis import strategies as st

CID = "a" * 40 + "b" * 24
EP = {"name": "web", "host_ifname": "bnv3", "ifname": "eth0", "netns": "/run/netns/c1", "mac": "02:42:0a:00:00:02",
      "ipv4": "10.0.0.2/24", "gateway4": "10.0.0.1", "ipv6": ["fd00::2/64"], "gateway6": "fe80::1",
      "owner": f"cni:{CID}:eth0"}


def env(**over: Any) -> cni.Env:
    base = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": CID, "CNI_NETNS": "/run/netns/c1", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"}
    return cni.parse_env({**base, **over})


def raw(**over: Any) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "net", "type": "bpfnet", **over}).encode()


def test_config_defaults_and_keys() -> None:
    c = cni.parse_config(raw())
    assert (c.network, c.socket, c.ips, c.mac) == ("net", "unix:///run/bpfnet/bpfnet.sock", (), None)
    c = cni.parse_config(raw(network="other", socket="/tmp/x.sock",
                             runtimeConfig={"ips": ["10.0.0.9/24", "fd00::9"], "mac": "02:00:00:00:00:09"}))
    assert (c.network, c.socket, c.ips, c.mac) == ("other", "unix:///tmp/x.sock", ("10.0.0.9", "fd00::9"),
                                                   "02:00:00:00:00:09")


@pytest.mark.parametrize("over, code, words", [
    ({"cniVersion": "2.0.0"}, cni.INCOMPATIBLE_VERSION, "not supported"),
    ({"name": None}, cni.INVALID_CONFIG, "name: missing"),
    ({"name": 3}, cni.INVALID_CONFIG, "name: expected"),
    ({"network": "bad name"}, cni.INVALID_CONFIG, "network"),
    ({"socket": "relative.sock"}, cni.INVALID_CONFIG, "socket"),
    ({"prevResult": []}, cni.INVALID_CONFIG, "prevResult"),
    ({"runtimeConfig": {"ips": ["nope"]}}, cni.INVALID_CONFIG, "not an IP address"),
    ({"runtimeConfig": {"mac": 5}}, cni.INVALID_CONFIG, "runtimeConfig.mac"),
])
def test_config_errors(over: dict[str, Any], code: int, words: str) -> None:
    with pytest.raises(cni.CniError) as exc:
        cni.parse_config(raw(**over))
    assert exc.value.code == code and words in exc.value.msg


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=3), max_leaves=10))
def test_any_json_is_a_config_or_a_cni_error(value: Any) -> None:
    for doc in (value, {"cniVersion": "1.0.0", "name": "n", "runtimeConfig": value, "prevResult": value}):
        try:
            cni.parse_config(json.dumps(doc).encode())
        except cni.CniError as exc:
            assert exc.code in (cni.DECODE_FAILURE, cni.INVALID_CONFIG, cni.INCOMPATIBLE_VERSION)


def test_environment() -> None:
    e = env()
    assert (e.command, e.container_id, e.ifname, e.args["K8S_POD_NAME"]) == ("ADD", CID, "eth0", "web")
    assert cni.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": CID, "CNI_IFNAME": "eth0"}).netns == ""
    for over, words in (({"CNI_COMMAND": "STATUS"}, "CNI_COMMAND"), ({"CNI_CONTAINERID": "../x"}, "CNI_CONTAINERID"),
                        ({"CNI_IFNAME": "x" * 16}, "CNI_IFNAME"), ({"CNI_NETNS": "c1"}, "CNI_NETNS"),
                        ({"CNI_ARGS": "novalue"}, "CNI_ARGS")):
        with pytest.raises(cni.CniError) as exc:
            env(**over)
        assert exc.value.code == cni.INVALID_ENVIRONMENT and words in exc.value.msg


def test_endpoint_names() -> None:
    assert cni.endpoint_name(env()) == "web"
    assert cni.endpoint_name(env(CNI_ARGS="")) == CID[:12]
    assert cni.endpoint_name(env(CNI_ARGS="K8S_POD_NAME=not/valid")) == CID[:12]
    assert cni.endpoint_name(env(CNI_IFNAME="net1")) == "web-net1"
    long = "x" * 63
    assert cni.endpoint_name(env(CNI_ARGS=f"K8S_POD_NAME={long}", CNI_IFNAME="net1")) == "x" * 58 + "-net1"


def test_request_and_result() -> None:
    conf = cni.parse_config(raw(runtimeConfig={"ips": ["10.0.0.9"]}))
    body = cni.endpoint_request(conf, env(), "web")
    assert body == {"name": "web", "network": "net", "netns_path": "/run/netns/c1", "ifname": "eth0",
                    "owner": f"cni:{CID}:eth0", "ip": "10.0.0.9"}
    with pytest.raises(cni.CniError, match="more than one IPv4"):
        cni.endpoint_request(cni.parse_config(raw(runtimeConfig={"ips": ["10.0.0.9", "10.0.0.8"]})), env(), "w")
    res = cni.result("1.0.0", EP)
    assert res["interfaces"] == [{"name": "bnv3"}, {"name": "eth0", "mac": EP["mac"], "sandbox": "/run/netns/c1"}]
    assert res["ips"] == [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 1},
                          {"address": "fd00::2/64", "interface": 1}]  # a link-local gateway is a route's only
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}, {"dst": "::/0", "gw": "fe80::1"}]
    assert [ip["version"] for ip in cni.result("0.4.0", EP)["ips"]] == ["4", "6"]
    v4only = {k: v for k, v in EP.items() if k not in ("ipv6", "gateway6")}
    assert len(cni.result("1.0.0", v4only)["routes"]) == 1
    assert res["dns"] == {}  # no resolver
    dns = {"nameservers": ["10.0.0.1"], "search": ["example.com"], "options": [], "upstreams": ["192.0.2.53"]}
    assert cni.result("1.0.0", dict(EP, dns=dns))["dns"] == {"nameservers": ["10.0.0.1"], "search": ["example.com"]}


def test_check_against_previous_result() -> None:
    prev = cni.result("1.0.0", EP)
    assert cni.check_against(prev, EP, "eth0") == []
    moved = dict(EP, ipv4="10.0.0.3/24", mac="02:42:0a:00:00:03")
    problems = cni.check_against(prev, moved, "eth0")
    assert any("10.0.0.2/24" in p for p in problems) and any("MAC" in p for p in problems)
    assert cni.check_against(prev, moved, "net1") == []  # about another interface


class FakeClient:
    """The daemon's API as the plugin uses it; ERRORS maps (method, path) to a ClientError."""

    def __init__(self, endpoints: list[dict[str, Any]] | None = None,
                 errors: dict[tuple[str, str], ClientError] | None = None) -> None:
        self.endpoints = list(endpoints or [])
        self.errors = dict(errors or {})
        self.calls: list[tuple[str, str]] = []

    def _maybe_fail(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        if (method, path) in self.errors:
            raise self.errors.pop((method, path))

    def get(self, path: str) -> Any:
        self._maybe_fail("GET", path)
        if path == "/v1/endpoints":
            return self.endpoints
        return {"problems": []}

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self._maybe_fail("POST", path)
        ep = dict(EP, name=body["name"], owner=body["owner"])
        self.endpoints.append(ep)
        return ep

    def delete(self, path: str) -> None:
        self._maybe_fail("DELETE", path)
        self.endpoints = [e for e in self.endpoints if f"/v1/endpoints/{e['name']}" != path]


def run(client: FakeClient, command: str = "ADD", stdin: bytes | None = None, **over: Any) -> tuple[int, Any]:
    return cni.Plugin(env(CNI_COMMAND=command, **over), raw() if stdin is None else stdin,
                      client=lambda host: client).run()  # type: ignore[arg-type, return-value]


def test_add_takes_another_name_when_the_container_name_is_taken() -> None:
    client = FakeClient(errors={("POST", "/v1/endpoints"): ClientError("endpoint 'web' already exists", 409)})
    status, doc = run(client)
    assert status == 0 and client.endpoints[0]["name"] == f"web-{CID[:12]}"
    status, doc = run(client)  # the same container and interface again
    assert status == 1 and doc["code"] == cni.DAEMON_REFUSED and "already has eth0" in doc["msg"]


@pytest.mark.parametrize("status, code", [(0, cni.TRY_AGAIN), (400, cni.INVALID_CONFIG), (404, cni.INVALID_CONFIG),
                                          (409, cni.DAEMON_REFUSED), (507, cni.DAEMON_REFUSED),
                                          (500, cni.DAEMON_REFUSED)])
def test_daemon_errors_become_cni_codes(status: int, code: int) -> None:
    client = FakeClient(errors={("POST", "/v1/endpoints"): ClientError("refused", status)})
    rc, doc = run(client)
    assert rc == 1 and doc["code"] == code and doc["msg"] == "refused"


def test_del_is_idempotent() -> None:
    client = FakeClient([dict(EP)])
    assert run(client, "DEL") == (0, None)
    assert client.endpoints == [] and ("DELETE", "/v1/endpoints/web") in client.calls
    assert run(client, "DEL") == (0, None)  # nothing left: still success
    gone = FakeClient([dict(EP)], errors={("DELETE", "/v1/endpoints/web"): ClientError("not found", 404)})
    assert run(gone, "DEL") == (0, None)  # removed meanwhile
    down = FakeClient(errors={("GET", "/v1/endpoints"): ClientError("cannot connect", 0)})
    assert run(down, "DEL")[1]["code"] == cni.TRY_AGAIN


def test_check() -> None:
    prev = cni.result("1.0.0", EP)
    ok = FakeClient([dict(EP)])
    assert run(ok, "CHECK", stdin=raw(prevResult=prev)) == (0, None)
    rc, doc = run(FakeClient([]), "CHECK", stdin=raw(prevResult=prev))
    assert rc == 1 and doc["code"] == cni.UNKNOWN_CONTAINER
    rc, doc = run(FakeClient([dict(EP, netns="/run/netns/other")]), "CHECK", stdin=raw(prevResult=prev))
    assert rc == 1 and "not /run/netns/c1" in doc["details"]


def test_main_writes_one_document() -> None:
    out = io.StringIO()
    assert cni.main({"CNI_COMMAND": "VERSION"}, io.StringIO('{"cniVersion": "0.4.0"}'), out) == 0
    assert json.loads(out.getvalue()) == {"cniVersion": "0.4.0", "supportedVersions": list(cni.SUPPORTED_VERSIONS)}
    out = io.StringIO()
    assert cni.main({"CNI_COMMAND": "NOPE"}, io.StringIO("{}"), out) == 1
    assert json.loads(out.getvalue())["code"] == cni.INVALID_ENVIRONMENT
    out = io.StringIO()
    assert cni.main({"CNI_COMMAND": "VERSION"}, io.StringIO("[1"), out) == 1
    assert json.loads(out.getvalue())["code"] == cni.DECODE_FAILURE
