"""Links, addresses, routes and neighbours, through pyroute2.

Boundary: kernel objects only, no state and no policy. Functions are
idempotent in the pyroute2 style: EEXIST on add and ENODEV/ESRCH/ENOENT on
delete count as success. Functions taking an ``IPRoute`` act on whatever
namespace that socket lives in: the daemon's own (the managed host side) or
an endpoint's (``IPRoute(netns=name)``).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address, ip_network
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK

from . import netns
from .errors import Conflict

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02  # skip duplicate address detection: the address is usable at once
NTF_PROXY = 0x08
GONE = (errno.ENODEV, errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL)
LOOPBACK_IFINDEX = 1  # lo is the first device of every network namespace
ENDPOINT_IFNAME = "eth0"  # the endpoint side of every veth, as in Docker
# what pyroute2's "add" sends (create, fail if it exists), plus: answer with the new object
CREATE_ECHO = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def link_index_here(name: str) -> int | None:
    """ifindex of NAME in the calling thread's namespace, or None.

    if_nametoindex is one ioctl, ~100x cheaper than an RTM_GETLINK through
    pyroute2 (which decodes the whole link). The daemon's threads all live in
    the managed namespace, the one its IPRoute talks to.
    """
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def link_mac(ipr: Any, index: int) -> str:
    return str(ipr.link("get", index=index)[0].get("IFLA_ADDRESS"))


def ensure_bridge(ipr: Any, name: str, mac: str, mtu: int) -> tuple[int, bool]:
    """Create (or adopt) bridge NAME, up, with a fixed MAC; returns (ifindex, created)."""
    created = False
    try:
        ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
        created = True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    index = link_index(ipr, name)
    if index is None:
        raise RuntimeError(f"bridge {name} vanished right after creation")
    link = ipr.link("get", index=index)[0]
    info = link.get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_KIND") != "bridge":
        raise Conflict(f"bridge name {name} is taken by a link that is not a bridge")
    ipr.link("set", index=index, state="up")
    return index, created


def link_kind(ipr: Any, link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return None if info is None else str(info.get("IFLA_INFO_KIND"))


def delete_link(ipr: Any, name: str) -> None:
    index = link_index(ipr, name)
    if index is None:
        return
    try:
        ipr.link("del", index=index)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def ensure_address(ipr: Any, index: int, address: str, prefixlen: int, nodad: bool = False) -> None:
    kwargs: dict[str, Any] = {"index": index, "address": address, "prefixlen": prefixlen}
    if nodad:
        kwargs["flags"] = IFA_F_NODAD
    try:
        ipr.addr("add", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def addresses(ipr: Any, index: int | None = None) -> list[tuple[str, int]]:
    out = []
    for msg in ipr.addr("dump"):
        if index is not None and msg["index"] != index:
            continue
        out.append((str(msg.get("IFA_ADDRESS")), int(msg["prefixlen"])))
    return out


def host_prefixes(ipr: Any, skip_ifindexes: set[int] | None = None) -> list[Any]:
    """Every route destination and address prefix in a namespace, default routes excluded."""
    skip = skip_ifindexes or set()
    nets = []
    for family in (2, 10):
        for route in ipr.route("dump", family=family):
            dst = route.get("RTA_DST")
            if dst is None or route["dst_len"] == 0 or route.get("RTA_TABLE") == 255:
                continue  # default routes and the local table are not networks to avoid
            if route.get("RTA_OIF") in skip:
                continue
            net = ip_network(f"{dst}/{route['dst_len']}", strict=False)
            if not (net.is_loopback or net.is_link_local or net.is_multicast):
                nets.append(net)
    for msg in ipr.addr("dump"):
        if msg["index"] in skip:
            continue
        net = ip_network(f"{msg.get('IFA_ADDRESS')}/{msg['prefixlen']}", strict=False)
        if not (net.is_loopback or net.is_link_local):
            nets.append(net)
    return nets


def create_veth(
    ipr: Any, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int, up: bool
) -> tuple[int, int]:
    """Create veth HOST, a port of BRIDGE_INDEX (and up if UP), <-> eth0 inside PEER_NS with PEER_MAC.

    Returns (HOST's ifindex, eth0's ifindex inside PEER_NS). One RTM_NEWLINK
    carries the bridge and the state, and NLM_F_ECHO makes the kernel answer
    with the new link, whose IFLA_LINK is the peer's ifindex: no request
    looks either end up by name afterwards (each costs ~0.5 ms in pyroute2).
    Older kernels (6.1 does) ignore NLM_F_ECHO on RTM_NEWLINK; there one RTM_GETLINK
    of HOST gives the same two numbers.
    """
    extra: dict[str, Any] = {"state": "up"} if up else {}
    echoed = ipr.link(
        (RTM_NEWLINK, CREATE_ECHO),
        ifname=host,
        kind="veth",
        mtu=mtu,
        master=bridge_index,
        peer={"ifname": ENDPOINT_IFNAME, "net_ns_fd": peer_ns, "address": peer_mac, "mtu": mtu},
        **extra,
    )
    found = _veth_indexes(echoed, host)
    if found is None:
        found = _veth_indexes(ipr.link("get", ifname=host), host)
    if found is None:
        raise RuntimeError(f"created veth {host}, but the kernel reports no such link with a peer")
    return found


def _veth_indexes(msgs: Iterable[Any], host: str) -> tuple[int, int] | None:
    """(index, IFLA_LINK) of the RTM_NEWLINK message describing veth HOST, if any."""
    for msg in msgs:
        if msg["header"]["type"] == RTM_NEWLINK and msg.get("IFLA_IFNAME") == host:
            peer = msg.get("IFLA_LINK")
            if peer:
                return int(msg["index"]), int(peer)
    return None


def set_up(ipr: Any, index: int) -> None:
    ipr.link("set", index=index, state="up")


def ensure_proxy_neighbour(ipr: Any, iface: int, address: IPv6Address) -> None:
    try:
        ipr.neigh("add", dst=str(address), ifindex=iface, flags=NTF_PROXY)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def remove_proxy_neighbour(ipr: Any, iface: int, address: IPv6Address) -> None:
    try:
        ipr.neigh("del", dst=str(address), ifindex=iface, flags=NTF_PROXY)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def proxy_neighbours(ipr: Any, iface: int) -> list[str]:
    return [
        str(m.get("NDA_DST"))
        for m in ipr.neigh("dump", family=10, flags=NTF_PROXY)
        if m["ifindex"] == iface and m["flags"] & NTF_PROXY
    ]


ENDPOINT_NETNS_SYSCTLS_V6 = {
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/router_solicitations": "0",
    "net/ipv6/conf/all/router_solicitations": "0",
}


def prepare_endpoint_netns_here() -> None:
    """Sysctls of the calling thread's (endpoint) namespace, before its eth0 arrives.

    The default.* values are copied to eth0 when it registers there.
    accept_dad=0: neither its link-local nor its global address waits ~1 s in
    'tentative' state. router_solicitations=0: the controller sets the routes,
    nobody answers a router solicitation, and each one (to ff02::2) is flooded
    to every port of the bridge, retried with backoff for minutes: 1000
    endpoints created together kept ~60k veth transmits/s busy and cost the
    fast path 6% for the first minute. Unsolicited router advertisements are
    still accepted.
    """
    netns.write_sysctls(ENDPOINT_NETNS_SYSCTLS_V6)


def prepare_endpoint_netns(name: str) -> None:
    """prepare_endpoint_netns_here in namespace NAME (an adopted one; a new one runs it at creation)."""
    netns.run_in(name, prepare_endpoint_netns_here)


def configure_endpoint(
    ns: str,
    eth0: int,
    ipv4: IPv4Address,
    prefix4: int,
    gateway4: IPv4Address,
    ipv6: Iterable[tuple[IPv6Address, int]],
    gateway6: IPv6Address | None,
) -> None:
    """Inside the endpoint namespace: lo and eth0 (ifindex ETH0 there) up, addresses, default routes.

    Runs on a thread that joined the namespace (netns.run_in) instead of
    IPRoute(netns=…), which forks a helper process per call: ~8 ms per endpoint.
    Both ifindexes are known (create_veth's echo, LOOPBACK_IFINDEX), so every
    request changes something; none looks a link up.
    """
    netns.run_in(ns, lambda: _configure_here(eth0, ipv4, prefix4, gateway4, list(ipv6), gateway6))


def _configure_here(
    eth0: int,
    ipv4: IPv4Address,
    prefix4: int,
    gateway4: IPv4Address,
    ipv6: list[tuple[IPv6Address, int]],
    gateway6: IPv6Address | None,
) -> None:
    if gateway6 is None and not ipv6:
        # An IPv4-only network (as Docker does): no IPv6 on eth0, so no
        # link-local address and none of the MLD reports and router
        # solicitations the bridge would flood to every other endpoint.
        netns.write_sysctl(f"net/ipv6/conf/{ENDPOINT_IFNAME}/disable_ipv6", "1")
    with IPRoute() as ipr:
        set_up(ipr, LOOPBACK_IFINDEX)
        ensure_address(ipr, eth0, str(ipv4), prefix4)
        for address, prefixlen in ipv6:
            ensure_address(ipr, eth0, str(address), prefixlen, nodad=True)
        set_up(ipr, eth0)
        _ensure_route(ipr, dst="0.0.0.0/0", gateway=str(gateway4), oif=eth0)
        if gateway6 is not None:
            _ensure_route(ipr, dst="::/0", gateway=str(gateway6), oif=eth0, family=10)


def _ensure_route(ipr: Any, **kwargs: Any) -> None:
    try:
        ipr.route("add", **kwargs)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def ensure_route_via(ipr: Any, dst: str, oif: int) -> None:
    """A connected route for DST via device OIF (the v6 subnet routed via the bridge)."""
    family = 10 if ":" in dst else 2
    _ensure_route(ipr, dst=dst, oif=oif, family=family)
