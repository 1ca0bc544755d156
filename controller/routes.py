"""Routes bpfnet owns in the managed namespace, marked with bpfnet's own routing protocol number.

Boundary: kernel objects only (no state, no policy), as ``bpfnet.links``; the routed driver
decides which routes should exist, through ``bpfnet.kernel``. Every route made here carries
``PROTO`` (``ip route show proto 201``), so that bpfnet finds, compares and removes exactly its
own routes and never one a person or another daemon added.
"""

from __future__ import annotations

import errno
import socket
from ipaddress import ip_network
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from .links import GONE, MAIN_TABLE

PROTO = 201  # RTPROT_* numbers above 200 are free for private use by convention (iproute2's rt_protos)
# the kernel's answers when a next hop is not on a connected subnet (a host that is not adjacent)
UNREACHABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL)


class NotAdjacent(RuntimeError):
    """The next hop is not on a subnet of this namespace: the kernel will not route through it."""


def family_of(dst: str) -> int:
    return socket.AF_INET6 if ip_network(dst).version == 6 else socket.AF_INET


def dump(ipr: Any) -> dict[str, str]:
    """{destination CIDR: gateway} of the main table's routes with PROTO, both families."""
    out: dict[str, str] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family, proto=PROTO):
            if r.get("RTA_TABLE") != MAIN_TABLE or r["proto"] != PROTO:
                continue
            dst = r.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            out[str(ip_network(f"{dst}/{r['dst_len']}"))] = str(r.get("RTA_GATEWAY") or "")
    return out


def replace(ipr: Any, dst: str, gateway: str, oif: int | None = None) -> None:
    """DST via GATEWAY (OIF: needed for a link-local gateway), made or changed in place."""
    extra: dict[str, Any] = {"oif": oif} if oif else {}
    try:
        ipr.route("replace", dst=dst, gateway=gateway, family=family_of(dst), proto=PROTO, **extra)
    except NetlinkError as exc:
        if exc.code in UNREACHABLE:
            raise NotAdjacent(f"next hop {gateway} for {dst} is not on a subnet of this host ({exc})") from None
        raise


def delete(ipr: Any, dst: str) -> None:
    try:
        ipr.route("del", dst=dst, family=family_of(dst), proto=PROTO)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise
