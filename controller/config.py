"""Daemon and network configuration: parsing and validation.

Boundary: turns flags, TOML files and API JSON into validated, immutable
config objects, or raises ``InvalidArgument`` naming the bad field. It never
looks at the kernel; overlap with host routes is checked by the network
service, which can see them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
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

from .datapath.abi import REQUESTABLE_ATTACHES, REQUESTABLE_ENDPOINT_DEVICES, REQUESTABLE_MODES
from .dns.rules import settings as dns_settings
from .errors import InvalidArgument

# Names of networks, endpoints and namespaces. Always used with fullmatch(): a "$" also matches
# before a trailing newline, which let "x\n" in as a name that could then never be removed.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
NAME_RE = re.compile(NAME_PATTERN)
NAME_MAX = 63
NAME_RULE = "1-63 letters, digits, '_', '.', '-', starting with a letter or digit"
IFNAME_PATTERN = r"[A-Za-z0-9_.-]{1,15}"
IFNAME_MAX = 15  # IFNAMSIZ - 1
MTU_MIN, MTU_MAX = 68, 65535
IPV6_MTU_MIN = 1280
MAX_V6_PREFIX = 126
DEFAULT_SOCKET = "unix:///run/bpfnet/bpfnet.sock"
DEFAULT_STATE_DIR = "/var/lib/bpfnet"
DEFAULT_BRIDGE = "bpfnet0"
DEFAULT_NETWORK = "bridge"  # like Docker's default network name
NO_BRIDGE = "none"  # --bridge none: no default network (dockerd's -b none)
POOL_MAX_SIZE = 30  # a pool's subnets hold at least two endpoints and a gateway
ULA_PREFIXLEN = 48  # RFC 4193: fd + a 40-bit global ID
ULA_SUBNET_PREFIXLEN = 64


def random_ula_prefix() -> IPv6Network:
    """A new ULA /48 (RFC 4193: fd + a random 40-bit global ID)."""
    return IPv6Network(((0xFD << 40 | secrets.randbits(40)) << (128 - ULA_PREFIXLEN), ULA_PREFIXLEN))


@dataclass(frozen=True)
class AddressPool:
    """dockerd's --default-address-pool base=CIDR,size=N: BASE cut into /SIZE subnets."""

    base: IPv4Network
    size: int

    def __str__(self) -> str:
        return f"base={self.base},size={self.size}"

    @property
    def count(self) -> int:
        """How many subnets (networks) the pool holds."""
        return int(2 ** (self.size - self.base.prefixlen))

    def subnets(self) -> Iterator[IPv4Network]:
        return self.base.subnets(new_prefix=self.size)

    def to_json(self) -> dict[str, Any]:
        return {"base": str(self.base), "size": self.size}


def parse_address_pool(value: Any) -> AddressPool:
    """One pool from the flag's text ``base=CIDR,size=N`` or a TOML table ``{base = "CIDR", size = N}``."""
    what = "--default-address-pool"
    if isinstance(value, str):
        fields: dict[str, Any] = {}
        for part in value.split(","):
            key, sep, text = part.strip().partition("=")
            if not sep or key not in ("base", "size") or key in fields:
                raise InvalidArgument(f"{what} {value!r}: expected base=CIDR,size=N, e.g. base=10.10.0.0/16,size=24")
            fields[key] = text.strip()
        value = fields
        if isinstance(fields.get("size"), str) and fields["size"].isascii() and fields["size"].isdigit():
            fields["size"] = int(fields["size"])
    if not isinstance(value, dict) or set(value) != {"base", "size"}:
        raise InvalidArgument(f"{what} {value!r}: expected base=CIDR,size=N, e.g. base=10.10.0.0/16,size=24")
    base = parse_v4_network(value["base"], f"{what} base")
    if str(value["base"]).split("/")[0] != str(base.network_address):
        raise InvalidArgument(f"{what} base {value['base']}: host bits set; did you mean {base}?")
    size = value["size"]
    if not isinstance(size, int) or isinstance(size, bool):
        raise InvalidArgument(f"{what} size {size!r}: expected a prefix length like 24")
    if not base.prefixlen <= size <= POOL_MAX_SIZE:
        raise InvalidArgument(f"{what} size {size}: must be between the base's prefix length "
                              f"({base.prefixlen}) and {POOL_MAX_SIZE}")
    return AddressPool(base, size)


# dockerd's defaults: 172.17.0.0/16 ... 172.31.0.0/16 as /16s, then 192.168.0.0/16 in /20s.
DEFAULT_ADDRESS_POOLS = tuple(
    [AddressPool(IPv4Network(f"172.{i}.0.0/16"), 16) for i in range(17, 32)]
    + [AddressPool(IPv4Network("192.168.0.0/16"), 20)]
)
DEFAULT_POOLS = tuple(subnet for pool in DEFAULT_ADDRESS_POOLS for subnet in pool.subnets())


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidArgument(f"invalid {what} {value!r}: use {NAME_RULE}")
    return value


def bridge_name_for(network: str) -> str:
    """Docker names bridges br-<id>; we use br-<name> when it fits, else a hash."""
    name = f"br-{network}"
    if len(name) <= IFNAME_MAX:
        return name
    return "br-" + hashlib.sha256(network.encode()).hexdigest()[:12]


def check_ifname(value: str, what: str = "bridge name") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"invalid {what}: empty")
    if len(value) > IFNAME_MAX:
        raise InvalidArgument(f"{what} {value!r} is {len(value)} characters; Linux allows at most {IFNAME_MAX}")
    if not re.fullmatch(IFNAME_PATTERN, value) or value in (".", ".."):
        raise InvalidArgument(f"invalid {what} {value!r}: use letters, digits, '_', '.', '-'")
    return value


def check_mtu(value: Any, ipv6: bool = False) -> int:
    # An int, or a string of digits from a flag; never a float (1500.5 was silently truncated),
    # a bool (an int subclass) or Infinity.
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"invalid MTU {value!r}: not an integer")
    mtu = value
    low = IPV6_MTU_MIN if ipv6 else MTU_MIN
    if not low <= mtu <= MTU_MAX:
        raise InvalidArgument(f"MTU {mtu} out of range {low}-{MTU_MAX}" + (" (IPv6 needs 1280)" if ipv6 else ""))
    return mtu


# Address space a bridge network, its gateways and its endpoints may never use: these blocks are
# not unicast for hosts on a link (RFC 6890's special-purpose registries). Every subnet, range,
# gateway and endpoint address, from the API and from the daemon's flags, is checked against them
# here and nowhere else. Private (RFC 1918, fc00::/7) and global space is what the rest is for.
V4_SPECIAL: tuple[tuple[IPv4Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "'this network' space (0.0.0.0/8)"),
    (IPv4Network("127.0.0.0/8"), "loopback space (127.0.0.0/8)"),
    (IPv4Network("169.254.0.0/16"), "link-local space (169.254.0.0/16)"),
    (IPv4Network("224.0.0.0/4"), "multicast space (224.0.0.0/4)"),
    (IPv4Network("240.0.0.0/4"), "reserved space (240.0.0.0/4, broadcast included)"),
)
V6_SPECIAL: tuple[tuple[IPv6Network, str], ...] = (
    # ::/8 holds the unspecified and loopback addresses, IPv4-mapped ::ffff:0:0/96 and the
    # deprecated IPv4-compatible addresses: none is a host address on a link.
    (IPv6Network("::/8"), "reserved space (::/8: unspecified, loopback, IPv4-mapped ::ffff:0:0/96)"),
    (IPv6Network("fe80::/10"), "link-local space (fe80::/10)"),
    (IPv6Network("fec0::/10"), "deprecated site-local space (fec0::/10)"),
    (IPv6Network("ff00::/8"), "multicast space (ff00::/8)"),
)
V4_CIDR_HINT = "an IPv4 CIDR string like 172.17.0.0/16"
V6_CIDR_HINT = "an IPv6 CIDR string like 1553:ba3:2::/64"
UNICAST_HINT = "give a private or global unicast range"


def json_type(value: Any) -> str:
    """What a JSON value is, for messages: 'a number', 'a boolean', 'null'..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "an object"


def _text(value: Any, what: str, expected: str) -> str:
    """VALUE as an address string, refusing other JSON types and IPv6 scopes (one message each)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: expected {expected}, got {json_type(value)}")
    if "%" in value:
        # A scope (fe80::1%eth0) names an interface of whoever wrote it; bpfnet would store the
        # address without it (defect: a scoped default_gateway6 lost its scope). An endpoint's
        # gateway device is always its eth0, so no scope is ever needed: refuse it everywhere.
        raise InvalidArgument(f"{what} {value!r}: IPv6 scopes ('%...') are not accepted; "
                              "give the address alone (the endpoint's gateway device is always eth0)")
    return value


def check_unicast(net: IPv4Network | IPv6Network, what: str) -> None:
    """Refuse a subnet (or a single address as /32, /128) touching special-purpose space."""
    special = V4_SPECIAL if net.version == 4 else V6_SPECIAL
    for block, label in special:
        if net.overlaps(block):
            raise InvalidArgument(f"{what} {net} is in {label}; {UNICAST_HINT}")


def check_unicast_address(address: IPv4Address | IPv6Address, what: str, link_local: bool = False) -> None:
    """Refuse an address in special-purpose space; LINK_LOCAL admits fe80::/10 (IPv6 gateways)."""
    if link_local and address.version == 6 and address.is_link_local:
        if address == IPv6Address("fe80::"):
            raise InvalidArgument(f"{what} {address} is the link-local subnet-router anycast address")
        return
    special = V4_SPECIAL if address.version == 4 else V6_SPECIAL
    for block, label in special:
        if address in block:
            raise InvalidArgument(f"{what} {address} is in {label}; give a unicast address")


def parse_v4_network(text: Any, what: str) -> IPv4Network:
    text = _text(text, what, V4_CIDR_HINT)
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: expected {V4_CIDR_HINT}") from None
    if not isinstance(net, IPv4Network) or "/" not in text:
        raise InvalidArgument(f"malformed {what} {text!r}: expected {V4_CIDR_HINT}")
    if net.prefixlen > 30:
        raise InvalidArgument(f"{what} {net} is too small: at most /30")
    check_unicast(net, what)
    return net


def parse_v6_network(text: Any, what: str) -> IPv6Network:
    text = _text(text, what, V6_CIDR_HINT)
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: expected {V6_CIDR_HINT}") from None
    if not isinstance(net, IPv6Network) or "/" not in text:
        raise InvalidArgument(f"malformed {what} {text!r}: expected {V6_CIDR_HINT}")
    if net.prefixlen > MAX_V6_PREFIX:
        raise InvalidArgument(f"{what} {net} has a prefix longer than /{MAX_V6_PREFIX}")
    check_unicast(net, what)
    return net


def parse_v4(text: Any, what: str) -> IPv4Address:
    text = _text(text, what, "an IPv4 address string like 172.17.0.2")
    try:
        address = IPv4Address(text)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: not an IPv4 address") from None
    check_unicast_address(address, what)
    return address


def parse_v6(text: Any, what: str, link_local: bool = False) -> IPv6Address:
    """An IPv6 host address; LINK_LOCAL admits fe80::/10 (a default gateway may be one)."""
    text = _text(text, what, "an IPv6 address string like 1553:ba3:2::2")
    try:
        address = IPv6Address(text)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: not an IPv6 address") from None
    check_unicast_address(address, what, link_local)
    return address


def parse_bip(text: Any) -> IPv4Interface:
    text = _text(text, "--bip", "the gateway address and prefix, like 172.17.0.1/16")
    try:
        iface = ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"malformed --bip {text!r}: expected the gateway address and prefix, like 172.17.0.1/16") from None
    if not isinstance(iface, IPv4Interface) or "/" not in text:
        raise InvalidArgument(f"malformed --bip {text!r}: expected the gateway address and prefix, like 172.17.0.1/16")
    if iface.network.prefixlen > 30:
        raise InvalidArgument(f"--bip {text}: subnet too small, at most /30")
    check_unicast(iface.network, "--bip")
    if iface.ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidArgument(f"--bip {text}: the gateway cannot be the network or broadcast address")
    return iface


VNI_MAX = (1 << 24) - 1


def _vni(given: dict[str, Any]) -> int | None:
    vni = given.get("vni")
    if vni is None:
        return None
    if given.get("driver") != "overlay":
        raise InvalidArgument("vni: only overlay networks (driver overlay) have a VNI")
    if not isinstance(vni, int) or isinstance(vni, bool) or not 1 <= vni <= VNI_MAX:
        raise InvalidArgument(f"vni: expected an integer from 1 to {VNI_MAX}, got {vni!r}")
    return vni


def check_driver_name(value: Any) -> str:
    """A network driver's name: lower-case letters, digits, '-' and '_', starting with a letter.
    Whether this daemon has such a driver is the network service's question."""
    if not isinstance(value, str) or not DRIVER_NAME_RE.fullmatch(value):
        raise InvalidArgument(f"driver: expected a driver name like 'bridge' or 'overlay', got {value!r}")
    return value


DRIVER_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# drivers whose endpoints hang on a physical interface (network create --parent)
UNDERLAY_DRIVERS = ("macvlan", "ipvlan")
IPVLAN_MODES = ("l2", "l3")
VLAN_MIN, VLAN_MAX = 1, 4094  # 802.1q: 0 and 4095 are reserved


def split_parent(parent: str) -> tuple[str, int | None]:
    """IFACE.VLAN -> (IFACE, VLAN); IFACE -> (IFACE, None). Only a trailing run of digits after
    the last dot is a VLAN id (an interface name may itself hold dots)."""
    base, dot, tail = parent.rpartition(".")
    if dot and base and tail.isascii() and tail.isdigit():
        return base, int(tail)
    return parent, None


def check_parent(value: Any) -> str:
    """--parent IFACE[.VLAN]: an interface name (the sub-interface's name is the text itself, as
    Docker's macvlan names it) with a VLAN id in 1-4094."""
    if not isinstance(value, str):
        raise InvalidArgument(f"parent: expected an interface name like eth0 or eth0.10, got {json_type(value)}")
    check_ifname(value, "parent interface")
    base, vlan = split_parent(value)
    check_ifname(base, "parent interface")
    if vlan is not None and not VLAN_MIN <= vlan <= VLAN_MAX:
        raise InvalidArgument(f"parent {value!r}: VLAN id {vlan} out of range {VLAN_MIN}-{VLAN_MAX}")
    return value


def check_ipvlan_mode(value: Any) -> str:
    if value not in IPVLAN_MODES:
        raise InvalidArgument(f"ipvlan_mode: expected one of {', '.join(IPVLAN_MODES)}, got {value!r}")
    return str(value)


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
    # Where the subnets came from ("given", "bridge", "pool 172.17.0.0/16", "ula fd../48") and what
    # bpfnet added to the kernel ({"bridge": made it?, "addresses": ["a/len", ...], "mac": the
    # bridge's MAC when adopted}). Bookkeeping, not settings: equal configs may differ here.
    # None (networks stored before these existed): "given", and bpfnet made the bridge.
    subnet_source: str | None = field(default=None, compare=False)
    subnet6_source: str | None = field(default=None, compare=False)
    owned: dict[str, Any] | None = field(default=None, compare=False)
    # bpfnet.outside: nothing leaves or enters (network create --internal; enforced by the datapath),
    # and whether the subnet is masqueraded when it leaves the host (network create --no-masquerade)
    internal: bool = False
    masquerade: bool = True
    # bpfnet.drivers: which kind of network this is (network create --driver); "bridge" for
    # networks stored before there were drivers
    driver: str = "bridge"
    # the underlay drivers (bpfnet.drivers.underlay): the physical interface, IFACE or IFACE.VLAN
    # (an 802.1q sub-interface of IFACE), their endpoints' links hang on (network create --parent),
    # and ipvlan's mode (l2, l3)
    parent: str | None = None
    ipvlan_mode: str | None = None
    # routed networks (bpfnet.drivers.routed): the subnet shared by the cluster, of which this
    # node's block (subnet4/subnet6 here) is one /host_prefix (/host_prefix6)
    cluster_subnet4: IPv4Network | None = None
    cluster_subnet6: IPv6Network | None = None
    host_prefix: int | None = None
    host_prefix6: int | None = None
    # overlay networks: the VXLAN network identifier, one per network in the cluster
    vni: int | None = None

    @property
    def owns_bridge(self) -> bool:
        return self.owned is None or bool(self.owned.get("bridge"))

    @property
    def range4(self) -> IPv4Network:
        return self.ip_range4 or self.subnet4

    @property
    def range6(self) -> IPv6Network | None:
        return self.ip_range6 or self.subnet6

    def to_json(self) -> dict[str, Any]:
        out = {k: (str(v) if v is not None and not isinstance(v, (bool, int, dict)) else v)
               for k, v in asdict(self).items()}
        for key in ("subnet_source", "subnet6_source", "owned", "parent", "ipvlan_mode", "cluster_subnet4",
                    "cluster_subnet6", "host_prefix", "host_prefix6"):
            if out[key] is None:
                del out[key]  # stored and answered only when known
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetworkConfig:
        """Build and validate from API/stored JSON (addresses as strings, plain JSON values).

        Types are strict: a CIDR must be a string, ipv6/icc booleans, mtu an integer; null or a
        missing key means "not given". Without a bridge the network's is br-<name>.
        """
        if not isinstance(data, dict):
            raise InvalidArgument("network: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidArgument(f"network: unknown field(s) {', '.join(repr(k) for k in sorted(unknown))}")
        given = {k: v for k, v in data.items() if v is not None}
        for req in ("name", "subnet4"):
            if req not in given:
                raise InvalidArgument(f"network: missing field {req!r}")
        name = check_name(given["name"], "network name")
        bridge = check_ifname(given["bridge"]) if "bridge" in given else bridge_name_for(name)
        if re.fullmatch(r"bnv[0-9]+", bridge):
            raise InvalidArgument(f"bridge name {bridge!r} is reserved: bnvN names endpoints' host veths")
        subnet4 = parse_v4_network(given["subnet4"], "subnet")
        gw = given.get("gateway4")
        gateway4 = parse_v4(gw, "gateway") if gw is not None else IPv4Address(int(subnet4.network_address) + 1)
        ip_range4 = parse_v4_network(given["ip_range4"], "ip-range") if "ip_range4" in given else None
        ipv6 = _flag(given, "ipv6", False)
        subnet6 = parse_v6_network(given["subnet6"], "IPv6 subnet") if "subnet6" in given else None
        ipv6 = ipv6 or subnet6 is not None
        if "gateway6" in given and subnet6 is None:
            # It used to be dropped without a word: the gateway is an address of the IPv6 subnet.
            raise InvalidArgument("gateway6 needs subnet6: the IPv6 gateway is an address of the IPv6 subnet")
        gateway6 = parse_v6(given["gateway6"], "IPv6 gateway") if "gateway6" in given else None
        if subnet6 is not None and gateway6 is None:
            gateway6 = IPv6Address(int(subnet6.network_address) + 1)
        ip_range6 = parse_v6_network(given["ip_range6"], "IPv6 ip-range") if "ip_range6" in given else None
        dg4 = parse_v4(given["default_gateway4"], "default gateway") if "default_gateway4" in given else None
        dg6 = None
        if "default_gateway6" in given:
            if not ipv6:
                raise InvalidArgument("default_gateway6 needs IPv6 on the network (ipv6 or subnet6)")
            dg6 = parse_v6(given["default_gateway6"], "IPv6 default gateway", link_local=True)
        mtu = given.get("mtu", 1500)
        if not isinstance(mtu, int) or isinstance(mtu, bool):
            raise InvalidArgument(f"mtu: expected an integer, got {json_type(mtu)}")
        mtu = check_mtu(mtu, ipv6)
        icc = _flag(given, "icc", True)
        sources = [given.get(k) for k in ("subnet_source", "subnet6_source")]
        owned = given.get("owned")
        if any(not isinstance(v, (str, type(None))) for v in sources) or not isinstance(owned, (dict, type(None))):
            raise InvalidArgument("network: subnet_source/subnet6_source must be strings, owned an object")
        cfg = cls(name, bridge, subnet4, gateway4, ip_range4, ipv6, subnet6, gateway6, ip_range6, dg4, dg6, mtu, icc,
                  sources[0], sources[1], owned, internal=_flag(given, "internal", False),
                  masquerade=_flag(given, "masquerade", True),
                  driver=check_driver_name(given.get("driver", "bridge")), vni=_vni(given),
                  parent=check_parent(given["parent"]) if "parent" in given else None,
                  ipvlan_mode=check_ipvlan_mode(given["ipvlan_mode"]) if "ipvlan_mode" in given else None,
                  cluster_subnet4=(parse_v4_network(given["cluster_subnet4"], "cluster subnet")
                                   if "cluster_subnet4" in given else None),
                  cluster_subnet6=(parse_v6_network(given["cluster_subnet6"], "cluster IPv6 subnet")
                                   if "cluster_subnet6" in given else None),
                  host_prefix=_prefix(given, "host_prefix", 32), host_prefix6=_prefix(given, "host_prefix6", 128))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.driver in UNDERLAY_DRIVERS and self.parent is None:
            raise InvalidArgument(f"a {self.driver} network needs a parent interface (--parent IFACE or IFACE.VLAN)")
        if self.parent is not None and self.driver not in UNDERLAY_DRIVERS:
            raise InvalidArgument(f"parent: only the {' and '.join(UNDERLAY_DRIVERS)} drivers take a parent "
                                  f"interface, not {self.driver}")
        routed = (self.cluster_subnet4, self.cluster_subnet6, self.host_prefix, self.host_prefix6)
        if self.driver != "routed" and any(v is not None for v in routed):
            raise InvalidArgument(f"host_prefix, host_prefix6: only for the routed driver, not {self.driver}")
        if self.ipvlan_mode is not None and self.driver != "ipvlan":
            raise InvalidArgument(f"ipvlan_mode: only for the ipvlan driver, not {self.driver}")
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


def _prefix(data: dict[str, Any], key: str, top: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
        raise InvalidArgument(f"{key}: expected a prefix length from 1 to {top}, got {value!r}")
    return value


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    """A JSON boolean: "false" used to read as true."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InvalidArgument(f"network: {key} must be true or false, got {json_type(value)}")
    return value


def migrate_stored_network(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A network row stored by an earlier version, with the forms today's rules refuse made valid.

    Earlier versions accepted, and stored, a ``gateway6`` without ``subnet6`` (never used), a
    ``%scope`` on the IPv6 default gateway (the gateway device is always eth0) and a
    ``default_gateway6`` on a network without IPv6 (never used). Returns the new row and one
    line per change; rows that need none come back unchanged.
    """
    out = dict(data)
    changes: list[str] = []
    for key in ("gateway6", "default_gateway6"):
        value = out.get(key)
        if isinstance(value, str) and "%" in value:
            out[key] = value.split("%", 1)[0]
            changes.append(f"dropped the scope of {key} {value!r} (the gateway device is always eth0)")
    if out.get("gateway6") is not None and out.get("subnet6") is None:
        changes.append(f"dropped gateway6 {out['gateway6']!r}: without subnet6 it was never used")
        out["gateway6"] = None
    if out.get("default_gateway6") is not None and not (out.get("ipv6") or out.get("subnet6")):
        changes.append(f"dropped default_gateway6 {out['default_gateway6']!r}: the network has no IPv6")
        out["default_gateway6"] = None
    return out, changes


def default_network_config(
    *,
    bridge: str = DEFAULT_BRIDGE,
    bip: str | None,
    fixed_cidr: str | None,
    ipv6: bool,
    fixed_cidr_v6: str | None,
    default_gateway: str | None,
    default_gateway_v6: str | None,
    mtu: int | None,
    icc: bool,
) -> dict[str, Any]:
    """The default network from dockerd-style flags, as network JSON (bip decides subnet and gateway).
    Without MTU the network takes an existing bridge's MTU, else 1500."""
    data: dict[str, Any] = {"name": DEFAULT_NETWORK, "bridge": bridge, "icc": icc, "ipv6": ipv6}
    if mtu is not None:
        data["mtu"] = mtu
    if bip:
        iface = parse_bip(bip)
        data["subnet4"] = str(iface.network)
        data["gateway4"] = str(iface.ip)
        data["subnet_source"] = "given"
    if fixed_cidr:
        data["ip_range4"] = fixed_cidr
    if fixed_cidr_v6:
        if not ipv6:
            raise InvalidArgument("--fixed-cidr-v6 needs --ipv6")
        data["subnet6"] = fixed_cidr_v6
        data["subnet6_source"] = "given"
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


DOCKER_PLUGIN_DIR = "/run/docker/plugins"


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
    mtu: int | None = None  # None: an existing bridge's MTU, else 1500
    icc: bool = True
    # --default-address-pool: where networks without a subnet get one; empty: DEFAULT_ADDRESS_POOLS
    default_address_pool: tuple[AddressPool, ...] = ()
    ndp_proxy_iface: str | None = None
    datapath: str = "auto"
    # tc, tcx, or auto (tcx where the kernel has it, the default). A tcx link's detach waits for
    # an RCU grace period; the datapath takes it off the endpoint-add critical section (see the
    # README's "Attach mechanism" and bench/RESULTS.md).
    datapath_attach: str = "auto"
    # veth, netkit, or auto (netkit where the kernel has it, the default); see the README's "Endpoint device".
    endpoint_device: str = "auto"
    metrics_addr: str = "127.0.0.1:9523"
    allow_public_metrics: bool = False
    log_level: str = "info"
    group: str | None = None  # group owning the unix sockets (dockerd -G); None: root
    tls: bool = False
    tlsverify: bool = False
    tlscacert: str | None = None
    tlscert: str | None = None
    tlskey: str | None = None
    reconcile: str = "check"  # what to do with kernel objects the state does not know (RECONCILE_MODES)
    ip_masq: bool = True  # masquerade networks' IPv4 traffic leaving the host (bpfnet.outside)
    ip6_masq: bool = False  # and their IPv6 traffic
    ip_forward: bool = True  # turn on forwarding in the managed namespace
    # published ports' BPF fast path (bpf/nat.h) on the uplinks: these interfaces, or () for
    # every interface of the managed namespace with an address that is not bpfnet's
    published_fastpath: bool = True
    uplinks: tuple[str, ...] = ()
    docker_plugin: str | None = None  # serve Docker's network + IPAM driver API as this plugin name
    docker_plugin_dir: str = DOCKER_PLUGIN_DIR  # where dockerd looks for plugin sockets
    # multi-host (bpfnet.cluster, bpfnet.drivers.overlay): etcd://HOST:PORT[,...], this host's VTEP
    # address, and its name in the cluster (default: the host name)
    cluster_store: str | None = None
    advertise_addr: str | None = None
    node_name: str | None = None
    # how overlay packets get their VXLAN headers: "native" (the eBPF programs write and strip
    # them, bpf/tunnel.h) or "device" (the collect-metadata VXLAN device does); OVERLAY_ENCAPS
    overlay_encap: str = "native"
    # bpfnet.dns: upstreams, search domains and options replacing those of the resolv.conf the
    # daemon starts from (--resolv-conf, default /etc/resolv.conf); None: not given
    dns: tuple[str, ...] | None = None
    dns_search: tuple[str, ...] | None = None
    dns_opt: tuple[str, ...] | None = None
    resolv_conf: str | None = None

    @property
    def docker_plugin_socket(self) -> str | None:
        """The Docker plugin's socket, DIR/NAME.sock (what dockerd finds as plugin NAME)."""
        return f"{self.docker_plugin_dir.rstrip('/')}/{self.docker_plugin}.sock" if self.docker_plugin else None

    def listeners(self) -> list[Listener]:
        return [parse_host(h, self.allow_public_api) for h in self.hosts]

    @property
    def address_pools(self) -> tuple[AddressPool, ...]:
        return self.default_address_pool or DEFAULT_ADDRESS_POOLS

    @property
    def has_default_network(self) -> bool:
        return self.bridge != NO_BRIDGE

    def default_network(self) -> dict[str, Any] | None:
        """The default network's JSON from the flags; None with --bridge none."""
        if not self.has_default_network:
            return None
        return default_network_config(
            bridge=self.bridge, bip=self.bip, fixed_cidr=self.fixed_cidr, ipv6=self.ipv6,
            fixed_cidr_v6=self.fixed_cidr_v6, default_gateway=self.default_gateway,
            default_gateway_v6=self.default_gateway_v6, mtu=self.mtu, icc=self.icc,
        )


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
    if isinstance(values.get("uplinks"), str):
        values["uplinks"] = [values["uplinks"]]
    if "uplinks" in values:
        values["uplinks"] = tuple(values["uplinks"])
        for name in values["uplinks"]:
            check_ifname(name, "--uplink")
    if isinstance(values.get("hosts"), str):
        values["hosts"] = [values["hosts"]]
    if "hosts" in values:
        values["hosts"] = tuple(values["hosts"]) or (DEFAULT_SOCKET,)
    if "default_address_pool" in values:
        pools = values["default_address_pool"]
        if isinstance(pools, (str, dict)):
            pools = [pools]
        if not isinstance(pools, (list, tuple)):
            raise InvalidArgument("default-address-pool: expected a list of base=CIDR,size=N or {base, size}")
        values["default_address_pool"] = tuple(p if isinstance(p, AddressPool) else parse_address_pool(p)
                                               for p in pools)
        _check_pools_apart(values["default_address_pool"])
    for key in ("dns", "dns_search", "dns_opt"):
        if isinstance(values.get(key), str):
            values[key] = [values[key]]
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    cfg = replace(DaemonConfig(), **values)
    _validate_daemon(cfg)
    return cfg


#: --reconcile: "check" refuses to start when the state is new or empty but bpfnet's
#: kernel objects exist (a lost state file must not destroy live endpoints);
#: "adopt" rebuilds the missing state from them; "wipe" deletes them.
RECONCILE_MODES = ("check", "adopt", "wipe")
#: --overlay-encap: who writes and strips overlay packets' VXLAN headers (bpf/tunnel.h).
OVERLAY_ENCAPS = ("native", "device")


def _check_pools_apart(pools: tuple[AddressPool, ...]) -> None:
    for i, a in enumerate(pools):
        for b in pools[i + 1:]:
            if a.base.overlaps(b.base):
                raise InvalidArgument(f"--default-address-pool {a} overlaps {b}")


def _validate_daemon(cfg: DaemonConfig) -> None:
    cfg.listeners()
    if cfg.reconcile not in RECONCILE_MODES:
        raise InvalidArgument(f"--reconcile {cfg.reconcile!r}: expected check, adopt or wipe")
    if cfg.overlay_encap not in OVERLAY_ENCAPS:
        raise InvalidArgument(f"--overlay-encap {cfg.overlay_encap!r}: expected native or device")
    if cfg.netns is not None:
        check_name(cfg.netns, "--netns")
    check_ifname(cfg.bridge, "--bridge")
    if cfg.mtu is not None:
        check_mtu(cfg.mtu, cfg.ipv6)
    if cfg.datapath not in REQUESTABLE_MODES:
        raise InvalidArgument(f"--datapath {cfg.datapath!r}: expected {', '.join(REQUESTABLE_MODES[:-1])} "
                              f"or {REQUESTABLE_MODES[-1]}")
    if cfg.datapath_attach not in REQUESTABLE_ATTACHES:
        raise InvalidArgument(f"--datapath-attach {cfg.datapath_attach!r}: expected "
                              f"{', '.join(REQUESTABLE_ATTACHES)}")
    if cfg.endpoint_device not in REQUESTABLE_ENDPOINT_DEVICES:
        raise InvalidArgument(f"--endpoint-device {cfg.endpoint_device!r}: expected "
                              f"{', '.join(REQUESTABLE_ENDPOINT_DEVICES)}")
    # The default network's flags, checked now rather than after the daemon has entered its namespace.
    data = cfg.default_network()
    if data is None:
        for flag, value in (("--bip", cfg.bip), ("--fixed-cidr", cfg.fixed_cidr), ("--fixed-cidr-v6", cfg.fixed_cidr_v6),
                            ("--default-gateway", cfg.default_gateway),
                            ("--default-gateway-v6", cfg.default_gateway_v6)):
            if value:
                raise InvalidArgument(f"{flag} configures the default network, and --bridge none means there is none")
    elif "subnet4" in data:
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
        if cfg.default_gateway:
            parse_v4(cfg.default_gateway, "--default-gateway")
        if cfg.default_gateway_v6:
            if not cfg.ipv6:
                raise InvalidArgument("--default-gateway-v6 needs --ipv6")
            parse_v6(cfg.default_gateway_v6, "--default-gateway-v6", link_local=True)
    if cfg.ndp_proxy_iface:
        check_ifname(cfg.ndp_proxy_iface, "--ndp-proxy-iface")
        if not cfg.ipv6:
            raise InvalidArgument("--ndp-proxy-iface needs --ipv6")
    if cfg.docker_plugin is not None:
        check_name(cfg.docker_plugin, "--docker-plugin")
        if not cfg.docker_plugin_dir.startswith("/"):
            raise InvalidArgument(f"--docker-plugin-dir {cfg.docker_plugin_dir!r} is not an absolute path")
        if len(cfg.docker_plugin_socket or "") > 107:
            raise InvalidArgument(f"--docker-plugin socket {cfg.docker_plugin_socket} is longer than a Unix "
                                  "socket path may be (107 bytes)")
    if cfg.cluster_store is not None:
        from .cluster.model import check_advertise_addr, parse_store_url

        parse_store_url(cfg.cluster_store)
        if not cfg.advertise_addr:
            raise InvalidArgument("--cluster-store needs --advertise-addr: the IPv4 address of this host that the "
                                  "other hosts send VXLAN packets to")
        check_advertise_addr(cfg.advertise_addr)
        if cfg.node_name is not None:
            check_name(cfg.node_name, "--node-name")
    elif cfg.advertise_addr or cfg.node_name:
        raise InvalidArgument("--advertise-addr and --node-name need --cluster-store etcd://HOST:PORT")
    dns_settings(cfg.dns, cfg.dns_search, cfg.dns_opt)
    if cfg.resolv_conf is not None and not cfg.resolv_conf.startswith("/"):
        raise InvalidArgument(f"--resolv-conf {cfg.resolv_conf!r} is not an absolute path")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidArgument(f"--log-level {cfg.log_level!r}: expected debug, info, warning or error")
