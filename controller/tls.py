"""TLS for the API's TCP listeners, both ends, with dockerd's options and meanings.

Boundary: turns certificate and key *paths* into ``ssl.SSLContext`` objects
and resolves the docker-style defaults (``--tls``/``--tlsverify``, a cert
directory holding ``ca.pem``, ``cert.pem`` and ``key.pem``); no sockets, no
HTTP. Every failure is a ``BpfnetError`` with one line naming the file.

Meanings, as with Docker:
- ``--tls``: the daemon talks TLS on its TCP listeners but does not ask the
  client for a certificate (anyone who can connect is trusted); the CLI
  encrypts but does not verify the daemon's certificate.
- ``--tlsverify`` (implies ``--tls``): the daemon requires a client
  certificate signed by ``--tlscacert``; the CLI verifies the daemon's
  certificate (and host name or IP) against ``--tlscacert``.
Unix sockets never use TLS: their file mode and group are their access control.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from .errors import BpfnetError, InvalidArgument

# The daemon's default certificate directory (dockerd uses ~/.docker of the
# user running it; a system daemon's files belong under /etc).
DAEMON_CERT_DIR = "/etc/bpfnet"
# The CLI's default, like the docker CLI's ~/.docker; $BPFNET_CERT_PATH overrides it.
CLIENT_CERT_DIR = "~/.bpfnet"
CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "cert.pem", "key.pem"


@dataclass(frozen=True)
class TlsConfig:
    """The daemon side: ``verify`` requires client certificates signed by ``ca``."""

    cert: str
    key: str
    ca: str | None = None
    verify: bool = False


def daemon_tls(*, tls: bool, tlsverify: bool, cacert: str | None = None, cert: str | None = None,
               key: str | None = None, cert_dir: str = DAEMON_CERT_DIR) -> TlsConfig | None:
    """The daemon's flags -> a TlsConfig (None without --tls/--tlsverify); files default to cert_dir."""
    if not (tls or tlsverify):
        if cacert or cert or key:
            raise InvalidArgument("--tlscacert, --tlscert and --tlskey need --tls or --tlsverify")
        return None
    return TlsConfig(cert=cert or os.path.join(cert_dir, CERT_FILE),
                     key=key or os.path.join(cert_dir, KEY_FILE),
                     ca=cacert or (os.path.join(cert_dir, CA_FILE) if tlsverify else None),
                     verify=tlsverify)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise BpfnetError(f"TLS certificate {cert} with key {key}: {_describe(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise BpfnetError(f"TLS CA certificate {ca}: {_describe(exc)}") from None


def server_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The daemon's context: its certificate, and with verify the CA its clients must be signed by."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cfg.cert, cfg.key)
    if cfg.verify:
        if not cfg.ca:
            raise InvalidArgument("--tlsverify needs --tlscacert (the CA that signs client certificates)")
        _load_ca(ctx, cfg.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(*, verify: bool, ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The CLI's context. With verify the daemon's certificate must chain to ``ca`` and
    name the host; without it the connection is encrypted but the daemon unverified
    (docker's --tls). The client certificate is sent when both files exist."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca:
            _load_ca(ctx, ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert and key:
        _load_chain(ctx, cert, key)
    return ctx


def client_cert_files(cert_dir: str | None, cacert: str | None, cert: str | None,
                      key: str | None) -> tuple[str | None, str | None, str | None]:
    """Flags win; otherwise the files of the cert directory (docker's DOCKER_CERT_PATH rule).
    The client pair is used only when both exist, so --tls works without one."""
    base = Path(os.path.expanduser(cert_dir or CLIENT_CERT_DIR))
    ca = cacert or (str(base / CA_FILE) if (base / CA_FILE).exists() else None)
    if cert is None and key is None and (base / CERT_FILE).exists() and (base / KEY_FILE).exists():
        cert, key = str(base / CERT_FILE), str(base / KEY_FILE)
    return ca, cert, key
