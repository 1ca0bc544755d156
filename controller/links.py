"""Links, addresses, routes and neighbours, through pyroute2.

Boundary: kernel objects only, no state and no policy: what to configure
comes in as data (``bpfnet.model``) from the services, through ``bpfnet.kernel``. Functions are
idempotent in the pyroute2 style: EEXIST on add and ENODEV/ESRCH/ENOENT on
delete count as success. Functions taking an ``IPRoute`` act on whatever
namespace that socket lives in: the daemon's own (the managed host side) or
an endpoint's (``IPRoute(netns=name)``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterable
from ipaddress import IPv6Address, ip_network
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK

from . import netns
from .errors import Conflict
from .model import InterfaceConfig, InterfaceState, LinkState
from .netlink import IPRoute

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02  # skip duplicate address detection: the address is usable at once
NTF_PROXY = 0x08
GONE = (errno.ENODEV, errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL)
IFF_UP = 0x1
MAIN_TABLE = 254
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


def _ensure_link(ipr: Any, name: str, kind: str, what: str, **attrs: Any) -> tuple[int, bool]:
    """Create link NAME of KIND with ATTRS, or take the existing one if it is of that kind; set
    it up. Returns (ifindex, created); Conflict naming WHAT if NAME is another kind of link."""
    created = False
    try:
        ipr.link("add", ifname=name, kind=kind, **attrs)
        created = True
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise
    index = link_index(ipr, name)
    if index is None:
        raise RuntimeError(f"{what} {name} vanished right after creation")
    if link_kind(ipr.link("get", index=index)[0]) != kind:
        raise Conflict(f"{what} name {name} is taken by a link that is not a {kind}")
    ipr.link("set", index=index, state="up")
    return index, created


def ensure_bridge(ipr: Any, name: str, mac: str, mtu: int) -> tuple[int, bool]:
    """Create (or adopt) bridge NAME, up, with a fixed MAC; returns (ifindex, created)."""
    return _ensure_link(ipr, name, "bridge", "bridge", address=mac, mtu=mtu)


def ensure_vxlan(ipr: Any, name: str, port: int, mtu: int) -> tuple[int, bool]:
    """A collect-metadata ("external") VXLAN device NAME on UDP PORT, up, learning off: the
    programs set each packet's VNI and remote VTEP (bpf_skb_set_tunnel_key), as Cilium's
    cilium_vxlan. Returns (ifindex, created); Conflict if NAME is another kind of link."""
    index, created = _ensure_link(ipr, name, "vxlan", "the overlay's device", vxlan_collect_metadata=1,
                                  vxlan_port=port, vxlan_learning=0, mtu=mtu)
    ipr.link("set", index=index, mtu=mtu)
    return index, created


def link_mtu(ipr: Any, index: int) -> int | None:
    links = ipr.link("get", index=index)
    return int(links[0].get("IFLA_MTU")) if links else None


def link_kind(link: Any) -> str | None:
    info = link.get("IFLA_LINKINFO")
    return None if info is None else str(info.get("IFLA_INFO_KIND"))


def dump_links(ipr: Any) -> list[LinkState]:
    """Every link of IPR's namespace: name, index, kind, bridge master, up."""
    out = []
    for link in ipr.link("dump"):
        master = link.get("IFLA_MASTER")
        out.append(LinkState(
            name=str(link.get("IFLA_IFNAME")),
            index=int(link["index"]),
            kind=link_kind(link),
            master=int(master) if master else None,
            up=bool(link["flags"] & IFF_UP),
            peer=int(link.get("IFLA_LINK") or 0) or None,
            mtu=int(link.get("IFLA_MTU") or 0),
            mac=str(link.get("IFLA_ADDRESS") or ""),
        ))
    return out


def set_master(ipr: Any, index: int, master: int) -> None:
    """Make link INDEX a port of bridge MASTER."""
    ipr.link("set", index=index, master=master)


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


def delete_address(ipr: Any, index: int, address: str, prefixlen: int) -> None:
    try:
        ipr.addr("del", index=index, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


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
    ipr: Any, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int, up: bool,
    peer_ifname: str = ENDPOINT_IFNAME,
) -> tuple[int, int]:
    """Create veth HOST, a port of BRIDGE_INDEX (and up if UP), <-> PEER_IFNAME inside PEER_NS
    (a namespace name, or the path of a namespace file) with PEER_MAC.

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
        # No PEER_NS: the peer stays beside HOST, in IPR's namespace.
        peer={"ifname": peer_ifname, "address": peer_mac, "mtu": mtu, **({"net_ns_fd": peer_ns} if peer_ns else {})},
        **extra,
    )
    found = _veth_indexes(echoed, host)
    if found is None:
        found = _veth_indexes(ipr.link("get", ifname=host), host)
    if found is None:
        raise RuntimeError(f"created veth {host}, but the kernel reports no such link with a peer")
    return found


def create_netkit(
    ipr: Any, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int, up: bool,
    peer_ifname: str = ENDPOINT_IFNAME,
) -> tuple[int, int]:
    """As create_veth, with an L2 netkit pair (``bpfnet.datapath.netkit``): HOST is the
    primary, a bridge port like a host veth. The message goes out from the calling
    thread, which lives in IPR's namespace (the daemon's threads all do). One
    RTM_GETLINK of HOST gives both ifindexes (netkit reports its peer as IFLA_LINK)."""
    from .datapath import netkit

    netkit.create_pair(host, peer_ns, peer_ifname, peer_mac, mtu, master=bridge_index, up=up)
    found = _veth_indexes(ipr.link("get", ifname=host), host)
    if found is None:
        raise RuntimeError(f"created netkit {host}, but the kernel reports no such link with a peer")
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


def configure_interface(ns: str, index: int, cfg: InterfaceConfig) -> None:
    """Inside namespace NS: CFG's sysctls, lo and interface INDEX up, CFG's addresses and routes.

    Runs on a thread that joined the namespace (netns.run_in) instead of
    IPRoute(netns=…), which forks a helper process per call: ~8 ms per endpoint.
    Both ifindexes are known (create_veth's echo, LOOPBACK_IFINDEX), so every
    request changes something; none looks a link up. Idempotent: what exists is kept.
    """
    netns.run_in(ns, lambda: _configure_here(index, cfg))


def _configure_here(index: int, cfg: InterfaceConfig) -> None:
    netns.write_sysctls(dict(cfg.sysctls))
    with IPRoute() as ipr:
        if cfg.mac is not None:
            ipr.link("set", index=index, address=cfg.mac)
        set_up(ipr, LOOPBACK_IFINDEX)
        for a in cfg.addresses:
            ensure_address(ipr, index, str(a.address), a.prefixlen, nodad=a.nodad)
        set_up(ipr, index)
        for r in cfg.routes:
            family = 10 if r.gateway.version == 6 else 2
            _ensure_route(ipr, dst=r.dst, gateway=str(r.gateway), oif=index, family=family)


def interface_state(ns: str, ifname: str) -> InterfaceState | None:
    """Interface IFNAME inside namespace NS (MAC, up, addresses, default gateways), or None if missing.

    ``peer_in_caller`` says whether a veth's peer lives in the calling thread's namespace.
    """
    caller = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return netns.run_in(ns, lambda: _interface_state_here(ifname, caller))
    finally:
        os.close(caller)


def _interface_state_here(ifname: str, caller_fd: int) -> InterfaceState | None:
    # Three requests (reconcile makes them for every endpoint): the link, the addresses, the routes.
    with IPRoute() as ipr:
        try:
            link = ipr.link("get", ifname=ifname)[0]
        except NetlinkError as exc:
            if exc.code in GONE:
                return None
            raise
        index = int(link["index"])
        addrs = frozenset((str(m.get("IFA_ADDRESS")), int(m["prefixlen"]))
                          for m in ipr.addr("dump") if m["index"] == index)
        gateways = frozenset(
            str(route.get("RTA_GATEWAY")) for route in ipr.route("dump")  # both families
            if route["dst_len"] == 0 and route.get("RTA_TABLE") == MAIN_TABLE
            and route.get("RTA_OIF") == index and route.get("RTA_GATEWAY")
        )
        peer = int(link.get("IFLA_LINK") or 0) or None
        peer_in_caller = None
        link_nsid = link.get("IFLA_LINK_NETNSID")
        if peer is not None and link_nsid is not None:
            # The peer's namespace, as this namespace numbers it, against the caller's number here.
            caller = ipr.get_netnsid(fd=caller_fd) or {}
            peer_in_caller = caller.get("nsid") == link_nsid
        return InterfaceState(index=index, mac=str(link.get("IFLA_ADDRESS")), up=bool(link["flags"] & IFF_UP),
                              addresses=addrs, gateways=gateways, peer=peer, peer_in_caller=peer_in_caller)


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


def delete_route_via(ipr: Any, dst: str, oif: int) -> None:
    family = 10 if ":" in dst else 2
    try:
        ipr.route("del", dst=dst, oif=oif, family=family)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def link_addresses(ipr: Any, index: int) -> list[tuple[str, int]]:
    """(address, prefixlen) of every address on link INDEX of IPR's namespace."""
    return [(str(m.get("IFA_ADDRESS")), int(m["prefixlen"])) for m in ipr.addr("dump", index=index)]
