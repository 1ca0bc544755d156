"""The bpfnet CLI as a user runs it: -H forms, --json output, tables, errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from bpfnet.client import ClientError
from helpers import DaemonFactory, DaemonProcess, bpfnet_cmd, netns_list, unique_tag

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def d(module_daemons: DaemonFactory) -> DaemonProcess:
    return module_daemons.start("--bip", "10.251.0.1/24", "--ipv6", "--fixed-cidr-v6", "fd00:251::/64", tcp=True)


def bpfnet(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bpfnet_cmd() + list(args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)


def assert_one_line_error(r: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {r.stderr!r}"
    assert lines[0].startswith("bpfnet: ") and fragment in lines[0], lines[0]
    assert r.stdout == ""


def test_json_outputs_parse(d: DaemonProcess) -> None:
    info = d.cli_json("info")
    assert info["host_netns"] == d.netns
    ep: dict[str, Any] = d.cli_json("endpoint", "add", d.name("j1"))
    try:
        assert ep["name"] == d.name("j1") and ep["ipv4"].startswith("10.251.0.")
        assert [e["name"] for e in d.cli_json("endpoint", "ls")] == [ep["name"]]
        assert d.cli_json("endpoint", "inspect", ep["name"]) == json.loads(
            d.cli("endpoint", "inspect", ep["name"]).stdout)
        nets = d.cli_json("network", "ls")
        assert nets[0]["name"] == "bridge" and nets[0]["endpoints"] == [ep["name"]]
        stats = d.cli_json("stats")
        # bridge mode has no BPF counters; endpoints without counters are left out of /v1/stats
        assert stats["mode"] == "bridge" and isinstance(stats["endpoints"], list)
    finally:
        rm = d.cli("endpoint", "rm", ep["name"], "--json")
    assert rm.returncode == 0 and rm.stdout == ""


def test_tables(d: DaemonProcess) -> None:
    r = d.cli("endpoint", "add", d.name("t1"), "--ip", "10.251.0.50", "--mac", "02:00:00:00:00:50")
    assert r.returncode == 0, r.stderr
    try:
        header, row = r.stdout.splitlines()
        assert header.split() == ["NAME", "NETWORK", "NETNS", "HOST", "VETH", "MAC", "IPV4", "IPV6", "PORTS"]
        cells = row.split()
        assert cells[-1] == "-"  # no published ports
        assert cells[0] == d.name("t1") and cells[1] == "bridge" and "02:00:00:00:00:50" in cells
        assert "10.251.0.50/24" in cells and "fd00:251::200:0:50/64" in cells
        info = d.cli("info").stdout
        assert f"Host netns:   {d.netns}" in info and "Datapath:     bridge" in info
        assert "Outside:      nftables table inet bpfnet; ip-masq on, ip6-masq off, ip-forward on" in info
    finally:
        assert d.cli("endpoint", "rm", d.name("t1")).stdout.strip() == d.name("t1")


def test_host_flag_positions_and_env(d: DaemonProcess) -> None:
    assert d.tcp_host
    for args, env in (
        (["-H", d.host, "network", "ls", "--json"], None),
        (["network", "ls", "--json", "-H", d.tcp_host], None),
        (["--host", d.tcp_host, "network", "ls", "--json"], None),
        (["network", "ls", "--json"], {"BPFNET_HOST": d.host}),
    ):
        r = bpfnet(*args, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert [n["name"] for n in json.loads(r.stdout)] == ["bridge"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["endpoint", "inspect", "nosuch"], "endpoint 'nosuch' not found"),
        (["endpoint", "rm", "nosuch"], "not found"),
        (["network", "inspect", "nosuch"], "network 'nosuch' not found"),
        (["network", "create", "x", "--subnet", "10.251.0.0/25"], "overlaps network bridge"),
        (["network", "create", "x", "--subnet", "banana"], "malformed subnet"),
        (["endpoint", "add", "bpfnet-tq", "--ip", "10.9.9.9"], "outside network bridge's subnet"),
        (["endpoint", "add", "bpfnet-tq", "--mac", "nope"], "malformed MAC"),
        (["endpoint", "add", "bpfnet-tq", "--network", "nosuch"], "network 'nosuch' not found"),
        (["node", "ls"], "this daemon is not part of a cluster"),
        (["node", "rm", "h9"], "this daemon is not part of a cluster"),
        (["node", "rm", "bad/name"], "node name"),
    ],
)
def test_errors_one_line(d: DaemonProcess, args: list[str], fragment: str) -> None:
    assert_one_line_error(d.cli(*args), fragment)
    assert "bpfnet-tq" not in netns_list()


def test_no_daemon() -> None:
    r = bpfnet("-H", f"unix:///tmp/{unique_tag()}-none/none.sock", "network", "ls")
    assert_one_line_error(r, "cannot connect to the bpfnet daemon")
    r = bpfnet("-H", "tcp://127.0.0.1:1", "info")
    assert_one_line_error(r, "cannot connect")
    r = bpfnet("-H", "ftp://x", "info")
    assert_one_line_error(r, "expected unix:///path or tcp://HOST:PORT")


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--bip", "10.252.0.1/24", "--fixed-cidr", "10.253.0.0/25"], "not inside subnet 10.252.0.0/24"),
        (["--bip", "10.252.0.1/24", "--ipv6", "--fixed-cidr-v6", "fd00::/127"], "longer than /126"),
        (["--bridge", "bridge-name-too-long"], "at most 15"),
        (["--mtu", "40"], "MTU 40 out of range"),
        (["-H", "tcp://0.0.0.0:2375"], "--allow-public-api"),
        # issue 10 #19: the refusal names the flag, not a Python keyword (was "pass allow_public=True")
        (["--metrics-addr", "0.0.0.0:0"], "pass --allow-public-metrics to expose them"),
    ],
)
def test_daemon_refuses_bad_flags_cleanly(tmp_path: Path, flags: list[str], fragment: str) -> None:
    tag = unique_tag()
    try:
        r = bpfnet("daemon", "--netns", tag, "--state-dir", str(tmp_path / "state"), "-H",
                   f"unix://{tmp_path}/d.sock", "--datapath", "bridge", "--metrics-addr", "127.0.0.1:0", *flags,
                   timeout=30)
        assert_one_line_error(r, fragment)
        assert tag not in netns_list(), "a daemon refusing its flags still created its namespace"
    finally:
        subprocess.run(["ip", "netns", "del", tag], capture_output=True, check=False)


def test_daemon_config_file_unknown_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bpfnet.toml"
    cfg.write_text('bip = "10.252.0.1/24"\nfixed_cidrr = "10.252.0.0/25"\n')
    r = bpfnet("daemon", "--config", str(cfg), "--state-dir", str(tmp_path / "s"), "-H", f"unix://{tmp_path}/s")
    assert_one_line_error(r, "unknown setting 'fixed_cidrr'")


def test_second_daemon_on_same_socket_refused(d: DaemonProcess, tmp_path: Path) -> None:
    tag = unique_tag()
    try:
        r = bpfnet("daemon", "--netns", tag, "--state-dir", str(tmp_path / "state"), "-H", d.host,
                   "--datapath", "bridge", "--metrics-addr", "127.0.0.1:0", timeout=30)
        assert r.returncode != 0
        assert "another process is listening" in r.stderr
        assert d.client.get("/v1/info")["host_netns"] == d.netns  # the first one is unharmed
    finally:
        subprocess.run(["ip", "netns", "del", tag], capture_output=True, check=False)


def test_names_cannot_reach_the_url(d: DaemonProcess) -> None:
    """issue 10 #2: `endpoint rm 'a?force'` removed `a`, `network rm 'bridge?x'` the default
    network, and a name with a space failed with "URL can't contain control characters"."""
    ep = d.add_endpoint("u1")
    name = ep["name"]
    try:
        for args, fragment in (
            (["endpoint", "rm", f"{name}?force"], f"invalid endpoint name '{name}?force'"),
            (["endpoint", "rm", f"{name} x"], "invalid endpoint name"),
            (["endpoint", "inspect", f"{name}/x"], "invalid endpoint name"),
            (["network", "rm", "bridge?x"], "invalid network name 'bridge?x'"),
            (["network", "inspect", "bridge x"], "invalid network name"),
        ):
            assert_one_line_error(d.cli(*args), fragment)
        # every name is checked before anything is removed
        assert_one_line_error(d.cli("endpoint", "rm", name, "b?x"), "invalid endpoint name 'b?x'")
        assert d.client.get(f"/v1/endpoints/{name}")["name"] == name
        assert d.network("bridge")["name"] == "bridge"
        # a client that does not check: the daemon decodes the segment and finds no such endpoint
        with pytest.raises(ClientError) as err:
            d.client.delete(f"/v1/endpoints/{name}%3Fforce")
        assert err.value.status in (400, 404) and f"{name}?force" in str(err.value)
        assert d.client.get(f"/v1/endpoints/{name}")["name"] == name
    finally:
        d.remove_endpoint(name)
