"""Daemon and network configuration: flags, TOML, validation messages."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from bpfnet.config import (
    DEFAULT_SOCKET,
    NetworkConfig,
    check_ifname,
    check_mtu,
    default_network_config,
    load_daemon_config,
    parse_address,
    parse_bip,
    parse_host,
)
from bpfnet.errors import InvalidArgument


def net(**kw: Any) -> NetworkConfig:
    return NetworkConfig.from_json({"name": "n1", "bridge": "br-n1", "subnet4": "10.20.0.0/24", **kw})


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "bpfnet.toml"
    p.write_text(text)
    return str(p)


def dflt(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"bip": None, "fixed_cidr": None, "ipv6": False, "fixed_cidr_v6": None,
                            "default_gateway": None, "default_gateway_v6": None, "mtu": 1500, "icc": True}
    args.update(kw)
    return default_network_config(**args)


# --- TOML and flags ------------------------------------------------------------
def test_defaults() -> None:
    cfg = load_daemon_config(None, {})
    assert cfg.hosts == (DEFAULT_SOCKET,)
    assert cfg.bridge == "bpfnet0" and cfg.mtu is None and not cfg.ipv6  # None: 1500, or an existing bridge's MTU


def test_toml_file_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
host = ["unix:///tmp/x.sock", "tcp://127.0.0.1:2375"]
bip = "172.30.0.1/16"
fixed-cidr = "172.30.1.0/25"
ipv6 = true
fixed-cidr-v6 = "1553:ba3:2::/64"
mtu = 1450
""")
    cfg = load_daemon_config(path, {})
    assert cfg.hosts == ("unix:///tmp/x.sock", "tcp://127.0.0.1:2375")
    assert cfg.bip == "172.30.0.1/16" and cfg.fixed_cidr == "172.30.1.0/25"
    assert cfg.ipv6 is True and cfg.fixed_cidr_v6 == "1553:ba3:2::/64" and cfg.mtu == 1450
    assert [str(x) for x in cfg.listeners()] == ["unix:///tmp/x.sock", "tcp://127.0.0.1:2375"]


def test_flags_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'bip = "172.30.0.1/16"\nmtu = 1450\nbridge = "fromfile0"\n')
    cfg = load_daemon_config(path, {"bip": "172.31.0.1/16", "mtu": None, "bridge": "flag0"})
    assert cfg.bip == "172.31.0.1/16"  # flag given: wins
    assert cfg.bridge == "flag0"
    assert cfg.mtu == 1450  # flag not given (None): the file's value stays


def test_host_string_in_toml(tmp_path: Path) -> None:
    cfg = load_daemon_config(write(tmp_path, 'hosts = "unix:///tmp/y.sock"\n'), {})
    assert cfg.hosts == ("unix:///tmp/y.sock",)


def test_unknown_toml_key(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="unknown setting 'fixed-cidr-v4'"):
        load_daemon_config(write(tmp_path, 'fixed-cidr-v4 = "10.0.0.0/24"\n'), {})
    with pytest.raises(InvalidArgument, match="unknown setting 'extra'"):
        load_daemon_config(write(tmp_path, "[extra]\na = 1\n"), {})


def test_overlay_encap(tmp_path: Path) -> None:
    assert load_daemon_config(None, {}).overlay_encap == "native"
    assert load_daemon_config(write(tmp_path, 'overlay_encap = "device"\n'), {}).overlay_encap == "device"
    with pytest.raises(InvalidArgument, match="--overlay-encap 'bpf': expected native or device"):
        load_daemon_config(write(tmp_path, 'overlay_encap = "bpf"\n'), {})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="invalid TOML"):
        load_daemon_config(write(tmp_path, "bip = \n"), {})
    with pytest.raises(InvalidArgument, match="no such file"):
        load_daemon_config(str(tmp_path / "missing.toml"), {})


# --- validation messages -------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"bip": "172.30.0.1"}, "malformed --bip"),
        ({"bip": "172.30.0.300/16"}, "malformed --bip"),
        ({"bip": "172.30.0.0/16"}, "network or broadcast"),
        ({"bip": "172.30.0.1/16", "fixed_cidr": "10.0.0.0/24"}, "not inside subnet 172.30.0.0/16"),
        ({"bip": "172.30.0.1/16", "fixed_cidr": "10.0.0/24"}, "malformed"),
        ({"fixed_cidr": "10.0.0.0/33"}, "malformed --fixed-cidr"),
        ({"ipv6": True, "fixed_cidr_v6": "1553:ba3:2::/127"}, "longer than /126"),
        ({"ipv6": True, "fixed_cidr_v6": "1553:ba3:2::/zz"}, "malformed"),
        ({"fixed_cidr_v6": "1553:ba3:2::/64"}, "needs --ipv6"),
        ({"bridge": "a-very-long-bridge0"}, "19 characters; Linux allows at most 15"),
        ({"mtu": 67}, "MTU 67 out of range 68-65535"),
        ({"mtu": 65536}, "out of range"),
        ({"mtu": 1279, "ipv6": True}, "1280"),
        ({"hosts": ["tcp://0.0.0.0:2375"]}, "not a loopback address"),
        ({"hosts": ["tcp://192.0.2.2:2375"]}, "--allow-public-api"),
        ({"hosts": ["unix://relative.sock"]}, "absolute path"),
        ({"hosts": ["tcp://127.0.0.1"]}, "tcp://HOST:PORT"),
        ({"hosts": ["http://127.0.0.1:80"]}, "expected unix"),
        ({"datapath": "xdp"}, "--datapath"),
        ({"ndp_proxy_iface": "up0"}, "needs --ipv6"),
        ({"netns": "bad/name"}, "--netns"),
        ({"log_level": "loud"}, "--log-level"),
        ({"default_gateway": "10.0.0.1", "bip": "172.30.0.1/16"}, "not inside subnet"),
        ({"docker_plugin": "bad/name"}, "--docker-plugin"),
        ({"docker_plugin": "bpfnet", "docker_plugin_dir": "plugins"}, "not an absolute path"),
        ({"docker_plugin": "b" * 60, "docker_plugin_dir": "/" + "d" * 60}, "longer than a Unix socket path"),
    ],
)
def test_daemon_validation(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment.replace("(", r"\(").replace("+", r"\+")):
        load_daemon_config(None, overrides)


def test_docker_plugin_socket() -> None:
    assert load_daemon_config(None, {}).docker_plugin_socket is None
    cfg = load_daemon_config(None, {"docker_plugin": "bpfnet"})
    assert cfg.docker_plugin_socket == "/run/docker/plugins/bpfnet.sock"
    cfg = load_daemon_config(None, {"docker_plugin": "b1", "docker_plugin_dir": "/etc/docker/plugins/"})
    assert cfg.docker_plugin_socket == "/etc/docker/plugins/b1.sock"


def test_public_api_allowed_with_flag() -> None:
    cfg = load_daemon_config(None, {"hosts": ["tcp://0.0.0.0:2375"], "allow_public_api": True})
    assert cfg.listeners()[0].host == "0.0.0.0"


def test_loopback_hosts_accepted() -> None:
    for text in ("tcp://127.0.0.1:2375", "tcp://localhost:2375", "tcp://[::1]:2375"):
        listener = parse_host(text)
        assert listener.kind == "tcp" and listener.port == 2375


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9523", ("127.0.0.1", 9523)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80)),
    (":9523", ("", 9523)), (" 127.0.0.1:1 ", ("127.0.0.1", 1)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text, "--x") == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "::1:80", "[::1]80", "[x]:1", "h:70000", "h:-1", "h:+1",
                                  "a@h:80", "h:80?x", "h:80/x", "h:\u0663"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument, match="^--x "):
        parse_address(text, "--x")


def test_tcp_hosts_use_the_one_address_parser() -> None:
    # Once accepted by urlparse (a user part, a query) or a traceback ("[::1]80"); now one clear error.
    for text in ("tcp://a@127.0.0.1:80", "tcp://127.0.0.1:80?x", "tcp://[::1]80", "tcp://:80"):
        with pytest.raises(InvalidArgument, match="expected tcp://HOST:PORT"):
            parse_host(text)
    assert parse_host("tcp://LocalHost:80/").host == "localhost"


def test_valid_dual_stack_config() -> None:
    cfg = load_daemon_config(None, {"bip": "172.30.0.1/16", "fixed_cidr": "172.30.1.0/25", "ipv6": True,
                                    "fixed_cidr_v6": "1553:ba3:2::/64", "ndp_proxy_iface": "eth0"})
    assert cfg.ndp_proxy_iface == "eth0"


def test_check_ifname_and_mtu_directly() -> None:
    assert check_ifname("x" * 15) == "x" * 15
    with pytest.raises(InvalidArgument, match="16 characters"):
        check_ifname("x" * 16)
    with pytest.raises(InvalidArgument, match="not an integer"):
        check_mtu("big")
    assert check_mtu(68) == 68 and check_mtu("9000") == 9000


def test_parse_bip() -> None:
    iface = parse_bip("172.30.0.1/16")
    assert iface.ip == IPv4Address("172.30.0.1") and iface.network == IPv4Network("172.30.0.0/16")
    with pytest.raises(InvalidArgument, match="too small"):
        parse_bip("10.0.0.1/31")
    with pytest.raises(InvalidArgument, match="malformed"):
        parse_bip("fd00::1/64")


# --- the default network from flags ----------------------------------------------
def test_default_network_from_flags() -> None:
    data = dflt(bip="172.30.0.1/16", fixed_cidr="172.30.1.0/25", ipv6=True, fixed_cidr_v6="1553:ba3:2::/64")
    cfg = NetworkConfig.from_json(data)
    assert cfg.name == "bridge" and cfg.bridge == "bpfnet0"
    assert cfg.subnet4 == IPv4Network("172.30.0.0/16") and cfg.gateway4 == IPv4Address("172.30.0.1")
    assert cfg.range4 == IPv4Network("172.30.1.0/25")
    assert cfg.subnet6 == IPv6Network("1553:ba3:2::/64") and cfg.gateway6 == IPv6Address("1553:ba3:2::1")


# --- network configs (API JSON) ---------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"subnet4": "10.20.0.0"}, "malformed subnet"),
        ({"subnet4": "fd00::/64"}, "malformed subnet"),
        ({"subnet4": "10.20.0.0/31"}, "at most /30"),
        ({"gateway4": "10.21.0.1"}, "not a usable address"),
        ({"gateway4": "10.20.0.255"}, "not a usable address"),
        ({"ip_range4": "10.21.0.0/25"}, "not inside subnet"),
        ({"subnet6": "fd00::/127"}, "longer than /126"),
        ({"subnet6": "fe80::/64"}, "link-local"),
        ({"subnet6": "fd00::/64", "ip_range6": "fd01::/80"}, "not inside"),
        ({"ip_range6": "fd01::/80"}, "needs an IPv6 subnet"),
        ({"subnet6": "fd00::/64", "gateway6": "fd01::1"}, "not a usable"),
        ({"bridge": "br-0123456789abc"}, "Linux allows at most 15"),
        ({"name": "-x"}, "invalid network name"),
        ({"mtu": 20}, "out of range"),
        ({"icc": "no"}, "icc"),
        ({"colour": "red"}, "unknown field"),
    ],
)
def test_network_validation(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        net(**fields)


def test_network_json_roundtrip() -> None:
    cfg = net(subnet6="fd00:1::/64", ip_range4="10.20.0.128/25", mtu=1400, icc=False)
    assert NetworkConfig.from_json(cfg.to_json()) == cfg
    assert cfg.ipv6 is True  # implied by subnet6


def test_network_missing_field() -> None:
    with pytest.raises(InvalidArgument, match="missing field 'subnet4'"):
        NetworkConfig.from_json({"name": "n", "bridge": "br-n"})


def test_published_fastpath_and_uplinks(tmp_path: Path) -> None:
    cfg = load_daemon_config(None, {})
    assert cfg.published_fastpath and cfg.uplinks == ()  # on, every interface with an address
    cfg = load_daemon_config(write(tmp_path, 'published-fastpath = false\nuplinks = ["eth0", "bond0"]\n'), {})
    assert not cfg.published_fastpath and cfg.uplinks == ("eth0", "bond0")
    assert load_daemon_config(None, {"uplinks": ["eth1"]}).uplinks == ("eth1",)
    with pytest.raises(InvalidArgument, match="--uplink"):
        load_daemon_config(None, {"uplinks": ["not/an interface"]})
