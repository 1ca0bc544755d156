"""bpfnet.outside without a daemon: the --publish parser, the ruleset, and the service's policy.

The parser and the collision rule get hypothesis properties; the rendered ruleset is checked
by the kernel itself (``nft -c``: parsed and validated by nf_tables without being committed)
in a namespace the test makes; the service runs against the fake kernel of the services'
tests plus a fake ``OutsideKernel`` that can refuse a transaction.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from pathlib import Path

import pytest
from bpfnet.errors import Conflict, Exhausted, InvalidArgument
from bpfnet.outside import ruleset
from bpfnet.outside.nft import NftError
from bpfnet.outside.ports import (
    EPHEMERAL,
    MAX_RANGE,
    PortChoice,
    PortMapping,
    assign,
    first_collision,
    parse_all,
    parse_publish,
    parse_spec,
)
from bpfnet.outside.service import OutsideService, OutsideSettings
from helpers import delete_netns, is_root, unique_tag
from hypothesis import given
from hypothesis import strategies as st
from test_services import Env, make_env


# -- the parser -------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "want"), [
    ("8080:80", [PortMapping("tcp", 8080, 80)]),
    ("8080:80/udp", [PortMapping("udp", 8080, 80)]),
    ("8080:80/TCP", [PortMapping("tcp", 8080, 80)]),
    ("127.0.0.1:5353:53/udp", [PortMapping("udp", 5353, 53, IPv4Address("127.0.0.1"))]),
    ("[2001:db8::1]:443:8443", [PortMapping("tcp", 443, 8443, IPv6Address("2001:db8::1"))]),
    ("0.0.0.0:80:80", [PortMapping("tcp", 80, 80)]),
    ("[::]:80:80", [PortMapping("tcp", 80, 80)]),
    ("8000-8002:80-82", [PortMapping("tcp", 8000 + i, 80 + i) for i in range(3)]),
])
def test_parse(spec: str, want: list[PortMapping]) -> None:
    assert parse_publish(spec) == want


@pytest.mark.parametrize(("spec", "words"), [
    ("", "expected"), ("80", "no host port"), ("1:2:3:4", "brackets"), ("x:1:2", "IPv4 address"), ("a:80", "not a port"),
    ("0:80", "out of range"), ("65536:80", "out of range"), ("80:70000", "out of range"),
    ("80:80/sctp", "not tcp or udp"), ("80:80/", "not tcp or udp"), ("90-80:90-80", "ends before"),
    ("8000-8003:80-81", "differ in length"), ("8000-8003:80", "no host port"),
    ("80-81", "same length"), ("[2001:db8::1]:80", "[ADDRESS]:[HOST_PORT]"), ("2001:db8::1:80:80", "brackets"),
    ("[2001:db8::1]80:80", "[ADDRESS]:PORT"), ("[nope]:80:80", "not an IPv6 address"),
    ("224.0.0.1:80:80", "multicast"), (f"1-{MAX_RANGE + 1}:1-{MAX_RANGE + 1}", f"at most {MAX_RANGE}"),
])
def test_parse_refuses(spec: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_publish(spec)
    assert words in err.value.message and "\n" not in err.value.message


HOSTS = st.one_of(st.none(), st.sampled_from([IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"),
                                              IPv6Address("2001:db8::1")]))
MAPPINGS = st.builds(PortMapping, st.sampled_from(["tcp", "udp"]), st.integers(1, 4), st.integers(1, 65535),
                     HOSTS)


@given(st.sampled_from(["tcp", "udp"]), st.integers(1, 65535), st.integers(1, 65535), HOSTS)
def test_spec_round_trips(proto: str, host_port: int, ep_port: int, host: IPv4Address | IPv6Address | None) -> None:
    m = PortMapping(proto, host_port, ep_port, host)
    assert parse_publish(str(m)) == [m]
    assert PortMapping.from_json(m.to_json()) == m


@given(MAPPINGS, MAPPINGS)
def test_collision_is_symmetric_and_means_a_shared_socket(a: PortMapping, b: PortMapping) -> None:
    assert a.collides(b) == b.collides(a)
    same_port = (a.proto, a.host_port) == (b.proto, b.host_port)
    shared = bool(set(a.families) & set(b.families)) and (a.host_ip is None or b.host_ip is None
                                                            or a.host_ip == b.host_ip)
    assert a.collides(b) == (same_port and shared)
    assert a.collides(a)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_in_one_line(text: str) -> None:
    try:
        out = parse_publish(text)
    except InvalidArgument as exc:
        assert "\n" not in exc.message.replace(repr(text), "")
    else:
        assert out and all(1 <= m.host_port <= 65535 and m.proto in ("tcp", "udp") for m in out)


def test_collisions_within_a_request_and_with_others() -> None:
    with pytest.raises(InvalidArgument, match="same request"):
        parse_all(["8080:80", "127.0.0.1:8080:81"])
    assert parse_all(["8080:80", "8080:80/udp", "127.0.0.1:8081:80", "127.0.0.2:8081:80"])
    mine = parse_all(["[2001:db8::1]:8080:80"])
    assert first_collision(mine, [("a", PortMapping("tcp", 8080, 80, IPv4Address("10.0.0.1")))]) is None
    assert first_collision(mine, [("a", PortMapping("tcp", 8080, 80))]) is not None


@pytest.mark.parametrize(("spec", "want"), [
    ("80", PortChoice("tcp", *EPHEMERAL, 80)),
    ("53/udp", PortChoice("udp", *EPHEMERAL, 53)),
    ("127.0.0.1::80", PortChoice("tcp", *EPHEMERAL, 80, IPv4Address("127.0.0.1"))),
    ("[2001:db8::1]::80", PortChoice("tcp", *EPHEMERAL, 80, IPv6Address("2001:db8::1"))),
    ("8000-8010:80", PortChoice("tcp", 8000, 8010, 80)),
])
def test_docker_forms_leave_the_host_port_to_bpfnet(spec: str, want: PortChoice) -> None:
    assert parse_spec(spec) == want


def test_assign_picks_the_first_free_port_of_the_range() -> None:
    taken = [PortMapping("tcp", 8000, 1), PortMapping("tcp", 8001, 1, IPv4Address("10.0.0.1"))]
    assert assign(["8000-8003:80"], taken) == [PortMapping("tcp", 8002, 80)]
    # the request's own named ports count as taken, whatever the order of the specs
    assert assign(["8000-8003:80", "8002:81"], taken) == [PortMapping("tcp", 8002, 81), PortMapping("tcp", 8003, 80)]
    # another family's address or protocol does not take the port
    assert assign(["10.0.0.2:8000-8003:80"], taken) == [PortMapping("tcp", 8001, 80, IPv4Address("10.0.0.2"))]
    assert assign(["8000-8001:80/udp"], taken) == [PortMapping("udp", 8000, 80)]
    assert assign(["80"], [])[0].host_port == EPHEMERAL[0]
    with pytest.raises(Exhausted, match="no free host port in 8000-8001"):
        assign(["8000-8001:80"], taken)


@given(st.lists(MAPPINGS, max_size=6), st.lists(st.sampled_from(["1-4:80", "2-3:81/udp", "80"]), max_size=4))
def test_assigned_ports_never_collide(published: list[PortMapping], specs: list[str]) -> None:
    try:
        out = assign(specs, published)
    except Exhausted:
        return
    assert len(out) == len(specs)
    for i, m in enumerate(out):
        assert not any(m.collides(p) for p in published)
        assert not any(m.collides(o) for o in out[i + 1:])


# -- the ruleset ---------------------------------------------------------------------------------
def _plan(**kw: object) -> ruleset.Plan:
    nets = (
        ruleset.NetworkPlan("bridge", 1, "bpfnet0", IPv4Network("172.17.0.0/16"), IPv6Network("fd00:1::/64"),
                            True, False),
        ruleset.NetworkPlan("quiet", 2, "br-quiet", IPv4Network("10.2.0.0/24"), None, False, False),
        ruleset.NetworkPlan("intl", 3, "br-intl", IPv4Network("10.3.0.0/24"), None, True, True),
    )
    pubs = (
        ruleset.PublishPlan("web", "bpfnet0", PortMapping("tcp", 8080, 80), IPv4Address("172.17.0.2"),
                            IPv6Address("fd00:1::2")),
        ruleset.PublishPlan("web", "bpfnet0", PortMapping("udp", 53, 53, ip_address("127.0.0.1")),
                            IPv4Address("172.17.0.2"), IPv6Address("fd00:1::2")),
        ruleset.PublishPlan("q", "br-quiet", PortMapping("tcp", 9000, 90, ip_address("2001:db8::1")),
                            IPv4Address("10.2.0.2"), None),
    )
    return ruleset.Plan(nets, pubs, **kw)  # type: ignore[arg-type]


def test_masquerading_follows_flags_network_settings_and_internal() -> None:
    both = ruleset.rules(_plan(masquerade4=True, masquerade6=True))["postrouting"]
    assert 'ip saddr 172.17.0.0/16 oifname != @bridges masquerade' in both
    assert any(r.startswith("ip6 saddr fd00:1::/64 oifname !=") for r in both)
    assert not any("10.2.0.0/24 oifname" in r or "10.3.0.0/24" in r for r in both)  # no-masquerade, internal
    assert not any(r.startswith("ip saddr") for r in ruleset.rules(_plan(masquerade4=False))["postrouting"])
    assert not any(r.startswith("ip6 saddr") for r in ruleset.rules(_plan())["postrouting"])


def test_publish_rules_and_counters() -> None:
    plan = _plan()
    pub = ruleset.rules(plan)["publish"]
    assert "meta nfproto ipv4 tcp dport 8080 counter name \"pp_tcp_8080_all_conn\" dnat ip to 172.17.0.2:80" in pub
    assert any("dnat ip6 to [fd00:1::2]:80" in r for r in pub)
    assert any(r.startswith("ip daddr 127.0.0.1 udp dport 53") for r in pub)
    assert not any("127.0.0.1" in r and "ip6" in r for r in pub)
    assert not any("9000" in r for r in pub)  # an IPv6 host address, an endpoint without IPv6
    names = ruleset.counters(plan)
    assert "pp_udp_53_127_0_0_1_in" in names and "masq_1_out" in names and "masq_2_out" not in names
    script = ruleset.render(plan, ["pp_tcp_1_all_in", "masq_1_out"])
    assert "delete counter inet bpfnet pp_tcp_1_all_in" in script
    assert "delete counter inet bpfnet masq_1_out" not in script
    assert script.index("flush table inet bpfnet") < script.index("add rule")


needs_nft = pytest.mark.skipif(not is_root() or shutil.which("nft") is None, reason="needs root and nft")


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    name = unique_tag() + "-nft"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        delete_netns(name)


def _nft(ns: str, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], input=script, capture_output=True,
                          text=True, check=False, timeout=30)


@needs_nft
@pytest.mark.kernel
def test_the_kernel_takes_the_ruleset_and_a_rebuild_keeps_counters(scratch_ns: str) -> None:
    for plan in (_plan(), _plan(masquerade6=True), ruleset.Plan()):
        r = _nft(scratch_ns, "-c", "-f", "-", script=ruleset.render(plan))
        assert r.returncode == 0, r.stderr
    # a counter that has counted (set by hand: no traffic here) keeps its value through a rebuild
    seed = ("add table inet bpfnet\nadd counter inet bpfnet pp_tcp_8080_all_conn { packets 7 bytes 70 }\n"
            "add counter inet bpfnet stale { packets 1 bytes 1 }\n")
    assert _nft(scratch_ns, "-f", "-", script=seed).returncode == 0
    assert _nft(scratch_ns, "-f", "-", script=ruleset.render(_plan(), ["stale"])).returncode == 0
    assert _nft(scratch_ns, "-f", "-", script=ruleset.render(_plan(), [])).returncode == 0
    listing = _nft(scratch_ns, "list", "table", "inet", "bpfnet").stdout
    assert "stale" not in listing
    assert "counter pp_tcp_8080_all_conn {\n\t\tpackets 7 bytes 70" in listing
    assert _nft(scratch_ns, "-f", "-", script=ruleset.delete_script()).returncode == 0
    assert "bpfnet" not in _nft(scratch_ns, "list", "tables").stdout


# -- the service, with fake kernels -------------------------------------------------------------------
class FakeNft:
    """OutsideKernel in memory: the last script applied, counters by name, a switch to refuse."""

    def __init__(self) -> None:
        self.script = ""
        self.applied = 0
        self.refuse = False
        self.addresses: set[IPv4Address | IPv6Address] = {IPv4Address("198.51.100.1"), IPv4Address("127.0.0.1")}
        self.sysctls: dict[str, str] = {}
        self.deleted = False

    def unusable(self) -> str | None:
        return None

    def apply(self, script: str) -> None:
        if self.refuse:
            raise NftError("nft refused bpfnet's ruleset: injected")
        self.script, self.applied = script, self.applied + 1

    def table_exists(self) -> bool:
        return bool(self.script)

    def counters(self) -> dict[str, tuple[int, int]]:
        return {line.split()[-1]: (1, 100) for line in self.script.splitlines() if line.startswith("add counter")}

    def chains(self) -> list[str]:
        return [line.split()[4] for line in self.script.splitlines() if line.startswith("add chain")]

    def delete_table(self) -> bool:
        self.deleted, self.script = True, ""
        return True

    def local_addresses(self) -> set[IPv4Address | IPv6Address]:
        return set(self.addresses)

    def links(self) -> dict[int, str]:
        return {1: "lo", 2: "eth0", 3: "br-n4", 4: "veth-x", 5: "up1"}

    def addressed_links(self) -> set[int]:
        return {1, 2, 3, 5}

    def write_sysctls(self, sysctls: Mapping[str, str]) -> None:
        self.sysctls.update(sysctls)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[tuple[Env, FakeNft, OutsideService]]:
    e = make_env(tmp_path)
    e.datapath.mode = "redirect-peer"  # what enforces internal networks (the fake keeps no programs)
    nft = FakeNft()
    svc = OutsideService(e.rt, nft, OutsideSettings())
    e.nets.outside = e.eps.outside = svc
    e.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"}, is_default=True)
    e.nets.create({"name": "in", "subnet4": "10.9.0.0/24", "internal": True})
    svc.start()
    yield e, nft, svc
    e.store.close()


def test_publish_is_stored_applied_shown_and_removed(outside: tuple[Env, FakeNft, OutsideService]) -> None:
    e, nft, svc = outside
    ep = e.eps.add({"name": "web", "publish": ["8080:80", "198.51.100.1:53:53/udp"]})
    assert [p["host_port"] for p in ep["published"]] == [8080, 53]
    assert "dnat ip to 10.1.0.2:80" in nft.script and nft.sysctls["net/ipv4/conf/br-n4/route_localnet"] == "1"
    counters = svc.counters()
    assert {p["host_port"] for p in counters["ports"]} == {8080, 53}
    assert counters["masquerade"] == [{"network": "n4", "out_bytes": 100, "out_packets": 1, "in_bytes": 100,
                                       "in_packets": 1}]
    e.eps.remove("web")
    assert "dnat ip" not in nft.script and e.store.published_ports() == []


@pytest.mark.parametrize(("body", "error", "words"), [
    ({"publish": ["8080:80"]}, Conflict, "already published as 8080:80/tcp by endpoint 'first'"),
    ({"publish": ["198.51.100.1:8080:80"]}, Conflict, "already published"),
    ({"publish": ["203.0.113.1:9000:80"]}, InvalidArgument, "has no address 203.0.113.1"),
    ({"publish": ["9000:80/sctp"]}, InvalidArgument, "not tcp or udp"),
    ({"publish": ["9000:80"], "network": "in"}, InvalidArgument, "is internal"),
    ({"publish": "9000:80"}, InvalidArgument, "list of strings"),
])
def test_refusals_change_nothing(outside: tuple[Env, FakeNft, OutsideService], body: dict[str, object],
                                 error: type[Exception], words: str) -> None:
    e, nft, _ = outside
    e.eps.add({"name": "first", "publish": ["8080:80"]})
    before, script, applied = e.state(), nft.script, nft.applied
    with pytest.raises(error) as err:
        e.eps.add({"name": "second", **body})
    assert words in str(err.value)
    assert (e.state(), nft.script, nft.applied) == (before, script, applied)
    assert [row[0] for row in e.store.published_ports()] == ["first"]


def test_a_refused_transaction_rolls_the_endpoint_back(outside: tuple[Env, FakeNft, OutsideService]) -> None:
    e, nft, _ = outside
    before = e.state()
    nft.refuse = True
    with pytest.raises(NftError):
        e.eps.add({"name": "web", "publish": ["8080:80"]})
    assert e.state() == before and e.store.published_ports() == []


def test_networks_resync_and_cleanup_deletes_the_table(outside: tuple[Env, FakeNft, OutsideService]) -> None:
    e, nft, svc = outside
    e.nets.create({"name": "more", "subnet4": "10.5.0.0/24"})
    assert "ip saddr 10.5.0.0/24" in nft.script and "10.9.0.0/24 oifname" not in nft.script
    e.nets.remove("more")
    assert "10.5.0.0/24" not in nft.script
    info = svc.info()
    assert info["mechanism"] == "nftables table inet bpfnet + BPF fast path (uplink_ingress)" and info["installed"]
    assert svc.cleanup() and nft.deleted and not svc.info()["installed"]


def test_ip_forward_false_leaves_forwarding_alone(tmp_path: Path) -> None:
    e = make_env(tmp_path, ip_forward=False)
    nft = FakeNft()
    svc = OutsideService(e.rt, nft, OutsideSettings(ip_forward=False))
    e.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"})
    svc.start()
    assert "net/ipv4/ip_forward" not in e.kernel.sysctls and "net/ipv4/ip_forward" not in nft.sysctls
    e.store.close()


def test_internal_needs_an_ebpf_datapath(tmp_path: Path) -> None:
    e = make_env(tmp_path)  # the fake datapath runs bridge mode
    with pytest.raises(InvalidArgument, match="needs an eBPF datapath"):
        e.nets.create({"name": "in", "subnet4": "10.9.0.0/24", "internal": True})
    assert e.store.networks() == [] and not e.kernel.links
    e.store.close()


# -- the fast path's entries (bpf/nat.h), as the service hands them to the datapath -----------------
def test_fast_path_gets_ports_slots_and_uplinks(outside: tuple[Env, FakeNft, OutsideService]) -> None:
    e, nft, svc = outside
    dp = e.datapath
    assert dp.ports == [] and dp.uplink_devs == {}  # nothing published: no uplink program
    e.eps.add({"name": "web", "publish": ["8080:80", "198.51.100.1:53:53/udp"]})
    ports = {(p.proto, p.family, p.host_port, str(p.host_ip), str(p.endpoint_addr), p.endpoint_port, p.slot)
             for p in dp.ports}
    assert ports == {("tcp", 4, 8080, "None", "10.1.0.2", 80, 0), ("udp", 4, 53, "198.51.100.1", "10.1.0.2", 53, 1)}
    assert {p.endpoint_id for p in dp.ports} == {e.store.endpoint("web").id}
    # every interface with an address but lo and the bridges
    assert dp.uplink_devs == {2: "eth0", 5: "up1"}
    assert nft.sysctls["net/netfilter/nf_conntrack_tcp_be_liberal"] == "1"
    # a second endpoint: the first one's slots stay, the new mapping gets a slot no entry had
    e.eps.add({"name": "api", "publish": ["9000:90"]})
    assert {(p.host_port, p.slot) for p in dp.ports} == {(8080, 0), (53, 1), (9000, 2)}
    e.eps.remove("web")
    assert {(p.host_port, p.slot) for p in dp.ports} == {(9000, 2)}
    info = svc.info()["fastpath"]
    assert info["enabled"] and info["uplinks"] == ["eth0", "up1"]
    e.eps.remove("api")
    assert dp.ports == [] and dp.uplink_devs == {}


def test_metrics_add_the_fast_paths_counts(outside: tuple[Env, FakeNft, OutsideService]) -> None:
    e, _, svc = outside
    e.eps.add({"name": "web", "publish": ["8080:80"]})
    e.datapath.fast_counters = {0: {"in_packets": 5, "in_bytes": 500, "out_packets": 4, "out_bytes": 40}}
    [port] = svc.counters()["ports"]
    # the fake nft reports (1, 100) for every counter
    assert (port["in_packets"], port["in_bytes"], port["out_packets"], port["out_bytes"]) == (6, 600, 5, 140)
    assert (port["fast_in_packets"], port["connections"]) == (5, 1)


@pytest.mark.parametrize(("settings", "mode", "ports", "uplinks"), [
    (OutsideSettings(fastpath=False), "redirect-peer", 0, {}),
    (OutsideSettings(), "bridge", 0, {}),
    (OutsideSettings(uplinks=("up1", "nope")), "redirect-peer", 1, {5: "up1"}),
])
def test_fast_path_off_bridge_mode_and_named_uplinks(tmp_path: Path, settings: OutsideSettings, mode: str,
                                                      ports: int, uplinks: dict[int, str]) -> None:
    e = make_env(tmp_path)
    e.datapath.mode = mode
    svc = OutsideService(e.rt, FakeNft(), settings)
    e.nets.outside = e.eps.outside = svc
    e.nets.create({"name": "n4", "subnet4": "10.1.0.0/24"}, is_default=True)
    svc.start()
    e.eps.add({"name": "web", "publish": ["8080:80"]})
    assert (len(e.datapath.ports), e.datapath.uplink_devs) == (ports, uplinks)
    assert svc.info()["fastpath"]["enabled"] == bool(ports)
    e.store.close()
