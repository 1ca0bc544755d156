"""Endpoints: a network namespace joined to a network's bridge by a veth pair.

Boundary: IPAM leases (via ``bpfnet.ipam`` pools and the store), the endpoint
namespace, the veth pair, addresses and routes inside the namespace, the NDP
proxy entries and the datapath's endpoint entries. This module decides what
an endpoint gets (sysctls, addresses, routes, in what order, what to undo);
the kernel work goes through ``Runtime.kernel`` (``bpfnet.kernel``). Every add
is one rollback unit; the store row is written first in state 'creating' so
that a daemon killed mid-way is reconciled at its next start. Removal is best
effort (see ``teardown``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import TYPE_CHECKING, Any

from .addressing import ipv6_from_mac, link_local_from_mac, mac_from_ipv4, parse_mac
from .config import NetworkConfig, check_ifname, check_name
from .datapath.abi import ENDPOINT_DEVICES
from .drivers import AddressTaken, EndpointAddresses
from .drivers.bridge import LINK_LOCAL_GATEWAY
from .errors import Conflict, Exhausted, Incomplete, InvalidArgument, NotFound
from .ipam import IPAddress, IPNetwork, Pool, parse_address
from .links import ENDPOINT_IFNAME
from .model import AddressConfig, EndpointSpec, InterfaceConfig, RouteConfig
from .networks import NetworkService, pools
from .rollback import Rollback
from .runtime import Runtime
from .state import EndpointRow

if TYPE_CHECKING:
    from .dns.service import DnsService
    from .outside.service import OutsideService

log = logging.getLogger(__name__)
HOST_VETH_PREFIX = "bnv"
HANDOFF_SUFFIX = "p"  # a handed-off peer waits as bnvNp until the runtime moves it
BRIDGE_MAX_PORTS = 1023
# A driver's claim (overlay: an etcd transaction) may lose a race with another host: pick again.
ADDRESS_ATTEMPTS = 8  # the kernel's BR_MAX_PORTS is 1024 and port 0 is reserved

# Sysctls of a new (or adopted) endpoint namespace of an IPv6 network, written
# before its eth0 arrives: the default.* values are copied to eth0 when it
# registers there. accept_dad=0: neither its link-local nor its global address
# waits ~1 s in 'tentative' state. router_solicitations=0: the controller sets
# the routes, nobody answers a router solicitation, and each one (to ff02::2)
# is flooded to every port of the bridge, retried with backoff for minutes:
# 1000 endpoints created together kept ~60k veth transmits/s busy and cost the
# fast path 6% for the first minute. Unsolicited router advertisements are
# still accepted.
ENDPOINT_NETNS_SYSCTLS_V6 = {
    "net/ipv6/conf/default/accept_dad": "0",
    "net/ipv6/conf/all/accept_dad": "0",
    "net/ipv6/conf/default/router_solicitations": "0",
    "net/ipv6/conf/all/router_solicitations": "0",
}


def v4_only_sysctls(ifname: str) -> tuple[tuple[str, str], ...]:
    """An IPv4-only network (as Docker does): no IPv6 on the endpoint's interface, so no
    link-local address and none of the MLD reports and router solicitations the bridge
    would flood to every other endpoint."""
    return ((f"net/ipv6/conf/{ifname}/disable_ipv6", "1"),)


class LeasedAddresses(AbstractSet[IPAddress]):
    """Leased addresses kept as their canonical strings.

    Parsing every lease of a network into ipaddress objects made each add
    O(N) in parsing alone (~20 ms at 1000 endpoints); membership only needs
    str(address), which is the form the leases are stored in.
    """

    def __init__(self, addresses: Iterable[str]) -> None:
        self._text = frozenset(addresses)

    def __contains__(self, address: object) -> bool:
        return str(address) in self._text

    def __iter__(self) -> Iterator[IPAddress]:
        return (ip_address(a) for a in self._text)

    def __len__(self) -> int:
        return len(self._text)


def is_host_veth_name(ifname: str) -> bool:
    return ifname.startswith(HOST_VETH_PREFIX) and ifname[len(HOST_VETH_PREFIX):].isdigit()


def host_ifname(ep_id: int) -> str:
    return f"{HOST_VETH_PREFIX}{ep_id}"


class EndpointService:
    def __init__(self, rt: Runtime, networks: NetworkService) -> None:
        self.rt = rt
        self.networks = networks
        self.outside: OutsideService | None = None  # published ports (bpfnet.outside), set by the daemon
        self.dns: DnsService | None = None  # resolv.conf, hosts and the resolver (bpfnet.dns), set by the daemon
        # (network, range) -> (store.lease_generation, offset): when last searched, every
        # address of the range below offset was leased; valid while no lease was deleted.
        self._leased_below: dict[tuple[str, IPNetwork], tuple[int, int]] = {}
        # network -> addresses handed out before their endpoint exists (Docker's IPAM hands out an
        # address before CreateEndpoint): no other endpoint gets them until claimed or released.
        # In memory: a restart forgets them, and the runtime's CreateEndpoint then asks for the address.
        self._held: dict[str, set[str]] = {}

    # queries
    def _row(self, name: str) -> EndpointRow:
        row = self.rt.store.endpoint(name)
        if row is None:
            raise NotFound(f"endpoint {name!r} not found")
        return row

    def addresses(self, row: EndpointRow) -> tuple[IPv4Address, list[IPv6Address]]:
        v4: IPv4Address | None = None
        v6: list[IPv6Address] = []
        for lease in self.rt.store.endpoint_leases(row.name):
            if lease.family == 4:
                v4 = IPv4Address(lease.address)
            else:
                v6.append(IPv6Address(lease.address))
        assert v4 is not None, f"endpoint {row.name} has no IPv4 lease"
        return v4, v6

    def spec(self, row: EndpointRow, cfg: NetworkConfig, net_id: int,
             host_ifindex: int | None = None, device: str | None = None) -> EndpointSpec:
        """The datapath's view of an endpoint; HOST_IFINDEX and DEVICE (the host link's kind)
        when the caller already knows them (DEVICE default: what this daemon makes)."""
        v4, v6 = self.addresses(row)
        if host_ifindex is None:
            host_ifindex = self.rt.kernel.link_index(row.host_ifname) or 0
        all6: tuple[IPv6Address, ...] = ()
        if cfg.ipv6:
            all6 = tuple(v6) + (link_local_from_mac(row.mac),)
        return EndpointSpec(
            name=row.name,
            id=row.id,
            network=row.network,
            network_id=net_id,
            host_ifname=row.host_ifname,
            host_ifindex=host_ifindex,
            mac=row.mac,
            ipv4=v4,
            ipv6=all6,
            device=device if device in ENDPOINT_DEVICES else self.rt.endpoint_device,
        )

    def describe(self, row: EndpointRow, host_ifindex: int | None = None) -> dict[str, Any]:
        _, cfg = self.networks.config(row.network)
        if host_ifindex is None:
            host_ifindex = self.rt.kernel.link_index(row.host_ifname)
        v4, v6 = self.addresses(row)
        out: dict[str, Any] = {
            "name": row.name,
            "id": row.id,
            "network": row.network,
            "netns": row.netns,
            "adopted_netns": row.adopted,
            "ifname": row.ifname,
            "owner": row.owner or None,
            "handoff": row.handoff,
            "host_ifname": row.host_ifname,
            "host_ifindex": host_ifindex,
            "mac": row.mac,
            "ipv4": f"{v4}/{cfg.subnet4.prefixlen}",
            "gateway4": str(cfg.default_gateway4 or cfg.gateway4),
            "state": row.state,
            "created": row.created,
            "published": self.outside.published(row.name) if self.outside is not None else [],
            "dns": self.dns.describe(row) if self.dns is not None else None,
        }
        if cfg.ipv6:
            out["ipv6"] = [f"{a}/{cfg.subnet6.prefixlen if cfg.subnet6 else 64}" for a in v6]
            out["link_local"] = f"{link_local_from_mac(row.mac)}/64"
            out["gateway6"] = str(cfg.default_gateway6 or LINK_LOCAL_GATEWAY)
        return out

    def list_all(self) -> list[dict[str, Any]]:
        return [self.describe(r) for r in self.rt.store.endpoints()]

    def inspect(self, name: str) -> dict[str, Any]:
        return self.describe(self._row(name))

    def by_owner(self, owner: str) -> dict[str, Any] | None:
        """The endpoint a runtime made under OWNER (its unique key), if any."""
        row = self.rt.store.endpoint_by_owner(owner)
        return None if row is None else self.describe(row)

    # add
    def add(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InvalidArgument("endpoint: expected a JSON object")
        unknown = set(data) - {"name", "network", "ip", "ip6", "mac", "netns", "netns_path", "ifname", "owner",
                               "handoff", "publish", "dns", "dns_search", "dns_opt", "aliases", "hostname"}
        if unknown:
            raise InvalidArgument(f"endpoint: unknown field(s) {', '.join(sorted(unknown))}")
        name = check_name(data.get("name") or "", "endpoint name")
        for attempt in range(1, ADDRESS_ATTEMPTS + 1):
            try:
                return self._add(name, data)
            except AddressTaken as exc:
                if data.get("ip") or data.get("ip6") or attempt == ADDRESS_ATTEMPTS:
                    raise Conflict(f"{exc.message}; retry") from None
                log.info("endpoint %s: %s; picking again (attempt %d)", name, exc.message, attempt + 1)
        raise AssertionError("unreachable")

    def _add(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        with self.rt.lock:
            net_name = data.get("network") or self._default_network()
            net_row, cfg = self.networks.config(net_name)
            if self.rt.store.endpoint(name) is not None:
                raise Conflict(f"endpoint {name!r} already exists")
            if self.rt.store.count_endpoints(net_name) >= BRIDGE_MAX_PORTS:
                raise Exhausted(
                    f"network {net_name} has {BRIDGE_MAX_PORTS} endpoints, the most a Linux bridge can hold "
                    "(BR_MAX_PORTS); create another network"
                )
            owner = str(data.get("owner") or "")
            if owner:
                other = self.rt.store.endpoint_by_owner(owner)
                if other is not None:
                    raise Conflict(f"endpoint {other.name!r} already exists for {owner}")
            ns, adopted, ifname = self._placement(name, data)
            self._claim_held(net_name, data)
            v4, mac, v6 = self._plan_addresses(net_name, cfg, data)
            self._check_mac(net_name, cfg, mac)
            publish = self._check_publish(net_name, cfg, data.get("publish"), bool(v6))
            dns = self.dns.check(name, net_name, data) if self.dns is not None else None
            leases = [(str(v4), 4)] + [(str(a), 6) for a in v6]
            try:
                row = self.rt.store.reserve_endpoint(
                    name, net_name, ns, adopted, mac, leases, self.rt.max_endpoints, time.time(), host_ifname,
                    ifname=ifname, owner=owner, handoff=bool(data.get("handoff")),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"an address of endpoint {name!r} was taken meanwhile; retry") from None
            except OverflowError as exc:
                raise Exhausted(f"{exc} (the datapath's MAX_ENDPOINTS); remove an endpoint first") from None
            if row is None:
                raise Conflict(f"endpoint {name!r} already exists")
            started, ok = time.monotonic(), False
            try:
                with Rollback(f"endpoint add {name}") as rb:
                    rb.push("state row and leases", lambda: self.rt.store.remove_endpoint(name))
                    index = self._build(row, cfg, v4, v6, rb)
                    if self.networks.drivers.get(cfg.driver).host_side:
                        spec = self.spec(row, cfg, net_row.id, host_ifindex=index)
                        self.rt.datapath.add_endpoint(spec)
                        rb.push("datapath entries", lambda: self.rt.datapath.remove_endpoint(spec))
                    if publish and self.outside is not None:
                        self.outside.publish(name, publish)
                        rb.push("published ports", partial(self.outside.unpublish, name))
                    if dns is not None and self.dns is not None:
                        self.dns.added(row, dns, rb)
                    self.rt.store.set_endpoint_state(name, "ready")
                ok = True
            finally:
                self.rt.observer.endpoint_added(time.monotonic() - started, ok)
                if not ok and dns is not None and self.dns is not None:
                    self.dns.changed()  # rolled back: the resolver forgets what it was told
            log.info("endpoint %s added to %s: %s %s%s", name, net_name, mac, v4,
                     "".join(f" {a}" for a in v6))
            return self.describe(self._row(name), host_ifindex=index)

    def _check_mac(self, net_name: str, cfg: NetworkConfig, mac: str) -> None:
        """One MAC per layer-2 domain: a duplicate silently breaks both endpoints' traffic."""
        if mac == mac_from_ipv4(cfg.gateway4):
            raise Conflict(f"MAC {mac} is the MAC of network {net_name}'s bridge {cfg.bridge}")
        other = self.rt.store.endpoint_with_mac(net_name, mac)
        if other is not None:
            raise Conflict(f"MAC {mac} is already used by endpoint {other!r} on network {net_name}")

    def _check_publish(self, net_name: str, cfg: NetworkConfig, specs: Any, has_ipv6: bool) -> list[Any]:
        if not specs:
            return []
        if self.outside is None:
            raise InvalidArgument("--publish: this daemon has no published ports (no nftables)")
        return self.outside.check_publish(net_name, cfg, specs, has_ipv6)

    def _default_network(self) -> str:
        for row in self.rt.store.networks():
            if row.is_default:
                return row.name
        raise NotFound("there is no default network (the daemon runs with --bridge none): pass --network NAME")

    def _namespace(self, name: str, existing: Any) -> tuple[str, bool]:
        if existing:
            ns = check_name(str(existing), "--netns")
            if not self.rt.kernel.netns_exists(ns):
                raise NotFound(f"network namespace {ns!r} does not exist (ip netns list)")
            if ns == self.rt.hostns:
                raise InvalidArgument(f"namespace {ns!r} is the daemon's host namespace")
            for other in self.rt.store.endpoints():
                if other.netns == ns:
                    raise Conflict(f"namespace {ns!r} already belongs to endpoint {other.name!r}")
            return ns, True
        if self.rt.kernel.netns_exists(name):
            raise Conflict(
                f"network namespace {name!r} already exists; pass --netns {name} to adopt it"
            )
        return name, False

    def _placement(self, name: str, data: dict[str, Any]) -> tuple[str, bool, str | Callable[[int], str]]:
        """(namespace, adopted, interface name or how to name it from the endpoint id) of a new endpoint:
        a namespace bpfnet makes, a named one it adopts (netns), one a runtime owns (netns_path), or
        none yet (handoff: the runtime moves the peer)."""
        ifname = check_ifname(str(data.get("ifname") or ENDPOINT_IFNAME), "ifname")
        if ifname in ("lo", "all", "default") or is_host_veth_name(ifname):
            # lo is in every namespace; all and default name sysctl directories; bnvN are bpfnet's host veths
            raise InvalidArgument(f"ifname {ifname} is reserved (lo, all, default, bnv<N>)")
        if data.get("handoff"):
            if data.get("netns") or data.get("netns_path"):
                raise InvalidArgument("handoff excludes netns and netns_path: the runtime moves the interface")
            if not data.get("ifname"):  # the peer waits beside its host end, named after it
                return "", True, lambda ep_id: f"{host_ifname(ep_id)}{HANDOFF_SUFFIX}"
            if self.rt.kernel.link_index(ifname) is not None:
                raise Conflict(f"interface {ifname} already exists in the managed namespace")
            return "", True, ifname
        if data.get("netns_path"):
            return (*self._foreign_namespace(data, ifname), ifname)
        return (*self._namespace(name, data.get("netns")), ifname)

    def _foreign_namespace(self, data: dict[str, Any], ifname: str) -> tuple[str, bool]:
        """A namespace someone else owns, by the path of its file (a container runtime's):
        bpfnet adds ITS interface IFNAME and never deletes the namespace."""
        if data.get("netns"):
            raise InvalidArgument("netns and netns_path exclude each other")
        path = str(data["netns_path"])
        if not os.path.isabs(path):
            raise InvalidArgument(f"netns_path {path!r} is not an absolute path")
        if not self.rt.kernel.netns_exists(path):
            raise NotFound(f"network namespace {path} does not exist (or is not a network namespace's file)")
        if self.rt.kernel.netns_is_managed(path):
            raise InvalidArgument(f"namespace {path} is the daemon's host namespace")
        for other in self.rt.store.endpoints():
            if other.netns == path and other.ifname == ifname:
                raise Conflict(f"{ifname} in namespace {path} already belongs to endpoint {other.name!r}")
        return path, True

    def _plan_addresses(
        self, net_name: str, cfg: NetworkConfig, data: dict[str, Any]
    ) -> tuple[IPv4Address, str, list[IPv6Address]]:
        p4, p6 = pools(cfg)
        generation = self.rt.store.lease_generation  # read before the leases it vouches for
        used = LeasedAddresses([*self.rt.store.leased_addresses(net_name), *self._held.get(net_name, ()),
                                *self.networks.drivers.get(cfg.driver).reserved(cfg)])
        requested4 = parse_address(str(data["ip"]), "--ip") if data.get("ip") else None
        if requested4 is not None and requested4.version != 4:
            raise InvalidArgument(f"--ip {requested4} is not an IPv4 address (use --ip6)")
        v4 = p4.allocate(used, requested=requested4, start=self._search_from(net_name, p4, generation))
        assert isinstance(v4, IPv4Address)
        if requested4 is None:
            self._leased_below[(net_name, p4.range)] = (generation, p4.offset(v4))
        mac = parse_mac(str(data["mac"])) if data.get("mac") else mac_from_ipv4(v4)
        v6: list[IPv6Address] = []
        requested6 = parse_address(str(data["ip6"]), "--ip6") if data.get("ip6") else None
        if requested6 is not None and requested6.version != 6:
            raise InvalidArgument(f"--ip6 {requested6} is not an IPv6 address")
        if requested6 is not None and p6 is None:
            raise InvalidArgument(f"--ip6 given but network {net_name} has no IPv6 subnet")
        if p6 is not None:
            preferred = ipv6_from_mac(p6.range, mac) if p6.range.prefixlen <= 80 else None  # type: ignore[arg-type]
            a6 = p6.allocate(used, requested=requested6, preferred=preferred,
                             start=self._search_from(net_name, p6, generation))
            assert isinstance(a6, IPv6Address)
            if requested6 is None and a6 != preferred:
                self._leased_below[(net_name, p6.range)] = (generation, p6.offset(a6))
            v6.append(a6)
        return v4, mac, v6

    def hold_address(self, net_name: str, family: int, requested: str | None = None) -> IPAddress:
        """An address of NET_NAME for an endpoint that does not exist yet (REQUESTED, checked, or
        the next free one), held until an add names it (``ip``/``ip6``) or ``release_held``."""
        with self.rt.lock:
            _, cfg = self.networks.config(net_name)
            p4, p6 = pools(cfg)
            pool = p4 if family == 4 else p6
            if pool is None:
                raise InvalidArgument(f"network {net_name} has no IPv6 subnet")
            held = self._held.setdefault(net_name, set())
            used = LeasedAddresses([*self.rt.store.leased_addresses(net_name), *held])
            wanted = parse_address(requested, "address") if requested else None
            address = pool.allocate(used, requested=wanted)
            held.add(str(address))
            return address

    def release_held(self, net_name: str, address: str) -> bool:
        """Forget a held address; False when it was not held (claimed by an endpoint, or unknown)."""
        with self.rt.lock:
            held = self._held.get(net_name, set())
            if address not in held:
                return False
            held.discard(address)
            return True

    def _claim_held(self, net_name: str, data: dict[str, Any]) -> None:
        """The held addresses this add names are its own now."""
        held = self._held.get(net_name)
        for key in ("ip", "ip6"):
            if held and data.get(key):
                held.discard(str(ip_address(str(data[key]))))

    def _search_from(self, net_name: str, pool: Pool, generation: int) -> int:
        """Where the search for a free address may begin: past what the last search
        found leased, unless a lease was deleted since (then from the start)."""
        seen, offset = self._leased_below.get((net_name, pool.range), (-1, 0))
        return offset if seen == generation else 0

    def interface_config(self, cfg: NetworkConfig, v4: IPv4Address, v6: list[IPv6Address],
                         mac: str | None = None, ifname: str = ENDPOINT_IFNAME) -> InterfaceConfig:
        """What IFNAME gets inside the endpoint namespace (MAC only when repairing it)."""
        prefix6 = cfg.subnet6.prefixlen if cfg.subnet6 else 64
        routes = [RouteConfig("0.0.0.0/0", cfg.default_gateway4 or cfg.gateway4)]
        if cfg.ipv6:
            routes.append(RouteConfig("::/0", cfg.default_gateway6 or LINK_LOCAL_GATEWAY))
        return InterfaceConfig(
            sysctls=() if cfg.ipv6 else v4_only_sysctls(ifname),
            mac=mac,
            addresses=(AddressConfig(v4, cfg.subnet4.prefixlen),)
            + tuple(AddressConfig(a, prefix6, nodad=True) for a in v6),
            routes=tuple(routes),
        )

    def _build(
        self, row: EndpointRow, cfg: NetworkConfig, v4: IPv4Address, v6: list[IPv6Address], rb: Rollback
    ) -> int:
        """Make the endpoint's kernel objects; returns the host veth's ifindex."""
        kernel = self.rt.kernel
        driver = self.networks.drivers.get(cfg.driver)
        driver.create_endpoint(cfg, row, EndpointAddresses(v4, tuple(v6), row.mac), rb)
        ns_sysctls = ENDPOINT_NETNS_SYSCTLS_V6 if cfg.ipv6 else {}
        if row.handoff:
            pass  # the peer stays beside its host end (netns ""): the runtime moves and configures it
        elif not row.adopted:
            kernel.create_netns(row.netns, ns_sysctls)
            rb.push(f"netns {row.netns}", lambda: kernel.remove_netns(row.netns))
        else:
            if kernel.netns_has_link(row.netns, row.ifname):
                raise Conflict(f"namespace {row.netns!r} already has an {row.ifname}")
            if ns_sysctls:
                kernel.write_netns_sysctls(row.netns, ns_sysctls)
        iface = None if row.handoff else self.interface_config(cfg, v4, v6, ifname=row.ifname)
        index = driver.join(cfg, row, iface, rb)
        proxy = self._proxy_iface()
        if proxy is not None and v6:
            for a in v6:
                kernel.ensure_proxy_neighbour(proxy, a)
                rb.push(f"proxy neighbour {a}", partial(kernel.remove_proxy_neighbour, proxy, a))
        return index

    def _proxy_iface(self) -> int | None:
        if not self.rt.ndp_proxy_iface:
            return None
        index = self.rt.kernel.link_index(self.rt.ndp_proxy_iface)
        if index is None:
            raise NotFound(f"--ndp-proxy-iface {self.rt.ndp_proxy_iface} does not exist")
        return index

    # remove
    def remove(self, name: str) -> None:
        with self.rt.lock:
            row = self._row(name)
            started, ok = time.monotonic(), False
            try:
                self.rt.store.set_endpoint_state(name, "removing")
                failed = self.teardown(row)
                ok = not failed
            finally:
                self.rt.observer.endpoint_removed(time.monotonic() - started, ok)
            log.info("endpoint %s removed%s", name, f" (failed: {', '.join(failed)})" if failed else "")

    def teardown(self, row: EndpointRow) -> list[str]:
        """Remove everything an endpoint may have, then its row and leases; idempotent.

        Best effort, as the CNI bridge plugin's DEL: every step runs even when
        an earlier one fails. Once the veth and the namespace are gone, the row
        and its leases go too (the address is free whatever else failed) and the
        failed steps are logged and returned. If the veth or the namespace could
        not be removed, the row stays in state 'removing' (the next removal or
        start retries) and ``Incomplete`` is raised.
        """
        kernel = self.rt.kernel
        failed: list[str] = []

        def step(what: str, fn: Any) -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - collected, logged and reported below
                log.warning("endpoint %s: could not remove its %s: %s", row.name, what, exc)
                failed.append(what)

        net = self.rt.store.network(row.network)
        mine = self.rt.store.endpoint_leases(row.name)
        v6 = [IPv6Address(lease.address) for lease in mine if lease.family == 6]
        cfg = NetworkConfig.from_json(net.config) if net is not None else None
        driver = self.networks.drivers.get(cfg.driver) if cfg is not None else None
        if net is not None and any(lease.family == 4 for lease in mine) and (driver is None or driver.host_side):
            step("datapath entries", lambda: self.rt.datapath.remove_endpoint(
                self.spec(row, NetworkConfig.from_json(net.config), net.id)))
        if self.outside is not None:
            step("published ports", partial(self.outside.unpublish, row.name))
        if self.dns is not None:
            step("DNS files", partial(self.dns.removed, row))
        proxy = kernel.link_index(self.rt.ndp_proxy_iface) if self.rt.ndp_proxy_iface else None
        if proxy is not None:
            for a in v6:
                step(f"proxy neighbour {a}", partial(kernel.remove_proxy_neighbour, proxy, a))
        if cfg is not None and driver is not None:
            step(f"veth {row.host_ifname}", partial(driver.leave, cfg, row))
            step("driver record", partial(driver.delete_endpoint, cfg, row))
        else:
            step(f"veth {row.host_ifname}", lambda: kernel.delete_link(row.host_ifname))
        if not row.adopted:
            step(f"netns {row.netns}", lambda: kernel.remove_netns(row.netns))
        left = [what for what, present in (
            (f"veth {row.host_ifname}", kernel.link_index(row.host_ifname) is not None),
            (f"netns {row.netns}", not row.adopted and kernel.netns_exists(row.netns)),
        ) if present]
        for what in failed:
            self.rt.observer.teardown_failed(what.split()[0])
        if left:
            self.rt.store.set_endpoint_state(row.name, "removing")
            raise Incomplete(f"endpoint {row.name!r}: could not remove its {' and '.join(left)}; "
                             "it stays in state 'removing' and is retried at the next removal or start")
        self.rt.store.remove_endpoint(row.name)
        if self.dns is not None:
            self.dns.changed()  # the resolver forgets its names
        return failed

    def joined(self, name: str, sandbox: str) -> None:
        """A handoff endpoint's peer goes to the runtime's namespace SANDBOX (the path of its file,
        which need not exist yet: dockerd joins before runc makes the namespace), or is back
        beside its host end (""): recorded for inspection only, as bpfnet never configures,
        checks or deletes it."""
        with self.rt.lock:
            row = self._row(name)
            if not row.handoff:
                raise InvalidArgument(f"endpoint {name!r} is not a handoff endpoint")
            if sandbox and not os.path.isabs(sandbox):
                raise InvalidArgument(f"sandbox {sandbox!r} is not an absolute path")
            self.rt.store.set_endpoint_netns(name, sandbox)

    def check(self, name: str) -> dict[str, Any]:
        """What differs between endpoint NAME and the kernel, without repairing anything
        (CNI's CHECK; the start-up reconcile repairs the same differences)."""
        with self.rt.lock:
            row = self._row(name)
            problems: list[str] = []
            if row.state != "ready":
                problems.append(f"the endpoint is in state {row.state!r}")
            net_row, cfg = self.networks.config(row.network)
            kernel = self.rt.kernel
            driver = self.networks.drivers.get(cfg.driver)
            host = next((link for link in kernel.dump_links() if link.name == row.host_ifname), None)
            bridge = kernel.link_index(cfg.bridge)
            if not driver.host_side:
                pass  # the endpoint's link hangs on the parent: no host veth, no datapath
            elif host is None or host.kind not in ENDPOINT_DEVICES:
                problems.append(f"host veth {row.host_ifname} is missing")
            else:
                if host.master is None or host.master != bridge:
                    problems.append(f"host veth {row.host_ifname} is not a port of bridge {cfg.bridge}")
                if not host.up:
                    problems.append(f"host veth {row.host_ifname} is down")
            inside = (kernel.interface_state(row.netns, row.ifname)
                      if not row.handoff and kernel.netns_exists(row.netns) else None)
            if row.handoff:
                pass  # the peer is the runtime's to configure and check
            elif inside is None:
                problems.append(f"{row.ifname} is missing in namespace {row.netns}")
            else:
                if host is not None and inside.peer != host.index:
                    problems.append(f"{row.ifname} in {row.netns} is not the peer of {row.host_ifname}")
                if driver.own_mac and inside.mac != row.mac:
                    problems.append(f"{row.ifname} has MAC {inside.mac}, not {row.mac}")
                if not inside.up:
                    problems.append(f"{row.ifname} is down")
                v4, v6 = self.addresses(row)
                want = self.interface_config(cfg, v4, v6, ifname=row.ifname)
                problems += [f"address {a.address}/{a.prefixlen} is missing on {row.ifname}"
                             for a in want.addresses if (str(a.address), a.prefixlen) not in inside.addresses]
                problems += [f"default route via {r.gateway} is missing" for r in want.routes
                             if str(r.gateway) not in inside.gateways]
            if host is not None and row.state == "ready":
                missing = self.rt.datapath.check_endpoint(self.spec(row, cfg, net_row.id, host_ifindex=host.index,
                                                                     device=host.kind))
                problems += [f"datapath {what} are not in place" for what in missing]
            return {"name": row.name, "ok": not problems, "problems": problems}

    def specs(self) -> list[EndpointSpec]:
        out = []
        links = {link.name: link for link in self.rt.kernel.dump_links()}  # one dump: index and kind
        for row in self.rt.store.endpoints():
            if row.state != "ready":
                continue
            net_row, cfg = self.networks.config(row.network)
            if self.networks.drivers.get(cfg.driver).host_side:
                link = links.get(row.host_ifname)
                out.append(self.spec(row, cfg, net_row.id, host_ifindex=link.index if link else 0,
                                     device=link.kind if link else None))
        return out
