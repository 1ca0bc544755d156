"""A fake ``Kernel`` (bpfnet.kernel) and datapath for service tests without root.

Boundary: test support only. ``FakeKernel`` keeps namespaces, links, addresses,
routes and proxy neighbours in dicts, behaves like the netlink adapter where
the services can tell (idempotent ensure/delete, a veth's peer dies with it and
with its namespace), and fails on request: ``fail_at = N`` makes the Nth
mutating call raise, ``fail_ops = {"delete_link"}`` makes every such call raise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, IPv6Network

from bpfnet.datapath import BridgeDatapath
from bpfnet.datapath.published import PublishedPort
from bpfnet.errors import Conflict
from bpfnet.kernel import Kernel
from bpfnet.model import EndpointSpec, InterfaceConfig, InterfaceState, LinkState
from bpfnet.observer import Observer


class InjectedFault(OSError):
    pass


@dataclass
class FakeLink:
    name: str
    index: int
    kind: str | None
    mac: str = "00:00:00:00:00:00"
    master: int | None = None
    up: bool = False
    addresses: set[tuple[str, int]] = field(default_factory=set)
    gateways: set[str] = field(default_factory=set)
    peer: tuple[str, int] | None = None  # (namespace, ifindex) of a veth's other end
    mtu: int = 1500


@dataclass
class FakeNetns:
    sysctls: dict[str, str] = field(default_factory=dict)
    links: dict[int, FakeLink] = field(default_factory=dict)


class FakeKernel:
    def __init__(self) -> None:
        self.namespaces: dict[str, FakeNetns] = {}
        self.links: dict[str, FakeLink] = {}  # the managed namespace, by name
        self.sysctls: dict[str, str] = {}
        self.routes: set[tuple[str, int]] = set()
        self.proxy: dict[int, set[IPv6Address]] = {}
        self.host_routes: list[IPv4Network | IPv6Network] = []
        self.calls: Counter[str] = Counter()
        self.mutations = 0
        self.fail_at: int | None = None
        self.fail_ops: set[str] = set()
        self._next_index = 10

    # fault injection
    def _mutate(self, op: str) -> None:
        self.calls[op] += 1
        self.mutations += 1
        if op in self.fail_ops or self.mutations == self.fail_at:
            raise InjectedFault(f"injected fault in {op} (mutation {self.mutations})")

    def _index(self) -> int:
        self._next_index += 1
        return self._next_index

    def objects(self) -> tuple[object, ...]:
        """Everything the fake holds that a service made (for "nothing left behind" checks)."""
        return (sorted(self.namespaces), sorted(self.links), sorted(self.routes),
                {k: sorted(v) for k, v in self.proxy.items() if v})

    # namespaces
    def netns_exists(self, name: str) -> bool:
        return name in self.namespaces

    def netns_is_managed(self, path: str) -> bool:
        return path == self.managed_path

    managed_path = "/proc/self/ns/net"  # what the fake calls the managed namespace's file

    def create_netns(self, name: str, sysctls: Mapping[str, str]) -> None:
        self._mutate("create_netns")
        if name not in self.namespaces:
            self.namespaces[name] = FakeNetns(sysctls=dict(sysctls))

    def remove_netns(self, name: str) -> None:
        self._mutate("remove_netns")
        ns = self.namespaces.pop(name, None)
        if ns is None:
            return
        for host in [link for link in self.links.values() if link.peer and link.peer[0] == name]:
            del self.links[host.name]  # the kernel deletes a veth pair with either end's namespace

    def write_netns_sysctls(self, name: str, sysctls: Mapping[str, str]) -> None:
        self._mutate("write_netns_sysctls")
        self.namespaces[name].sysctls.update(sysctls)

    def netns_has_link(self, name: str, ifname: str) -> bool:
        return any(link.name == ifname for link in self.namespaces[name].links.values())

    # the managed namespace
    def write_sysctls(self, sysctls: Mapping[str, str]) -> None:
        self._mutate("write_sysctls")
        self.sysctls.update(sysctls)

    def link_index(self, name: str) -> int | None:
        link = self.links.get(name)
        return None if link is None else link.index

    def dump_links(self) -> list[LinkState]:
        return [LinkState(link.name, link.index, link.kind, link.master, link.up,
                          peer=link.peer[1] if link.peer else None, mtu=link.mtu, mac=link.mac)
                for link in self.links.values()]

    def list_netns(self) -> list[str]:
        return sorted(self.namespaces)

    def link_addresses(self, index: int) -> list[tuple[str, int]]:
        return sorted(self._by_index(index).addresses)

    def ensure_bridge(self, name: str, mac: str, mtu: int) -> tuple[int, bool]:
        self._mutate("ensure_bridge")
        link = self.links.get(name)
        if link is not None:
            if link.kind != "bridge":
                raise Conflict(f"bridge name {name} is taken by a link that is not a bridge")
            link.up = True
            return link.index, False
        self.links[name] = FakeLink(name, self._index(), "bridge", mac=mac, up=True, mtu=mtu)
        return self.links[name].index, True

    def ensure_vxlan(self, name: str, port: int, mtu: int) -> tuple[int, bool]:
        self._mutate("ensure_vxlan")
        link = self.links.get(name)
        if link is not None:
            return link.index, False
        self.links[name] = FakeLink(name, self._index(), "vxlan", up=True, mtu=mtu)
        return self.links[name].index, True

    def link_mtu(self, index: int) -> int | None:
        return next((link.mtu for link in self.links.values() if link.index == index), None)

    def delete_link(self, name: str) -> None:
        self._mutate("delete_link")
        link = self.links.pop(name, None)
        if link is not None and link.peer is not None and link.peer[0] in self.namespaces:
            self.namespaces[link.peer[0]].links.pop(link.peer[1], None)
        if link is not None and link.peer is not None and link.peer[0] == "":  # its peer beside it
            self.links = {n: other for n, other in self.links.items() if other.index != link.peer[1]}
        if link is not None:
            self.routes = {r for r in self.routes if r[1] != link.index}

    def _by_index(self, index: int) -> FakeLink:
        return next(link for link in self.links.values() if link.index == index)

    def set_up(self, index: int) -> None:
        self._mutate("set_up")
        self._by_index(index).up = True

    def set_master(self, index: int, master: int) -> None:
        self._mutate("set_master")
        self._by_index(index).master = master

    def ensure_address(self, index: int, address: str, prefixlen: int, nodad: bool = False) -> None:
        self._mutate("ensure_address")
        self._by_index(index).addresses.add((address, prefixlen))

    def delete_address(self, index: int, address: str, prefixlen: int) -> None:
        self._mutate("delete_address")
        self._by_index(index).addresses.discard((address, prefixlen))

    def add_user_bridge(self, name: str, addresses: list[tuple[str, int]], mtu: int = 1500) -> FakeLink:
        """A bridge the user made before bpfnet started (not a mutation by a service)."""
        link = FakeLink(name, self._index(), "bridge", mac="aa:bb:cc:00:00:01", up=True, addresses=set(addresses),
                        mtu=mtu)
        self.links[name] = link
        return link

    def ensure_route_via(self, dst: str, oif: int) -> None:
        self._mutate("ensure_route_via")
        self.routes.add((dst, oif))

    def delete_route_via(self, dst: str, oif: int) -> None:
        self._mutate("delete_route_via")
        self.routes.discard((dst, oif))

    def host_prefixes(self, skip_ifindexes: set[int]) -> list[IPv4Network | IPv6Network]:
        return list(self.host_routes)

    def create_veth(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                    up: bool, peer_ifname: str = "eth0") -> tuple[int, int]:
        self._mutate("create_veth")
        if host in self.links:
            raise OSError(17, f"{host} exists")
        eth0 = FakeLink(peer_ifname, self._index(), "veth", mac=peer_mac)
        if peer_ns:
            self.namespaces[peer_ns].links[eth0.index] = eth0
        else:  # the peer stays in the managed namespace
            self.links[peer_ifname] = eth0
        link = FakeLink(host, self._index(), "veth", master=bridge_index, up=up, peer=(peer_ns, eth0.index))
        self.links[host] = link
        return link.index, eth0.index

    def create_netkit(self, host: str, peer_ns: str, peer_mac: str, mtu: int, bridge_index: int,
                      up: bool, peer_ifname: str = "eth0") -> tuple[int, int]:
        index, eth0 = self.create_veth(host, peer_ns, peer_mac, mtu, bridge_index, up, peer_ifname)
        self.links[host].kind = "netkit"
        return index, eth0

    # endpoint namespaces
    def configure_interface(self, ns: str, index: int, cfg: InterfaceConfig) -> None:
        self._mutate("configure_interface")
        space = self.namespaces[ns]
        space.sysctls.update(dict(cfg.sysctls))
        iface = space.links[index]
        if cfg.mac is not None:
            iface.mac = cfg.mac
        iface.addresses |= {(str(a.address), a.prefixlen) for a in cfg.addresses}
        iface.up = True
        iface.gateways |= {str(r.gateway) for r in cfg.routes}

    def interface_state(self, ns: str, ifname: str) -> InterfaceState | None:
        for link in self.namespaces[ns].links.values():
            if link.name == ifname:
                host = next((h.index for h in self.links.values() if h.peer == (ns, link.index)), None)
                return InterfaceState(link.index, link.mac, link.up, frozenset(link.addresses),
                                      frozenset(link.gateways), peer=host,
                                      peer_in_caller=None if host is None else True)
        return None

    def eth0(self, ns: str) -> FakeLink:
        return next(link for link in self.namespaces[ns].links.values() if link.name == "eth0")

    # NDP proxy entries
    def proxy_neighbours(self, iface: int) -> list[str]:
        return [str(a) for a in self.proxy.get(iface, set())]

    def ensure_proxy_neighbour(self, iface: int, address: IPv6Address) -> None:
        self._mutate("ensure_proxy_neighbour")
        self.proxy.setdefault(iface, set()).add(address)

    def remove_proxy_neighbour(self, iface: int, address: IPv6Address) -> None:
        self._mutate("remove_proxy_neighbour")
        self.proxy.get(iface, set()).discard(address)


class FakeDatapath(BridgeDatapath):
    """Bridge mode that remembers its endpoints and fails on request (FAIL: method names)."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointSpec] = {}
        self.fail: set[str] = set()
        self.broken: set[str] = set()  # endpoint names whose entries check_endpoint reports missing
        self.ports: list[PublishedPort] = []  # the published ports' fast path (bpfnet.outside drives it)
        self.uplink_devs: dict[int, str] = {}
        self.fast_counters: dict[int, dict[str, int]] = {}

    def set_published(self, ports: list[PublishedPort]) -> None:
        self.ports = list(ports)

    def published(self) -> list[PublishedPort]:
        return list(self.ports)

    def published_counters(self) -> dict[int, dict[str, int]]:
        return self.fast_counters

    def set_uplinks(self, uplinks: dict[int, str]) -> None:
        self.uplink_devs = dict(uplinks)

    def uplinks(self) -> dict[int, str]:
        return dict(self.uplink_devs)

    def add_endpoint(self, ep: EndpointSpec) -> None:
        if "add_endpoint" in self.fail:
            raise InjectedFault("injected fault in add_endpoint")
        self.endpoints[ep.name] = ep
        self.broken.discard(ep.name)

    def remove_endpoint(self, ep: EndpointSpec) -> None:
        if "remove_endpoint" in self.fail:
            raise InjectedFault("injected fault in remove_endpoint")
        self.endpoints.pop(ep.name, None)

    def check_endpoint(self, ep: EndpointSpec) -> list[str]:
        return ["entries"] if ep.name in self.broken or ep.name not in self.endpoints else []


class RecordingObserver:
    def __init__(self) -> None:
        self.added: list[bool] = []
        self.removed: list[bool] = []
        self.teardown: Counter[str] = Counter()
        self.errors = 0
        self.repairs: Counter[str] = Counter()
        self.overlaps: dict[str, int] = {}

    def endpoint_added(self, seconds: float, ok: bool) -> None:
        self.added.append(ok)

    def endpoint_removed(self, seconds: float, ok: bool) -> None:
        self.removed.append(ok)

    def teardown_failed(self, step: str) -> None:
        self.teardown[step] += 1

    def reconcile_error(self) -> None:
        self.errors += 1

    def reconcile_repair(self, kind: str) -> None:
        self.repairs[kind] += 1

    def network_overlaps(self, network: str, count: int) -> None:
        self.overlaps[network] = count


def _conforms(k: FakeKernel, o: RecordingObserver) -> tuple[Kernel, Observer]:
    return k, o  # mypy checks that the fakes implement the interfaces
