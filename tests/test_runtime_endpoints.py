"""Endpoints made for container runtimes, and Docker's driver calls, over the fake kernel.

- external endpoints: a namespace someone else owns (``netns_path``), an interface name of the
  runtime's choice, an owner key; bpfnet never deletes the namespace;
- handoff endpoints: the peer left in the managed namespace for dockerd to move; reconcile and
  CHECK look only at the host side;
- held addresses (Docker's IPAM hands out an address before CreateEndpoint);
- ``bpfnet.plugins.docker``: every call of the protocol as dockerd sends it, errors in Docker's form,
  and nothing half-made when a step fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bpfnet.errors import Conflict, InvalidArgument, NotFound
from bpfnet.plugins import docker
from fakes import FakeNetns, InjectedFault
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_services import Env, make_env

NID = "3f2a9c81d0e4" + "ab" * 26  # 64 hex characters, as Docker's ids
EID = "9b8c7d6e5f40" + "cd" * 26
CPATH = "/run/netns/cni-1"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = make_env(tmp_path)
    e.nets.create({"name": "n6", "subnet4": "10.2.0.0/24", "subnet6": "fd00:2::/64"})
    e.kernel.namespaces[CPATH] = FakeNetns()  # a container's namespace, by path
    yield e
    e.store.close()


# external endpoints ----------------------------------------------------------------------
def test_external_endpoint_in_a_runtime_namespace(env: Env) -> None:
    ep = env.eps.add({"name": "c1", "network": "n6", "netns_path": CPATH, "ifname": "net1", "owner": "cni:x:net1"})
    assert (ep["netns"], ep["ifname"], ep["owner"], ep["adopted_netns"]) == (CPATH, "net1", "cni:x:net1", True)
    (iface,) = env.kernel.namespaces[CPATH].links.values()
    assert iface.name == "net1" and ("10.2.0.2", 24) in iface.addresses and iface.up
    assert env.eps.check("c1") == {"name": "c1", "ok": True, "problems": []}
    assert env.eps.by_owner("cni:x:net1")["name"] == "c1"  # type: ignore[index]
    with pytest.raises(Conflict, match="already exists for cni:x:net1"):
        env.eps.add({"name": "c2", "network": "n6", "netns_path": CPATH, "ifname": "net2", "owner": "cni:x:net1"})
    with pytest.raises(Conflict, match="net1 in namespace /run/netns/cni-1 already belongs to endpoint 'c1'"):
        env.eps.add({"name": "c3", "network": "n6", "netns_path": CPATH, "ifname": "net1"})
    env.eps.add({"name": "c4", "network": "n6", "netns_path": CPATH})  # eth0 beside it
    iface.addresses.clear()  # someone removes the address: CHECK reports, repairs nothing
    problems = env.eps.check("c1")["problems"]
    assert problems == ["address 10.2.0.2/24 is missing on net1", f"address {ep['ipv6'][0]} is missing on net1"]
    assert not iface.addresses
    env.eps.remove("c1")
    env.eps.remove("c4")
    assert CPATH in env.kernel.namespaces and not env.kernel.namespaces[CPATH].links  # the runtime's stays


def test_external_namespace_refusals(env: Env) -> None:
    env.kernel.namespaces[env.kernel.managed_path] = FakeNetns()  # it exists, and it is the daemon's
    before = env.state()
    for data, error, words in (
        ({"netns_path": "/run/netns/none"}, NotFound, "does not exist"),
        ({"netns_path": env.kernel.managed_path}, InvalidArgument, "the daemon's host namespace"),
        ({"netns_path": "relative"}, InvalidArgument, "not an absolute path"),
        ({"netns_path": CPATH, "netns": "x"}, InvalidArgument, "exclude each other"),
        ({"handoff": True, "netns_path": CPATH}, InvalidArgument, "handoff excludes"),
        ({"ifname": "lo"}, InvalidArgument, "ifname lo is reserved"),
        ({"ifname": "all"}, InvalidArgument, "ifname all is reserved"),
        ({"ifname": ".."}, InvalidArgument, "invalid ifname"),
        ({"handoff": True, "ifname": "bnv7"}, InvalidArgument, "ifname bnv7 is reserved"),
        ({"handoff": True, "ifname": "br-n6"}, Conflict, "already exists in the managed namespace"),
    ):
        with pytest.raises(error, match=words):
            env.eps.add({"name": "r", "network": "n6", **data})
    assert env.state() == before


def test_a_failed_external_add_leaves_the_namespace_alone(env: Env) -> None:
    before = env.state()
    env.kernel.fail_ops = {"configure_interface"}
    with pytest.raises(InjectedFault):
        env.eps.add({"name": "c1", "network": "n6", "netns_path": CPATH, "owner": "cni:y:eth0"})
    assert env.state() == before and CPATH in env.kernel.namespaces


# handoff endpoints and held addresses --------------------------------------------------------
def test_handoff_endpoint_and_its_reconcile(env: Env) -> None:
    ep = env.eps.add({"name": "h1", "network": "n6", "handoff": True, "owner": "docker:e1"})
    assert ep["handoff"] and ep["ifname"] == "bnv0p" and ep["netns"] == ""
    peer = env.kernel.links["bnv0p"]  # beside its host end, unconfigured: dockerd moves and configures it
    assert peer.mac == ep["mac"] and not peer.addresses
    # dockerd moved it away: reconcile and CHECK look only at the host side
    del env.kernel.links["bnv0p"]
    assert env.reconciler().endpoints()["reclaimed"] == 0
    assert env.eps.check("h1")["ok"]
    env.kernel.links["bnv0"].up = False
    assert env.eps.check("h1")["problems"] == ["host veth bnv0 is down"]
    assert env.reconciler().endpoints()["repaired"] == 1 and env.kernel.links["bnv0"].up
    with pytest.raises(InvalidArgument, match="not an absolute path"):
        env.eps.joined("h1", "netns/c")
    env.eps.joined("h1", "/var/run/docker/netns/c")  # need not exist yet: runc makes it later
    assert env.eps.inspect("h1")["netns"] == "/var/run/docker/netns/c" and env.eps.check("h1")["ok"]
    env.eps.remove("h1")
    assert "bnv0" not in env.kernel.links and env.store.leases() == []
    env.eps.add({"name": "plain", "network": "n6"})
    with pytest.raises(InvalidArgument, match="not a handoff endpoint"):
        env.eps.joined("plain", "")


def test_held_addresses(env: Env) -> None:
    held = env.eps.hold_address("n6", 4)
    assert str(held) == "10.2.0.2"
    other = env.eps.add({"name": "x", "network": "n6"})
    assert other["ipv4"] == "10.2.0.3/24"  # never a held address
    with pytest.raises(Conflict):
        env.eps.hold_address("n6", 4, "10.2.0.3")
    six = env.eps.hold_address("n6", 6)
    ep = env.eps.add({"name": "h", "network": "n6", "ip": str(held), "ip6": str(six), "handoff": True})
    assert ep["ipv4"] == "10.2.0.2/24" and ep["ipv6"] == [f"{six}/64"]  # claimed
    assert not env.eps.release_held("n6", str(held))  # an endpoint's: never released by the IPAM
    again = env.eps.hold_address("n6", 4)
    assert env.eps.release_held("n6", str(again)) and str(env.eps.hold_address("n6", 4)) == str(again)
    env.nets.create({"name": "v4", "subnet4": "10.3.0.0/24"})
    with pytest.raises(InvalidArgument, match="no IPv6 subnet"):
        env.eps.hold_address("v4", 6)


# Docker's protocol ----------------------------------------------------------------------------
def call(plugin: docker.DockerPlugin, path: str, body: dict[str, Any] | bytes | None = None) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    status, doc, _ = plugin.handle("POST", path, raw)
    return status, doc


def ok(plugin: docker.DockerPlugin, path: str, body: dict[str, Any] | None = None) -> Any:
    status, doc = call(plugin, path, body or {})
    assert status == 200 and "Err" not in doc, (path, doc)
    return doc


def test_docker_network_and_container_lifecycle(env: Env) -> None:
    p = docker.DockerPlugin(env.nets, env.eps)
    assert ok(p, "/Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert ok(p, "/NetworkDriver.GetCapabilities") == {"Scope": "local", "ConnectivityScope": "local"}
    assert ok(p, "/IpamDriver.GetDefaultAddressSpaces")["LocalDefaultAddressSpace"] == "bpfnet"
    pool4 = ok(p, "/IpamDriver.RequestPool", {"AddressSpace": "bpfnet", "Pool": "10.9.0.0/24"})
    pool6 = ok(p, "/IpamDriver.RequestPool", {"Pool": "fd00:9::/64", "V6": True})
    assert (pool4["PoolID"], pool6["PoolID"]) == ("bpfnet:10.9.0.0/24", "bpfnet:fd00:9::/64")
    gw = ok(p, "/IpamDriver.RequestAddress", {"PoolID": pool4["PoolID"],
                                              "Options": {"RequestAddressType": docker.GATEWAY_REQUEST}})
    assert gw["Address"] == "10.9.0.1/24"
    ok(p, "/NetworkDriver.CreateNetwork", {
        "NetworkID": NID, "Options": {docker.GENERIC: {"icc": "false", "com.docker.network.driver.mtu": "1400"},
                                      docker.ENABLE_IPV6: True},
        "IPv4Data": [{"AddressSpace": "bpfnet", "Pool": "10.9.0.0/24", "Gateway": gw["Address"]}],
        "IPv6Data": [{"AddressSpace": "bpfnet", "Pool": "fd00:9::/64", "Gateway": "fd00:9::1/64"}]})
    net = env.nets.describe(env.nets.config(NID[:12])[0])
    assert (net["bridge"], net["icc"], net["mtu"], net["ipv6"]) == (f"br-{NID[:12]}", False, 1400, True)
    a4 = ok(p, "/IpamDriver.RequestAddress", {"PoolID": pool4["PoolID"]})["Address"]
    a6 = ok(p, "/IpamDriver.RequestAddress", {"PoolID": pool6["PoolID"]})["Address"]
    assert a4 == "10.9.0.2/24" and a6.endswith("/64")
    res = ok(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                                  "Interface": {"Address": a4, "AddressIPv6": a6}, "Options": {}})
    ep = env.eps.by_owner(f"docker:{EID}")
    assert ep is not None and ep["name"] == EID[:12] and ep["handoff"]
    assert res == {"Interface": {"MacAddress": ep["mac"]}}  # only what Docker did not give
    join = ok(p, "/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID, "SandboxKey": "/var/run/docker/netns/x"})
    assert env.eps.by_owner(f"docker:{EID}")["netns"] == "/var/run/docker/netns/x"  # type: ignore[index]
    assert join == {"InterfaceName": {"SrcName": ep["ifname"], "DstPrefix": "eth"}, "Gateway": "10.9.0.1",
                    "GatewayIPv6": "fe80::1", "StaticRoutes": [], "DisableGatewayService": False}
    assert ok(p, "/NetworkDriver.EndpointOperInfo", {"NetworkID": NID, "EndpointID": EID})["Value"][
        "bpfnet.endpoint"] == EID[:12]
    assert ok(p, "/NetworkDriver.Leave", {"NetworkID": NID, "EndpointID": EID}) == {}
    assert env.eps.by_owner(f"docker:{EID}")["netns"] == ""  # type: ignore[index]  # back beside bnv0
    for path in ("/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete",
                 "/NetworkDriver.ProgramExternalConnectivity", "/NetworkDriver.RevokeExternalConnectivity",
                 "/NetworkDriver.FreeNetwork", "/IpamDriver.ReleasePool"):
        assert ok(p, path, {"NetworkID": NID, "EndpointID": EID}) == {}
    _, doc = call(p, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert EID[:12] in doc["Err"]  # refused while the container is on it, naming its endpoint
    ok(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})
    ok(p, "/NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EID})  # idempotent
    ok(p, "/IpamDriver.ReleaseAddress", {"PoolID": pool4["PoolID"], "Address": a4})
    assert env.eps.by_owner(f"docker:{EID}") is None and env.store.leases() == []
    ok(p, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    ok(p, "/NetworkDriver.DeleteNetwork", {"NetworkID": NID})  # idempotent
    ok(p, "/IpamDriver.ReleaseAddress", {"PoolID": pool4["PoolID"], "Address": "10.9.0.1/24"})  # network gone
    assert [n["name"] for n in env.nets.list_all()] == ["n6"]


def test_docker_release_frees_a_held_address(env: Env) -> None:
    p = docker.DockerPlugin(env.nets, env.eps)
    first = ok(p, "/IpamDriver.RequestAddress", {"PoolID": "bpfnet:10.2.0.0/24"})["Address"]
    ok(p, "/IpamDriver.ReleaseAddress", {"PoolID": "bpfnet:10.2.0.0/24", "Address": first})
    assert ok(p, "/IpamDriver.RequestAddress", {"PoolID": "bpfnet:10.2.0.0/24"})["Address"] == first


@pytest.mark.parametrize("path, body, words", [
    ("/IpamDriver.RequestPool", {"Pool": ""}, "needs --subnet"),
    ("/IpamDriver.RequestPool", {"Pool": "10.9.0.0/24", "SubPool": "10.9.0.0/25"}, "--ip-range"),
    ("/IpamDriver.RequestPool", {"Pool": "127.0.0.0/8"}, "--subnet"),
    ("/IpamDriver.RequestAddress", {"PoolID": "default/10.0.0.0/8"}, "not one of bpfnet's"),
    ("/IpamDriver.RequestAddress", {"PoolID": "bpfnet:10.77.0.0/24"}, "no bpfnet network has the subnet"),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "IPv4Data": []}, "exactly one IPv4 subnet"),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {docker.GENERIC: {"color": "blue"}},
                                      "IPv4Data": [{"Pool": "10.9.0.0/24"}]}, "not an option"),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {docker.GENERIC: {"icc": "maybe"}},
                                      "IPv4Data": [{"Pool": "10.9.0.0/24"}]}, "expected true or false"),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": NID, "Options": {docker.ENABLE_IPV6: True},
                                      "IPv4Data": [{"Pool": "10.9.0.0/24"}]}, "IPv6 --subnet"),
    ("/NetworkDriver.CreateNetwork", {"NetworkID": "../x", "IPv4Data": [{"Pool": "10.9.0.0/24"}]}, "NetworkID"),
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {}}, "IPv4 address"),
    ("/NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID}, "not one of bpfnet's"),
    ("/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "nope"}},
     "Interface.Address 'nope' is not an address"),
    ("/NetworkDriver.CreateNetwork", b"{nope", "the body: Invalid JSON"),
    ("/NetworkDriver.CreateNetwork", b"[]", "the body: Input should be an object"),
    ("/NetworkDriver.CreateNetwork", b'{"IPv4Data": [{"Pool": 7}]}', "IPv4Data.0.Pool: Input should be a valid string"),
    ("/NetworkDriver.CreateNetwork", b'{"NetworkID": "ab", "IPv4Data": [{"Pool": "10.9.0.0/24", "Gateway": "x"}]}',
     "IPv4Data.Gateway 'x' is not an address"),
    ("/IpamDriver.ReleaseAddress", {"PoolID": "bpfnet:10.2.0.0/24", "Address": "nope"}, "Address 'nope'"),
])
def test_docker_refusals_are_err_documents(env: Env, path: str, body: Any, words: str) -> None:
    before = env.state()
    status, doc = call(docker.DockerPlugin(env.nets, env.eps), path, body)
    assert status == 200 and words in doc["Err"] and doc["Error"] == doc["Err"], doc
    assert env.state() == before and [n["name"] for n in env.nets.list_all()] == ["n6"]


def test_docker_unknown_call_is_404() -> None:
    status, doc, _ = docker.DockerPlugin(None, None).handle("POST", "/NetworkDriver.Teleport", b"{}")  # type: ignore[arg-type]
    assert status == 404 and "not implemented" in doc["Err"]


def test_docker_create_endpoint_rolls_back(env: Env) -> None:
    p = docker.DockerPlugin(env.nets, env.eps)
    before = env.state()
    env.kernel.fail_ops = {"set_up"}
    _, doc = call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                                       "Interface": {"Address": "10.2.0.9/24"}})
    assert "not found" in doc["Err"]  # no such network: nothing made
    env.nets.create({"name": NID[:12], "subnet4": "10.4.0.0/24"})
    before = env.state()
    _, doc = call(p, "/NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID,
                                                       "Interface": {"Address": "10.4.0.9/24"}})
    assert "injected fault in set_up" in doc["Err"]
    assert env.state() == before and env.eps.by_owner(f"docker:{EID}") is None


_KEYS = ("NetworkID", "EndpointID", "PoolID", "Pool", "SubPool", "V6", "Address", "Options", "Interface",
         "IPv4Data", "IPv6Data", "SandboxKey", "MacAddress", "AddressIPv6", "Gateway", "RequestAddressType")
_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                       | st.sampled_from([NID, EID, "bpfnet:10.2.0.0/24", "10.2.0.7/24", "fd00:2::9", "10.9.0.0/24",
                                          docker.GATEWAY_REQUEST]),
                       lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(_KEYS), inner,
                                                                                   max_size=4), max_leaves=8)
_BODIES = st.binary(max_size=100) | st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6).map(
    lambda d: json.dumps(d).encode())


@given(_BODIES, st.sampled_from(sorted(docker.DockerPlugin(None, None).handlers)))  # type: ignore[arg-type]
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_docker_any_body_is_an_answer_never_a_crash(env: Env, body: bytes, path: str) -> None:
    """Whatever dockerd (or anyone on the socket) sends, the answer is a document; errors carry Err."""
    before = [n["name"] for n in env.nets.list_all()]
    status, doc, _ = docker.DockerPlugin(env.nets, env.eps).handle("POST", path, body)
    assert status == 200 and isinstance(doc, dict)
    if "Err" in doc:
        assert doc["Err"] and "\n" not in doc["Err"] and not doc["Err"].startswith("internal error")
    assert [n["name"] for n in env.nets.list_all()] == before


def test_docker_network_options_map_to_bpfnet_settings() -> None:
    req = docker.NetworkRequest(NetworkID=NID, Options={docker.GENERIC: {
        "com.docker.network.bridge.enable_icc": "false", "mtu": 1450, "com.docker.network.bridge.name": "dk0"}},
        IPv4Data=[docker.IpamData(Pool="10.9.0.0/24", Gateway="10.9.0.254/24")])
    body = docker.network_request(req)
    assert (body["name"], body["icc"], body["mtu"], body["bridge"], body["gateway4"]) == (
        NID[:12], False, 1450, "dk0", "10.9.0.254")
    assert docker.network_request(docker.NetworkRequest(NetworkID=NID, IPv4Data=[docker.IpamData(
        Pool="10.9.0.0/24")]))["icc"] is True  # Docker's default
