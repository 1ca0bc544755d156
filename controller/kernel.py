"""The services' one way into the kernel: a small typed interface and its netlink implementation.

Boundary: ``Kernel`` lists every kernel operation the services use (namespaces,
links, addresses, routes, sysctls, proxy neighbours); ``NetlinkKernel``
delegates each to the adapter modules ``links`` and ``netns`` and decides
nothing: what to configure arrives as data (``bpfnet.model``). Services hold a
``Kernel`` (``Runtime.kernel``), so tests drive them with a fake one, without root.
Operations act on the managed namespace unless they name another one; another
namespace is named as ``ip netns`` names it, or by the absolute path of its
file (a container runtime's, e.g. CNI's ``CNI_NETNS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from typing import Any, Protocol

from . import links, netns, routes, sublinks
from .model import InterfaceConfig, InterfaceState, LinkState


class Kernel(Protocol):
    # namespaces
    def netns_exists(self, name: str) -> bool: ...
    def netns_is_managed(self, path: str) -> bool:
        """PATH (a namespace file) is the managed namespace itself."""
    def create_netns(self, name: str, sysctls: Mapping[str, str]) -> None:
        """Create namespace NAME and write SYSCTLS inside it (before any interface arrives)."""
    def remove_netns(self, name: str) -> None:
        """Remove namespace NAME; missing is success."""
    def write_netns_sysctls(self, name: str, sysctls: Mapping[str, str]) -> None: ...
    def netns_has_link(self, name: str, ifname: str) -> bool: ...
    def list_netns(self) -> list[str]:
        """Every named namespace (ip netns list)."""

    # the managed namespace
    def write_sysctls(self, sysctls: Mapping[str, str]) -> None: ...
    def link_index(self, name: str) -> int | None: ...
    def dump_links(self) -> list[LinkState]: ...
    def ensure_bridge(self, name: str, mac: str, mtu: int) -> tuple[int, bool]:
        """(ifindex, created) of bridge NAME, up; Conflict if NAME is another kind of link."""
    def delete_link(self, name: str) -> None:
        """Missing is success."""
    def ensure_vxlan(self, name: str, port: int, mtu: int) -> tuple[int, bool]:
        """(ifindex, created) of the collect-metadata VXLAN device NAME, up."""
    def link_mtu(self, index: int) -> int | None: ...
    def set_up(self, index: int) -> None: ...
    def set_master(self, index: int, master: int) -> None: ...
    def ensure_address(self, index: int, address: str, prefixlen: int, nodad: bool = False) -> None: ...
    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        """Missing is success."""
    def link_addresses(self, index: int) -> list[tuple[str, int]]:
        """(address, prefixlen) of every address on link INDEX."""
    def ensure_route_via(self, dst: str, oif: int) -> None: ...
    def delete_route_via(self, dst: str, oif: int) -> None:
        """Missing is success."""
    def host_prefixes(self, skip_ifindexes: set[int]) -> list[IPv4Network | IPv6Network]: ...
    def create_veth(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                    up: bool, peer_ifname: str = links.ENDPOINT_IFNAME) -> tuple[int, int]:
        """Veth HOST (port of BRIDGE_INDEX) <-> PEER_IFNAME in PEER_NS ("": the managed namespace);
        (host ifindex, the peer's ifindex there)."""
    def create_netkit(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                      up: bool, peer_ifname: str = links.ENDPOINT_IFNAME) -> tuple[int, int]:
        """As create_veth, with an L2 netkit pair (HOST the primary; Linux 6.7+)."""

    # endpoint namespaces
    def configure_interface(self, ns: str, index: int, cfg: InterfaceConfig) -> None: ...
    # links stacked on a physical interface (bpfnet.sublinks: the underlay drivers)
    def ensure_vlan(self, name: str, parent: int, vlan: int) -> tuple[int, bool]: ...
    def probe_link_kind(self, kind: str, parent: int, options: Mapping[str, Any]) -> None: ...
    def create_sublink(self, kind: str, parent: int, ns: str, ifname: str, mtu: int, mac: str | None,
                       options: Mapping[str, Any]) -> int: ...
    def delete_link_in(self, ns: str, ifname: str) -> None: ...
    # bpfnet's own routes (bpfnet.routes: the routed driver), marked with routes.PROTO
    def own_routes(self) -> dict[str, str]: ...
    def replace_own_route(self, dst: str, gateway: str, oif: int | None = None) -> None: ...
    def delete_own_route(self, dst: str) -> None: ...
    def interface_state(self, ns: str, ifname: str) -> InterfaceState | None: ...

    # NDP proxy entries
    def proxy_neighbours(self, iface: int) -> list[str]: ...
    def ensure_proxy_neighbour(self, iface: int, address: IPv6Address) -> None: ...
    def remove_proxy_neighbour(self, iface: int, address: IPv6Address) -> None: ...


class NetlinkKernel:
    """``Kernel`` through pyroute2 (IPR: an IPRoute of the managed namespace) and ``bpfnet.netns``."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr

    def netns_exists(self, name: str) -> bool:
        return netns.exists(name)

    def netns_is_managed(self, path: str) -> bool:
        return netns.is_own(path)  # the daemon's threads live in the managed namespace

    def create_netns(self, name: str, sysctls: Mapping[str, str]) -> None:
        values = dict(sysctls)
        # The writes run on the thread that made the namespace: no second thread and setns.
        netns.create(name, (lambda: netns.write_sysctls(values)) if values else None)

    def remove_netns(self, name: str) -> None:
        netns.remove(name)

    def write_netns_sysctls(self, name: str, sysctls: Mapping[str, str]) -> None:
        values = dict(sysctls)
        netns.run_in(name, lambda: netns.write_sysctls(values))

    def netns_has_link(self, name: str, ifname: str) -> bool:
        return netns.run_in(name, lambda: links.link_index_here(ifname) is not None)

    def list_netns(self) -> list[str]:
        return netns.names()

    def write_sysctls(self, sysctls: Mapping[str, str]) -> None:
        netns.write_sysctls(dict(sysctls))

    def link_index(self, name: str) -> int | None:
        # if_nametoindex: the daemon's threads live in the managed namespace.
        return links.link_index_here(name)

    def dump_links(self) -> list[LinkState]:
        return links.dump_links(self.ipr)

    def ensure_bridge(self, name: str, mac: str, mtu: int) -> tuple[int, bool]:
        return links.ensure_bridge(self.ipr, name, mac, mtu)

    def delete_link(self, name: str) -> None:
        links.delete_link(self.ipr, name)

    def set_up(self, index: int) -> None:
        links.set_up(self.ipr, index)

    def set_master(self, index: int, master: int) -> None:
        links.set_master(self.ipr, index, master)

    def ensure_address(self, index: int, address: str, prefixlen: int, nodad: bool = False) -> None:
        links.ensure_address(self.ipr, index, address, prefixlen, nodad=nodad)

    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        links.delete_address(self.ipr, index, address, prefixlen)

    def ensure_route_via(self, dst: str, oif: int) -> None:
        links.ensure_route_via(self.ipr, dst, oif)

    def delete_route_via(self, dst: str, oif: int) -> None:
        links.delete_route_via(self.ipr, dst, oif)

    def link_addresses(self, index: int) -> list[tuple[str, int]]:
        return links.link_addresses(self.ipr, index)

    def host_prefixes(self, skip_ifindexes: set[int]) -> list[IPv4Network | IPv6Network]:
        return list(links.host_prefixes(self.ipr, skip_ifindexes=skip_ifindexes))

    def ensure_vxlan(self, name: str, port: int, mtu: int) -> tuple[int, bool]:
        return links.ensure_vxlan(self.ipr, name, port, mtu)

    def link_mtu(self, index: int) -> int | None:
        return links.link_mtu(self.ipr, index)

    def create_veth(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                    up: bool, peer_ifname: str = links.ENDPOINT_IFNAME) -> tuple[int, int]:
        return links.create_veth(self.ipr, host, peer_ns, peer_mac, mtu, bridge_index, up=up,
                                 peer_ifname=peer_ifname)

    def create_netkit(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                      up: bool, peer_ifname: str = links.ENDPOINT_IFNAME) -> tuple[int, int]:
        return links.create_netkit(self.ipr, host, peer_ns, peer_mac, mtu, bridge_index, up=up,
                                   peer_ifname=peer_ifname)

    def configure_interface(self, ns: str, index: int, cfg: InterfaceConfig) -> None:
        links.configure_interface(ns, index, cfg)

    def interface_state(self, ns: str, ifname: str) -> InterfaceState | None:
        return links.interface_state(ns, ifname)

    def ensure_vlan(self, name: str, parent: int, vlan: int) -> tuple[int, bool]:
        return sublinks.ensure_vlan(self.ipr, name, parent, vlan)

    def probe_link_kind(self, kind: str, parent: int, options: Mapping[str, Any]) -> None:
        # the probe link's name: unique per daemon (one namespace, one daemon) and never an endpoint's
        sublinks.probe(self.ipr, kind, parent, "bnprobe0", **options)

    def create_sublink(self, kind: str, parent: int, ns: str, ifname: str, mtu: int, mac: str | None,
                       options: Mapping[str, Any]) -> int:
        return sublinks.create_in(self.ipr, kind, parent, ns, ifname, mtu, mac, **options)

    def delete_link_in(self, ns: str, ifname: str) -> None:
        sublinks.delete_in(ns, ifname)

    def own_routes(self) -> dict[str, str]:
        return routes.dump(self.ipr)

    def replace_own_route(self, dst: str, gateway: str, oif: int | None = None) -> None:
        routes.replace(self.ipr, dst, gateway, oif)

    def delete_own_route(self, dst: str) -> None:
        routes.delete(self.ipr, dst)

    def proxy_neighbours(self, iface: int) -> list[str]:
        return links.proxy_neighbours(self.ipr, iface)

    def ensure_proxy_neighbour(self, iface: int, address: IPv6Address) -> None:
        links.ensure_proxy_neighbour(self.ipr, iface, address)

    def remove_proxy_neighbour(self, iface: int, address: IPv6Address) -> None:
        links.remove_proxy_neighbour(self.ipr, iface, address)

