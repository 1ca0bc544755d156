"""Daemon and network configuration: parsing and validation.

Boundary: turns flags, TOML files and API JSON into validated, immutable
config objects, or raises ``InvalidArgument`` naming the bad field. It never
looks at the kernel; overlap with host routes is checked by the network
service, which can see them.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass, replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_interface,
    ip_network,
)
from pathlib import Path
from typing import Any

from .datapath.abi import REQUESTABLE_MODES
from .errors import InvalidArgument

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # fullmatch: "$" would accept a trailing newline
IFNAME_MAX = 15  # IFNAMSIZ - 1
MTU_MIN, MTU_MAX = 68, 65535
IPV6_MTU_MIN = 1280
MAX_V6_PREFIX = 126
DEFAULT_SOCKET = "unix:///run/bpfnet/bpfnet.sock"
DEFAULT_STATE_DIR = "/var/lib/bpfnet"
DEFAULT_BRIDGE = "bpfnet0"
DEFAULT_NETWORK = "bridge"  # like Docker's default network name
DEFAULT_POOLS = tuple(
    [IPv4Network(f"172.{i}.0.0/16") for i in range(17, 32)]
    + [IPv4Network(f"192.168.{i}.0/20") for i in range(0, 256, 16)]
)


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return value


def check_ifname(value: str, what: str = "bridge name") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"invalid {what}: empty")
    if len(value) > IFNAME_MAX:
        raise InvalidArgument(f"{what} {value!r} is {len(value)} characters; Linux allows at most {IFNAME_MAX}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", value) or value in (".", ".."):
        raise InvalidArgument(f"invalid {what} {value!r}: use letters, digits, '_', '.', '-'")
    return value


def check_mtu(value: Any, ipv6: bool = False) -> int:
    try:
        mtu = int(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"invalid MTU {value!r}: not an integer") from None
    low = IPV6_MTU_MIN if ipv6 else MTU_MIN
    if not low <= mtu <= MTU_MAX:
        raise InvalidArgument(f"MTU {mtu} out of range {low}-{MTU_MAX}" + (" (IPv6 needs 1280)" if ipv6 else ""))
    return mtu


def parse_v4_network(text: str, what: str) -> IPv4Network:
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: expected an IPv4 CIDR like 172.17.0.0/16") from None
    if not isinstance(net, IPv4Network) or "/" not in text:
        raise InvalidArgument(f"malformed {what} {text!r}: expected an IPv4 CIDR like 172.17.0.0/16")
    if net.prefixlen > 30:
        raise InvalidArgument(f"{what} {net} is too small: at most /30")
    return net


def parse_v6_network(text: str, what: str) -> IPv6Network:
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: expected an IPv6 CIDR like 1553:ba3:2::/64") from None
    if not isinstance(net, IPv6Network) or "/" not in text:
        raise InvalidArgument(f"malformed {what} {text!r}: expected an IPv6 CIDR like 1553:ba3:2::/64")
    if net.prefixlen > MAX_V6_PREFIX:
        raise InvalidArgument(f"{what} {net} has a prefix longer than /{MAX_V6_PREFIX}")
    if net.is_link_local or net.is_multicast:
        raise InvalidArgument(f"{what} {net} is link-local or multicast; give a global or unique-local prefix")
    return net


def parse_v4(text: str, what: str) -> IPv4Address:
    try:
        return IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: not an IPv4 address") from None


def parse_v6(text: str, what: str) -> IPv6Address:
    try:
        return IPv6Address(text)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: not an IPv6 address") from None


def parse_bip(text: str) -> IPv4Interface:
    try:
        iface = ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"malformed --bip {text!r}: expected the gateway address and prefix, like 172.17.0.1/16") from None
    if not isinstance(iface, IPv4Interface) or "/" not in text:
        raise InvalidArgument(f"malformed --bip {text!r}: expected the gateway address and prefix, like 172.17.0.1/16")
    if iface.network.prefixlen > 30:
        raise InvalidArgument(f"--bip {text}: subnet too small, at most /30")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidArgument(f"--bip {text}: the gateway cannot be the network or broadcast address")
    return iface


@dataclass(frozen=True)
class NetworkConfig:
    """One bridge network: validated, immutable."""

    name: str
    bridge: str
    subnet4: IPv4Network
    gateway4: IPv4Address
    ip_range4: IPv4Network | None = None
    ipv6: bool = False
    subnet6: IPv6Network | None = None
    gateway6: IPv6Address | None = None  # global gateway on the bridge
    ip_range6: IPv6Network | None = None
    default_gateway4: IPv4Address | None = None  # endpoints' default route, if not the bridge
    default_gateway6: IPv6Address | None = None
    mtu: int = 1500
    icc: bool = True

    @property
    def range4(self) -> IPv4Network:
        return self.ip_range4 or self.subnet4

    @property
    def range6(self) -> IPv6Network | None:
        return self.ip_range6 or self.subnet6

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if v is not None and not isinstance(v, (bool, int)) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build and validate from API/stored JSON (all fields as strings or plain values)."""
        if not isinstance(data, dict):
            raise InvalidArgument("network: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"network: unknown field(s) {', '.join(sorted(unknown))}")
        for req in ("name", "bridge", "subnet4"):
            if not data.get(req):
                raise InvalidArgument(f"network: missing field {req!r}")
        name = check_name(data["name"], "network name")
        bridge = check_ifname(data["bridge"])
        if re.match(r"^bnv[0-9]+$", bridge):
            raise InvalidArgument(f"bridge name {bridge!r} is reserved: bnvN names endpoints' host veths")
        subnet4 = parse_v4_network(data["subnet4"], "subnet")
        gw = data.get("gateway4")
        gateway4 = parse_v4(gw, "gateway") if gw else IPv4Address(int(subnet4.network_address) + 1)
        ip_range4 = parse_v4_network(data["ip_range4"], "ip-range") if data.get("ip_range4") else None
        ipv6 = bool(data.get("ipv6")) or bool(data.get("subnet6"))
        subnet6 = parse_v6_network(data["subnet6"], "IPv6 subnet") if data.get("subnet6") else None
        gateway6 = parse_v6(data["gateway6"], "IPv6 gateway") if data.get("gateway6") else None
        if subnet6 is not None and gateway6 is None:
            gateway6 = IPv6Address(int(subnet6.network_address) + 1)
        ip_range6 = parse_v6_network(data["ip_range6"], "IPv6 ip-range") if data.get("ip_range6") else None
        dg4 = parse_v4(data["default_gateway4"], "default gateway") if data.get("default_gateway4") else None
        dg6 = parse_v6(data["default_gateway6"], "IPv6 default gateway") if data.get("default_gateway6") else None
        mtu = check_mtu(data.get("mtu", 1500), ipv6)
        icc = data.get("icc", True)
        if not isinstance(icc, bool):
            raise InvalidArgument("network: icc must be true or false")
        cfg = cls(name, bridge, subnet4, gateway4, ip_range4, ipv6, subnet6, gateway6, ip_range6, dg4, dg6, mtu, icc)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        s4 = self.subnet4
        if self.gateway4 not in s4 or self.gateway4 in (s4.network_address, s4.broadcast_address):
            raise InvalidArgument(f"gateway {self.gateway4} is not a usable address of subnet {s4}")
        if self.ip_range4 is not None and not self.ip_range4.subnet_of(s4):
            raise InvalidArgument(f"fixed-cidr/ip-range {self.ip_range4} is not inside subnet {s4}")
        if self.default_gateway4 is not None and self.default_gateway4 not in s4:
            raise InvalidArgument(f"default gateway {self.default_gateway4} is not inside subnet {s4}")
        if self.subnet6 is None:
            if self.ip_range6 is not None:
                raise InvalidArgument("an IPv6 ip-range needs an IPv6 subnet")
            return
        s6 = self.subnet6
        if self.gateway6 is not None and (self.gateway6 not in s6 or self.gateway6 == s6.network_address):
            raise InvalidArgument(f"IPv6 gateway {self.gateway6} is not a usable address of {s6}")
        if self.ip_range6 is not None and not self.ip_range6.subnet_of(s6):
            raise InvalidArgument(f"IPv6 ip-range {self.ip_range6} is not inside {s6}")
        if self.default_gateway6 is not None and not (
            self.default_gateway6 in s6 or self.default_gateway6.is_link_local
        ):
            raise InvalidArgument(f"IPv6 default gateway {self.default_gateway6} is neither in {s6} nor link-local")


def default_network_config(
    *,
    bridge: str = DEFAULT_BRIDGE,
    bip: str | None,
    fixed_cidr: str | None,
    ipv6: bool,
    fixed_cidr_v6: str | None,
    default_gateway: str | None,
    default_gateway_v6: str | None,
    mtu: int,
    icc: bool,
) -> dict[str, Any]:
    """The default network from dockerd-style flags, as network JSON (bip decides subnet and gateway)."""
    data: dict[str, Any] = {"name": DEFAULT_NETWORK, "bridge": bridge, "mtu": mtu, "icc": icc, "ipv6": ipv6}
    if bip:
        iface = parse_bip(bip)
        data["subnet4"] = str(iface.network)
        data["gateway4"] = str(iface.ip)
    if fixed_cidr:
        data["ip_range4"] = fixed_cidr
    if fixed_cidr_v6:
        if not ipv6:
            raise InvalidArgument("--fixed-cidr-v6 needs --ipv6")
        data["subnet6"] = fixed_cidr_v6
    if default_gateway:
        data["default_gateway4"] = default_gateway
    if default_gateway_v6:
        data["default_gateway6"] = default_gateway_v6
    return data


@dataclass(frozen=True)
class Listener:
    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.kind == "unix" else f"tcp://{self.host}:{self.port}"


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``host:port``, ``[ipv6]:port`` or ``:port`` -> (host, port); host is "" for ``:port``.

    The one parser of TCP addresses (-H tcp://…, --metrics-addr). It does not
    resolve names or judge whether an address is acceptable; port 0 means
    "any free port".
    """
    addr = text.strip()
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidArgument(f"{what} {text!r}: expected [ipv6]:port")
        port = rest[1:]
        try:
            IPv6Address(host)
        except ValueError:
            raise InvalidArgument(f"{what} {text!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            raise InvalidArgument(f"{what} {text!r}: expected host:port")
        if ":" in host:
            raise InvalidArgument(f"{what} {text!r}: write IPv6 as [address]:port")
        if host and not _HOSTNAME_RE.match(host):
            raise InvalidArgument(f"{what} {text!r}: {host!r} is not a host name or address")
    if not _PORT_RE.match(port) or int(port) > 65535:
        raise InvalidArgument(f"{what} {text!r}: port must be 0..65535")
    return host, int(port)


def parse_host(text: str, allow_public: bool = False) -> Listener:
    """Parse -H unix:///path or tcp://127.0.0.1:PORT (loopback only unless allow_public)."""
    if text.startswith("unix://"):
        path = text[len("unix://") :]
        if not path.startswith("/"):
            raise InvalidArgument(f"-H {text}: a unix socket needs an absolute path, like unix:///run/bpfnet/bpfnet.sock")
        return Listener("unix", path=path)
    if text.startswith("tcp://"):
        try:
            host, port = parse_address(text[len("tcp://"):].removesuffix("/"), "-H")
        except InvalidArgument:
            host = ""
        if not host:
            raise InvalidArgument(f"-H {text}: expected tcp://HOST:PORT")
        host = host.lower()  # host names are case-insensitive; the loopback check compares text
        if not allow_public and host not in ("127.0.0.1", "::1", "localhost"):
            raise InvalidArgument(
                f"-H {text}: {host} is not a loopback address; the API has no authentication. "
                "Pass --allow-public-api to listen there anyway"
            )
        return Listener("tcp", host=host, port=port)
    raise InvalidArgument(f"-H {text}: expected unix:///path or tcp://HOST:PORT")


@dataclass(frozen=True)
class DaemonConfig:
    hosts: tuple[str, ...] = (DEFAULT_SOCKET,)
    allow_public_api: bool = False
    netns: str | None = None
    state_dir: str = DEFAULT_STATE_DIR
    bridge: str = DEFAULT_BRIDGE
    bip: str | None = None
    fixed_cidr: str | None = None
    ipv6: bool = False
    fixed_cidr_v6: str | None = None
    default_gateway: str | None = None
    default_gateway_v6: str | None = None
    mtu: int = 1500
    icc: bool = True
    ndp_proxy_iface: str | None = None
    datapath: str = "auto"
    metrics_addr: str = "127.0.0.1:9523"
    allow_public_metrics: bool = False
    log_level: str = "info"

    def listeners(self) -> list[Listener]:
        return [parse_host(h, self.allow_public_api) for h in self.hosts]


def _toml_key(key: str) -> str:
    return key.replace("-", "_")


def load_daemon_config(path: str | None, overrides: dict[str, Any]) -> DaemonConfig:
    """Read the TOML file (if any), then apply flags that were given (not None): flags win."""
    values: dict[str, Any] = {}
    if path:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise InvalidArgument(f"--config {path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"--config {path}: invalid TOML: {exc}") from None
        known = set(DaemonConfig.__dataclass_fields__)
        for key, value in raw.items():
            k = _toml_key(key)
            if k == "host":
                k = "hosts"
            if k not in known:
                raise InvalidArgument(f"--config {path}: unknown setting {key!r}")
            values[k] = value
    for k, v in overrides.items():
        if v is not None:
            values[k] = v
    if isinstance(values.get("hosts"), str):
        values["hosts"] = [values["hosts"]]
    if "hosts" in values:
        values["hosts"] = tuple(values["hosts"]) or (DEFAULT_SOCKET,)
    cfg = replace(DaemonConfig(), **values)
    _validate_daemon(cfg)
    return cfg


def _validate_daemon(cfg: DaemonConfig) -> None:
    cfg.listeners()
    if cfg.netns is not None:
        check_name(cfg.netns, "--netns")
    check_ifname(cfg.bridge, "--bridge")
    check_mtu(cfg.mtu, cfg.ipv6)
    if cfg.datapath not in REQUESTABLE_MODES:
        raise InvalidArgument(f"--datapath {cfg.datapath!r}: expected {', '.join(REQUESTABLE_MODES[:-1])} "
                              f"or {REQUESTABLE_MODES[-1]}")
    # The default network's flags, checked now rather than after the daemon has entered its namespace.
    data = default_network_config(
        bridge=cfg.bridge, bip=cfg.bip, fixed_cidr=cfg.fixed_cidr, ipv6=cfg.ipv6,
        fixed_cidr_v6=cfg.fixed_cidr_v6, default_gateway=cfg.default_gateway,
        default_gateway_v6=cfg.default_gateway_v6, mtu=cfg.mtu, icc=cfg.icc,
    )
    if "subnet4" in data:
        try:
            NetworkConfig.from_json(data)  # fixed-cidr inside bip, IPv6 prefix, gateways
        except InvalidArgument as exc:
            raise InvalidArgument(f"default network: {exc.message}") from None
    else:
        # Without --bip the subnet is picked at start-up; the other flags must still parse.
        if cfg.fixed_cidr:
            parse_v4_network(cfg.fixed_cidr, "--fixed-cidr")
        if cfg.fixed_cidr_v6:
            parse_v6_network(cfg.fixed_cidr_v6, "--fixed-cidr-v6")
    if cfg.ndp_proxy_iface:
        check_ifname(cfg.ndp_proxy_iface, "--ndp-proxy-iface")
        if not cfg.ipv6:
            raise InvalidArgument("--ndp-proxy-iface needs --ipv6")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidArgument(f"--log-level {cfg.log_level!r}: expected debug, info, warning or error")
