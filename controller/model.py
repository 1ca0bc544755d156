"""Plain data shared by the controller and the datapath.

Boundary: no I/O here. These are the facts the datapath needs about networks
and endpoints; the controller fills them in after it has created the links.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network


@dataclass(frozen=True)
class NetworkSpec:
    """A network as the datapath sees it: one bridge in the managed namespace."""

    name: str
    id: int  # small stable integer, > 0, used as the network id in BPF maps
    bridge: str  # bridge ifname in the managed namespace
    bridge_ifindex: int
    bridge_mac: str  # "02:42:.."
    gateway4: IPv4Address
    gateway6: tuple[IPv6Address, ...] = ()  # global gateway and fe80::1
    icc: bool = True  # inter-container communication allowed
    internal: bool = False  # nothing leaves or enters the network (network create --internal)
    vni: int = 0  # overlay networks: the VXLAN network identifier; 0: not an overlay
    routed4: IPv4Network | None = None  # routed networks: the cluster subnet (cross-host bypass)
    routed6: IPv6Network | None = None  # ... and the IPv6 one


@dataclass(frozen=True)
class RemoteEndpointSpec:
    """An endpoint of an overlay network on another host, as the datapath forwards to it."""

    network_id: int  # this host's id of the network
    ipv4: IPv4Address
    mac: str
    vtep: IPv4Address  # its host's --advertise-addr
    ipv6: tuple[IPv6Address, ...] = ()


@dataclass(frozen=True)
class EndpointSpec:
    """An endpoint as the datapath sees it: the host end of its device pair (veth or netkit)."""

    name: str
    id: int  # slot in the per-endpoint counter array, 0 <= id < MAX_ENDPOINTS
    network: str
    network_id: int
    host_ifname: str  # host-side veth in the managed namespace
    host_ifindex: int
    mac: str  # MAC of eth0 inside the endpoint namespace
    ipv4: IPv4Address
    ipv6: tuple[IPv6Address, ...] = field(default=())  # global and link-local
    device: str = "veth"  # what the pair is: "veth" or "netkit" (datapath.abi.ENDPOINT_DEVICES)


# What the services hand the kernel adapters (``bpfnet.kernel``): decisions as data.
@dataclass(frozen=True)
class AddressConfig:
    """An address on an interface; NODAD skips duplicate address detection (usable at once)."""

    address: IPv4Address | IPv6Address
    prefixlen: int
    nodad: bool = False


@dataclass(frozen=True)
class RouteConfig:
    """A route via GATEWAY out of the interface being configured (DST "0.0.0.0/0": the default)."""

    dst: str
    gateway: IPv4Address | IPv6Address


@dataclass(frozen=True)
class InterfaceConfig:
    """Everything an endpoint's eth0 gets inside its namespace, in the order applied:
    SYSCTLS (slash-separated keys of that namespace), MAC (if given), lo and the
    interface up, ADDRESSES, ROUTES."""

    sysctls: tuple[tuple[str, str], ...] = ()
    mac: str | None = None
    addresses: tuple[AddressConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()


@dataclass(frozen=True)
class LinkState:
    """A link of the managed namespace as the kernel reports it."""

    name: str
    index: int
    kind: str | None  # "veth", "bridge", ... (IFLA_INFO_KIND); None for a plain device
    master: int | None  # ifindex of its bridge, if a port of one
    up: bool  # administratively up (IFF_UP)
    peer: int | None = None  # IFLA_LINK: a veth's peer ifindex (in the peer's namespace)
    mtu: int = 0
    mac: str = ""


@dataclass(frozen=True)
class InterfaceState:
    """An interface inside an endpoint namespace as the kernel reports it."""

    index: int
    mac: str
    up: bool
    addresses: frozenset[tuple[str, int]]  # (address, prefixlen)
    gateways: frozenset[str]  # gateways of its default routes (main table), both families
    peer: int | None = None  # IFLA_LINK: a veth's peer ifindex (in the managed namespace)
    # Whether that peer lives in the namespace that asked (the managed one): an ifindex alone is ambiguous,
    # every fresh namespace numbers its links alike. None when unknown (not a veth).
    peer_in_caller: bool | None = None
