"""The daemon under damaged state, a second daemon, failed starts and open listeners (issue 10).

Defects covered here end to end with a real daemon: #10 (an empty state file next to live
endpoints), #11 (a corrupt state file), #13 (a failed start leaves pins), #14 (--cleanup on a
namespace that does not exist), #15 (-H over a regular file), #16 (two daemons on one state dir
or namespace), #17 (an unauthenticated TCP listener is reported). Unit-level cases of the same
defects are in test_state_damage.py and test_http_server.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import DaemonFactory, DaemonProcess, bpfnet_cmd, netns_list, ping, run

pytestmark = pytest.mark.kernel

BIP = ("--bip", "10.243.0.1/24")


def start_fails(d: DaemonProcess, *extra: str, timeout: float = 120) -> str:
    """Run the daemon in the foreground, expect it to exit non-zero; its last stderr line."""
    r = subprocess.run(d.command() + list(extra), capture_output=True, text=True, timeout=timeout,
                       check=False, stdin=subprocess.DEVNULL)
    assert r.returncode != 0, f"daemon started but should not have:\n{r.stderr[-2000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("bpfnet: "), r.stderr[-2000:]
    return last


def db(d: DaemonProcess) -> Path:
    return d.state_dir / "bpfnet.db"


def empty_state(d: DaemonProcess) -> None:
    """What a lost state file looks like to SQLite: 0 bytes, no journal."""
    for extra in d.state_dir.glob("bpfnet.db-*"):
        extra.unlink()
    db(d).write_bytes(b"")


# 16: one daemon per state dir and per namespace -----------------------------------
def test_second_daemon_on_same_state_dir_or_namespace_is_refused(daemons: DaemonFactory) -> None:
    d = daemons.start(*BIP)
    a = d.add_endpoint("a")
    same_dir = daemons.create(*BIP)
    same_dir.state_dir = d.state_dir
    msg = start_fails(same_dir)
    assert f"another bpfnet daemon (pid {d.proc.pid}) is using --state-dir" in msg  # type: ignore[union-attr]
    assert same_dir.tag not in netns_list(), "the refused daemon created its namespace"
    same_ns = daemons.create(*BIP)  # its own state dir and socket, the same managed namespace
    same_ns.netns = d.netns
    msg = start_fails(same_ns)
    assert f"another bpfnet daemon (pid {d.proc.pid}) manages network namespace {d.tag}" in msg  # type: ignore[union-attr]
    # the first daemon and its endpoint are untouched
    assert d.running() and d.client.get(f"/v1/endpoints/{a['name']}")["state"] == "ready"
    assert ping(a["netns"], "10.243.0.1")
    assert d.add_endpoint("b")["state"] == "ready"
    # once it is gone, its successor starts (SIGKILL: the kernel released both locks)
    d.kill()
    d.start()
    assert {e["name"] for e in d.client.get("/v1/endpoints")} == {a["name"], d.name("b")}


# 10: an empty state file never destroys live endpoints ------------------------------
def test_empty_state_file_refuses_start_and_keeps_endpoints(daemons: DaemonFactory) -> None:
    d = daemons.start(*BIP, datapath="auto")
    a = d.add_endpoint("a")
    d.stop()
    empty_state(d)
    msg = start_fails(d)
    assert "is new or empty" in msg and "bnv" in msg and "--reconcile=adopt" in msg, msg
    assert a["host_ifname"] in d.host_veths(), "the refused start deleted a live endpoint's veth"
    assert ping(a["netns"], "10.243.0.1")


def test_reconcile_adopt_rebuilds_the_state(daemons: DaemonFactory) -> None:
    d = daemons.start(*BIP, "--ipv6", "--fixed-cidr-v6", "fd00:243::/64", datapath="auto")
    a, b = d.add_endpoint("a"), d.add_endpoint("b")
    net = d.client.post("/v1/networks", {"name": "n1", "subnet4": "10.244.0.0/24"})  # bridge br-n1
    c = d.add_endpoint("c", network=net["name"])
    d.stop()
    empty_state(d)
    d.args += ["--reconcile", "adopt"]
    d.start()
    eps = {e["name"]: e for e in d.client.get("/v1/endpoints")}
    assert set(eps) == {a["name"], b["name"], c["name"]}
    for before in (a, b, c):
        after = eps[before["name"]]
        for key in ("ipv4", "mac", "host_ifname", "network", "state"):
            assert after[key] == before[key], (key, before, after)
        assert after["adopted_netns"], "an adopted namespace must never be deleted by endpoint rm"
    assert eps[a["name"]]["ipv6"] == a["ipv6"]
    assert d.network()["default"] and d.network()["config"]["subnet4"] == "10.243.0.0/24"
    # the adopted endpoints work and leases are taken: the next address is a fresh one
    assert ping(a["netns"], b["ipv4"].split("/")[0])
    new = d.add_endpoint("d")
    assert new["ipv4"] not in {a["ipv4"], b["ipv4"]}
    d.remove_endpoint(a["name"])
    assert a["host_ifname"] not in d.host_veths()


def test_reconcile_wipe_deletes_unknown_endpoints(daemons: DaemonFactory) -> None:
    d = daemons.start(*BIP)
    a = d.add_endpoint("a")
    d.stop()
    empty_state(d)
    d.args += ["--reconcile", "wipe"]
    d.start()
    assert d.client.get("/v1/endpoints") == []
    assert a["host_ifname"] not in d.host_veths()
    assert d.add_endpoint("b")["ipv4"] == a["ipv4"]  # its address is free again


# 11: damaged state is one line -----------------------------------------------------
@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_damaged_state_is_one_line_and_creates_nothing(daemons: DaemonFactory, damage: str) -> None:
    d = daemons.create(*BIP)
    d.state_dir.mkdir(parents=True)
    if damage == "garbage":
        db(d).write_bytes(b"SQLite format 2\0" + b"\xff" * 5000)
        want = "is not a SQLite database"
    else:
        d.state_dir.rmdir()
        d.state_dir.write_text("not a directory")
        want = "is not a directory"
    msg = start_fails(d)
    assert want in msg, msg
    assert d.tag not in netns_list(), "a refused start left the namespace it made"


# 13: a start that fails after compiling removes the pins it made --------------------------
def test_failed_start_removes_its_pins(daemons: DaemonFactory) -> None:
    d = daemons.create("--bridge", "bnv3", datapath="auto")  # refused only when the default network is made
    msg = start_fails(d)
    assert "bnv3" in msg and "reserved" in msg, msg
    assert not (Path("/sys/fs/bpf/bpfnet") / d.tag).exists(), "a failed start left its pins"
    assert d.tag not in netns_list()


# 14: --cleanup never creates anything ----------------------------------------------
def test_cleanup_of_a_missing_namespace_creates_nothing(daemons: DaemonFactory) -> None:
    d = daemons.create()
    r = subprocess.run(d.command() + ["--cleanup"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert d.tag not in netns_list(), "--cleanup created the namespace it was asked to clean"


def test_cleanup_after_the_namespace_vanished_removes_its_pins(daemons: DaemonFactory) -> None:
    """The pins (maps and tcx links) of a namespace deleted by hand go with --cleanup."""
    d = daemons.start(*BIP, "--datapath-attach", "tcx", datapath="auto")
    d.add_endpoint("a")
    pins = Path("/sys/fs/bpf/bpfnet") / d.netns
    assert (pins / "links").is_dir()
    d.stop()
    for name in sorted(d.owned_netns(), reverse=True):
        run("ip", "netns", "del", name)
    r = subprocess.run(d.command() + ["--cleanup"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert not pins.exists(), sorted(str(p) for p in pins.rglob("*"))
    assert d.tag not in netns_list()


# 15: -H never replaces anything but a stale socket ----------------------------------
def test_unix_listener_over_a_regular_file_is_refused(daemons: DaemonFactory) -> None:
    d = daemons.create(*BIP)
    d.sock.parent.mkdir(parents=True, exist_ok=True)
    d.sock.write_text("precious")
    msg = start_fails(d)
    assert str(d.sock) in msg and "regular file" in msg, msg
    assert d.sock.read_text() == "precious"
    assert d.tag not in netns_list()


# 17: an unauthenticated TCP listener is said out loud ------------------------------------
def test_unauthenticated_tcp_listener_is_reported(daemons: DaemonFactory) -> None:
    d = daemons.start(*BIP, tcp=True)
    warnings = d.client.get("/v1/info")["warnings"]
    assert len(warnings) == 1 and d.tcp_host in warnings[0] and "not authenticated" in warnings[0]
    out = d.cli("info", check=True).stdout
    assert "WARNING" in out and "--tlsverify" in out
    assert "not authenticated" in d.log_tail(20000)
    plain = daemons.start(*BIP)
    assert plain.client.get("/v1/info")["warnings"] == []


def test_cli_names_are_checked_before_sending(daemons: DaemonFactory) -> None:
    """#1/#2 end to end: a name with a newline or a query never reaches the daemon."""
    d = daemons.start(*BIP)
    a = d.add_endpoint("a")
    for bad in (a["name"] + "\n", a["name"] + "?force"):
        r = d.cli("endpoint", "rm", bad)
        assert r.returncode == 1 and "invalid endpoint name" in r.stderr and r.stderr.count("\n") == 1
    assert d.client.get(f"/v1/endpoints/{a['name']}")["state"] == "ready"
    r = run("ip", "netns", "list")
    assert a["netns"] in r.stdout


# concurrency and leaks -------------------------------------------------------------
def test_200_parallel_adds_all_answer_cleanly(daemons: DaemonFactory) -> None:
    """#8: 200 clients at once (one connection each): every add succeeds or gets a clear 4xx/507,
    none sees a socket error; then 200 parallel removals."""
    d = daemons.start("--bip", "10.245.0.1/24")
    from concurrent.futures import ThreadPoolExecutor

    from bpfnet.client import Client, ClientError

    def add(i: int) -> tuple[str, int]:
        try:
            Client(d.host, timeout=120).post("/v1/endpoints", {"name": d.name(f"p{i}")})
            return "ok", 201
        except ClientError as exc:
            return str(exc), exc.status

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(add, range(200)))
    failed = [r for r in results if r[1] != 201]
    assert not failed, failed[:5]
    names = [e["name"] for e in d.client.get("/v1/endpoints")]
    assert len(names) == 200 and len(d.host_veths()) == 200

    def rm(name: str) -> int:
        try:
            Client(d.host, timeout=120).delete(f"/v1/endpoints/{name}")
            return 204
        except ClientError as exc:
            return exc.status

    with ThreadPoolExecutor(max_workers=200) as pool:
        assert set(pool.map(rm, names)) == {204}
    assert d.client.get("/v1/endpoints") == [] and not d.host_veths()
    assert d.owned_netns() == {d.tag}


def _figures(pid: int) -> tuple[int, int]:
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    threads = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Threads:")))
    return fds, threads


def test_add_remove_cycles_leak_no_fds_or_threads(daemons: DaemonFactory) -> None:
    """A short soak (bench/hardening.py runs 5,000 cycles): fds and threads do not grow."""
    d = daemons.start(*BIP)
    assert d.proc is not None
    for i in range(30):
        d.remove_endpoint(d.add_endpoint(f"s{i % 3}")["name"])
    fds0, threads0 = _figures(d.proc.pid)
    for i in range(150):
        d.remove_endpoint(d.add_endpoint(f"s{i % 3}")["name"])
    fds1, threads1 = _figures(d.proc.pid)
    assert fds1 <= fds0 + 2 and threads1 <= threads0 + 2, ((fds0, threads0), (fds1, threads1))


def test_tlsverify_end_to_end_with_the_cli(daemons: DaemonFactory, tmp_path: Path) -> None:
    """dockerd's TLS flags on the daemon, docker's on the CLI (flags and $BPFNET_CERT_PATH)."""
    from httptest import make_certs

    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    d = daemons.start(*BIP, "--tlsverify", "--tlscacert", str(certs.ca), "--tlscert", str(certs.server_cert),
                      "--tlskey", str(certs.server_key), tcp=True)
    assert d.tcp_host is not None
    flags = ["--tlsverify", "--tlscacert", str(certs.ca), "--tlscert", str(certs.client_cert),
             "--tlskey", str(certs.client_key)]
    r = subprocess.run([*bpfnet_cmd(), "-H", d.tcp_host, *flags, "info", "--json"], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert '"warnings": []' in r.stdout  # authenticated: nothing to warn about
    env = dict(os.environ, BPFNET_CERT_PATH=str(certs.dir), BPFNET_TLS_VERIFY="1", BPFNET_HOST=d.tcp_host)
    r = subprocess.run([*bpfnet_cmd(), "endpoint", "add", d.name("t")], capture_output=True, text=True,
                       timeout=60, check=False, env=env)
    assert r.returncode == 0, r.stderr
    # no client certificate, or plain HTTP: refused in one line, nothing done
    for extra in (["--tlsverify", "--tlscacert", str(certs.ca)], []):
        r = subprocess.run([*bpfnet_cmd(), "-H", d.tcp_host, *extra, "endpoint", "add", d.name("u")],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert [e["name"] for e in d.client.get("/v1/endpoints")] == [d.name("t")]
