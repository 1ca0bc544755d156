"""Address derivation as Docker does it on its default bridge.

Boundary: pure functions, no I/O. MAC from IPv4 (02:42 + the four bytes),
modified EUI-64 link-local addresses, and global IPv6 addresses that embed the
MAC in the low 48 bits of a /80-or-shorter prefix.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from .errors import InvalidArgument

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


def parse_mac(text: str) -> str:
    """Validate a unicast MAC and return it lower-case, colon separated."""
    if not _MAC_RE.match(text):
        raise InvalidArgument(f"malformed MAC address {text!r}: expected six hex bytes like 02:42:ac:11:00:02")
    mac = text.lower()
    if int(mac[:2], 16) & 1:
        raise InvalidArgument(f"MAC address {mac} is a multicast address; an endpoint needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise InvalidArgument("MAC address 00:00:00:00:00:00 is not usable")
    return mac


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def int_to_mac(value: int) -> str:
    raw = f"{value:012x}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def mac_from_ipv4(ip: IPv4Address) -> str:
    """Docker's rule: 02:42 followed by the four bytes of the IPv4 address."""
    return int_to_mac((0x0242 << 32) | int(ip))


def eui64_interface_id(mac: str) -> int:
    """Modified EUI-64 (RFC 4291 appendix A): flip the U/L bit, insert ff:fe."""
    value = mac_to_int(mac)
    high = (value >> 24) ^ 0x020000  # first three bytes, universal/local bit flipped
    low = value & 0xFFFFFF
    return (high << 40) | (0xFFFE << 24) | low


def link_local_from_mac(mac: str) -> IPv6Address:
    return IPv6Address((0xFE80 << 112) | eui64_interface_id(mac))


def ipv6_from_mac(prefix: IPv6Network, mac: str) -> IPv6Address:
    """Docker's rule for --fixed-cidr-v6 of /80 or shorter: the MAC fills the low 48 bits."""
    if prefix.prefixlen > 80:
        raise InvalidArgument(f"{prefix} is longer than /80: the MAC does not fit in its host part")
    return IPv6Address(int(prefix.network_address) | mac_to_int(mac))
