"""TLS on the API's TCP listeners, as dockerd does it (issue 10 #17, "Access").

Throwaway CA, server and client certificates are made with the openssl CLI;
the server is a real ApiServer in this process on 127.0.0.1:0.
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
from pathlib import Path

import pytest
from bpfnet.api.server import ApiServer
from bpfnet.client import Client, ClientError, client_from_env_and_args
from bpfnet.config import Listener
from bpfnet.errors import BpfnetError
from bpfnet.tls import TlsConfig, daemon_tls
from httptest import (
    Certs,
    Recorder,
    make_certs,
    parse_responses,
    read_until_closed,
    running,
    tcp_port,
)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
FAST = {"idle_timeout": 2.0, "body_timeout": 1.0, "linger_timeout": 0.3}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def verify_cfg(c: Certs) -> TlsConfig:
    return TlsConfig(cert=str(c.server_cert), key=str(c.server_key), ca=str(c.ca), verify=True)


def url(server: ApiServer) -> str:
    return f"tcp://127.0.0.1:{tcp_port(server)}"


def test_tlsverify_accepts_a_client_signed_by_the_ca_only(tmp_path: Path, certs: Certs) -> None:
    with running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server:
        assert server.warnings == []  # clients are authenticated
        good = Client(url(server), tlsverify=True, cacert=str(certs.ca),
                      cert=str(certs.client_cert), key=str(certs.client_key))
        assert good.get("/v1/info")["ok"]
        with pytest.raises(ClientError, match="refused the client certificate"):
            Client(url(server), tlsverify=True, cacert=str(certs.ca)).get("/v1/info")  # no certificate
        with pytest.raises(ClientError, match="refused the client certificate"):
            Client(url(server), tlsverify=True, cacert=str(certs.ca), cert=str(certs.other_client_cert),
                   key=str(certs.other_client_key)).get("/v1/info")  # signed by a CA the daemon does not trust
        # the Unix socket stays plain: its mode and group are its access control
        assert Client(server.addresses[0]).get("/v1/info")["ok"]


def test_client_verifies_the_daemon(tmp_path: Path, certs: Certs) -> None:
    with running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server, \
            pytest.raises(ClientError, match="certificate .* is not trusted"):
        Client(url(server), tlsverify=True, cacert=str(certs.other_client_cert.parent / "other-ca.pem"),
               cert=str(certs.client_cert), key=str(certs.client_key)).get("/v1/info")


def test_tls_without_verify_encrypts_but_warns(tmp_path: Path, certs: Certs) -> None:
    tls = TlsConfig(cert=str(certs.server_cert), key=str(certs.server_key))
    with running(tmp_path, Recorder(), tls=tls, **FAST) as server:
        assert Client(url(server), tls=True).get("/v1/info")["ok"]  # no client certificate needed
        (warning,) = server.warnings
        assert warning.startswith(f"API listener {url(server)} is encrypted (--tls) but not authenticated")
        assert "use --tlsverify" in warning


def test_plain_http_to_a_tls_listener_fails_cleanly(tmp_path: Path, certs: Certs,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server:
        with pytest.raises(ClientError, match="--tls"):
            Client(url(server)).get("/v1/info")
        with socket.create_connection(("127.0.0.1", tcp_port(server))) as sock:
            sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n")
            out, closed = read_until_closed(sock, 5)
        assert closed and b"HTTP/" not in out  # a TLS alert at most, never a plaintext answer
        good = Client(url(server), tlsverify=True, cacert=str(certs.ca),
                      cert=str(certs.client_cert), key=str(certs.client_key))
        assert good.get("/v1/info")["ok"]  # the server is unharmed
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert noisy == [], [r.getMessage() for r in noisy]


def test_tls_client_to_a_plain_listener_says_so(tmp_path: Path) -> None:
    with running(tmp_path, Recorder(), **FAST) as server, \
            pytest.raises(ClientError, match="TLS .* failed.*without TLS"):
        Client(url(server), tls=True).get("/v1/info")


def test_tls_handshake_that_never_comes_is_dropped(tmp_path: Path, certs: Certs) -> None:
    with running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server, \
            socket.create_connection(("127.0.0.1", tcp_port(server))) as sock:
        out, closed = read_until_closed(sock, FAST["idle_timeout"] + 3)
    assert closed and out == b""


def test_env_and_flags_resolve_like_the_docker_cli(tmp_path: Path, certs: Certs) -> None:
    with running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server:
        env = {"BPFNET_CERT_PATH": str(certs.dir), "BPFNET_TLS_VERIFY": "1", "BPFNET_HOST": url(server)}
        client = client_from_env_and_args(env=env)
        assert client.host == url(server) and client.tls and client.get("/v1/info")["ok"]
        # flags win over the cert directory: a wrong --tlscacert fails verification
        wrong = client_from_env_and_args(url(server), tlscacert=str(certs.other_client_cert.parent / "other-ca.pem"),
                                         env=env)
        with pytest.raises(ClientError, match="not trusted"):
            wrong.get("/v1/info")
        # without TLS_VERIFY nor --tls the client speaks plain HTTP and is told why it failed
        with pytest.raises(ClientError, match="--tls"):
            client_from_env_and_args(url(server), env={"BPFNET_CERT_PATH": str(certs.dir)}).get("/v1/info")
        # --tls alone: encrypted, the daemon unverified, the cert directory's pair sent
        assert client_from_env_and_args(url(server), tls=True,
                                        env={"BPFNET_CERT_PATH": str(certs.dir)}).get("/v1/info")["ok"]
    with pytest.raises(ClientError, match="needs the daemon's CA"):
        client_from_env_and_args("tcp://127.0.0.1:1", tlsverify=True, env={"BPFNET_CERT_PATH": str(tmp_path)})


def test_bad_certificate_files_fail_in_one_line_and_bind_nothing(tmp_path: Path, certs: Certs) -> None:
    sock_path = tmp_path / "api.sock"
    listeners = [Listener("unix", path=str(sock_path)), Listener("tcp", host="127.0.0.1", port=0)]
    cases = [
        (TlsConfig(cert=str(tmp_path / "missing.pem"), key=str(certs.server_key)), "missing.pem"),
        (TlsConfig(cert=str(certs.server_cert), key=str(certs.client_key)), "server.pem"),  # key of another cert
        (TlsConfig(cert=str(certs.server_cert), key=str(certs.server_key), ca=str(tmp_path / "no-ca.pem"),
                   verify=True), "no-ca.pem"),
        (TlsConfig(cert=str(certs.server_cert), key=str(certs.server_key), verify=True), "--tlscacert"),
    ]
    for cfg, fragment in cases:
        with pytest.raises(BpfnetError) as err:
            ApiServer(listeners, Recorder(), lambda r, m, s: None, tls=cfg)
        assert fragment in err.value.message and "\n" not in err.value.message
        assert not sock_path.exists()


def test_daemon_flags_follow_dockerd() -> None:
    assert daemon_tls(tls=False, tlsverify=False) is None
    assert daemon_tls(tls=True, tlsverify=False, cert_dir="/d") == TlsConfig("/d/cert.pem", "/d/key.pem")
    assert daemon_tls(tls=False, tlsverify=True, cert_dir="/d") == TlsConfig(
        "/d/cert.pem", "/d/key.pem", "/d/ca.pem", verify=True)
    assert daemon_tls(tls=False, tlsverify=True, cacert="/c", cert="/s", key="/k") == TlsConfig(
        "/s", "/k", "/c", verify=True)
    with pytest.raises(BpfnetError, match="need --tls"):
        daemon_tls(tls=False, tlsverify=False, cert="/s")


def test_raw_http_over_tls_gets_the_same_json(tmp_path: Path, certs: Certs) -> None:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    with running(tmp_path, Recorder(), tls=verify_cfg(certs), **FAST) as server, \
            socket.create_connection(("127.0.0.1", tcp_port(server))) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"PUT /v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out, _ = read_until_closed(sock, 5)
    (resp,) = parse_responses(out)
    assert resp.status == 405 and resp.json() == {"error": "PUT /v1/info: method not allowed"}
