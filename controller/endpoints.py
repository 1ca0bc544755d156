"""Endpoints: a network namespace joined to a network's bridge by a veth pair.

Boundary: IPAM leases (via ``bpfnet.ipam`` pools and the store), the endpoint
namespace, the veth pair, addresses and routes inside the namespace, the NDP
proxy entries and the datapath's endpoint entries. Every add is one rollback
unit; the store row is written first in state 'creating' so that a daemon
killed mid-way is reconciled at its next start.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from pyroute2 import IPRoute

from . import links, netns
from .addressing import ipv6_from_mac, link_local_from_mac, mac_from_ipv4, parse_mac
from .config import NetworkConfig, check_name
from .errors import Conflict, Exhausted, InvalidArgument, NotFound
from .ipam import IPAddress, IPNetwork, Pool, parse_address
from .model import EndpointSpec
from .networks import LINK_LOCAL_GATEWAY, NetworkService, pools
from .rollback import Rollback
from .runtime import Runtime
from .state import EndpointRow

log = logging.getLogger(__name__)
HOST_VETH_PREFIX = "bnv"
BRIDGE_MAX_PORTS = 1023  # the kernel's BR_MAX_PORTS is 1024 and port 0 is reserved


def debug_pause(stage: str) -> None:
    """Crash-recovery tests set BPFNET_DEBUG_PAUSE=STAGE:SECONDS to SIGKILL the daemon mid-operation."""
    spec = os.environ.get("BPFNET_DEBUG_PAUSE", "")
    if spec.partition(":")[0] == stage:
        log.warning("BPFNET_DEBUG_PAUSE: pausing at %s", stage)
        time.sleep(float(spec.partition(":")[2] or 30))


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
        # (network, range) -> (store.lease_generation, offset): when last searched, every
        # address of the range below offset was leased; valid while no lease was deleted.
        self._leased_below: dict[tuple[str, IPNetwork], tuple[int, int]] = {}

    # queries
    def _row(self, name: str) -> EndpointRow:
        row = self.rt.store.endpoint(name)
        if row is None:
            raise NotFound(f"endpoint {name!r} not found")
        return row

    def _addresses(self, row: EndpointRow) -> tuple[IPv4Address, list[IPv6Address]]:
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
             host_ifindex: int | None = None) -> EndpointSpec:
        """The datapath's view of an endpoint; HOST_IFINDEX when the caller already knows it."""
        v4, v6 = self._addresses(row)
        if host_ifindex is None:
            host_ifindex = links.link_index(self.rt.ipr, row.host_ifname) or 0
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
        )

    def describe(self, row: EndpointRow, host_ifindex: int | None = None) -> dict[str, Any]:
        _, cfg = self.networks.config(row.network)
        if host_ifindex is None:
            host_ifindex = links.link_index(self.rt.ipr, row.host_ifname)
        v4, v6 = self._addresses(row)
        out: dict[str, Any] = {
            "name": row.name,
            "id": row.id,
            "network": row.network,
            "netns": row.netns,
            "adopted_netns": row.adopted,
            "host_ifname": row.host_ifname,
            "host_ifindex": host_ifindex,
            "mac": row.mac,
            "ipv4": f"{v4}/{cfg.subnet4.prefixlen}",
            "gateway4": str(cfg.default_gateway4 or cfg.gateway4),
            "state": row.state,
            "created": row.created,
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

    # add
    def add(self, data: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise InvalidArgument("endpoint: expected a JSON object")
        unknown = set(data) - {"name", "network", "ip", "ip6", "mac", "netns"}
        if unknown:
            raise InvalidArgument(f"endpoint: unknown field(s) {', '.join(sorted(unknown))}")
        name = check_name(data.get("name") or "", "endpoint name")
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
            ns, adopted = self._namespace(name, data.get("netns"))
            v4, mac, v6 = self._plan_addresses(net_name, cfg, data)
            leases = [(str(v4), 4)] + [(str(a), 6) for a in v6]
            try:
                row = self.rt.store.reserve_endpoint(
                    name, net_name, ns, adopted, mac, leases, self.rt.max_endpoints, time.time(), host_ifname
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"an address of endpoint {name!r} was taken meanwhile; retry") from None
            except OverflowError as exc:
                raise Conflict(str(exc)) from None
            if row is None:
                raise Conflict(f"endpoint {name!r} already exists")
            started, ok = time.monotonic(), False
            try:
                with Rollback(f"endpoint add {name}") as rb:
                    rb.push("state row and leases", lambda: self.rt.store.remove_endpoint(name))
                    index = self._build(row, cfg, v4, v6, rb)
                    spec = self.spec(row, cfg, net_row.id, host_ifindex=index)
                    self.rt.datapath.add_endpoint(spec)
                    rb.push("datapath entries", lambda: self.rt.datapath.remove_endpoint(spec))
                    self.rt.store.set_endpoint_state(name, "ready")
                ok = True
            finally:
                self._observe("endpoint_add", time.monotonic() - started, ok)
            log.info("endpoint %s added to %s: %s %s%s", name, net_name, mac, v4,
                     "".join(f" {a}" for a in v6))
            return self.describe(self._row(name), host_ifindex=index)

    def _observe(self, what: str, seconds: float, ok: bool) -> None:
        hook = self.rt.hooks.get(what)
        if hook is not None:
            hook(seconds, ok)

    def _default_network(self) -> str:
        for row in self.rt.store.networks():
            if row.is_default:
                return row.name
        raise NotFound("no default network; pass --network")

    def _namespace(self, name: str, existing: Any) -> tuple[str, bool]:
        if existing:
            ns = check_name(str(existing), "--netns")
            if not netns.exists(ns):
                raise NotFound(f"network namespace {ns!r} does not exist (ip netns list)")
            if ns == self.rt.hostns:
                raise InvalidArgument(f"namespace {ns!r} is the daemon's host namespace")
            for other in self.rt.store.endpoints():
                if other.netns == ns:
                    raise Conflict(f"namespace {ns!r} already belongs to endpoint {other.name!r}")
            return ns, True
        if netns.exists(name):
            raise Conflict(
                f"network namespace {name!r} already exists; pass --netns {name} to adopt it"
            )
        return name, False

    def _plan_addresses(
        self, net_name: str, cfg: NetworkConfig, data: dict[str, Any]
    ) -> tuple[IPv4Address, str, list[IPv6Address]]:
        p4, p6 = pools(cfg)
        generation = self.rt.store.lease_generation  # read before the leases it vouches for
        used = LeasedAddresses(self.rt.store.leased_addresses(net_name))
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

    def _search_from(self, net_name: str, pool: Pool, generation: int) -> int:
        """Where the search for a free address may begin: past what the last search
        found leased, unless a lease was deleted since (then from the start)."""
        seen, offset = self._leased_below.get((net_name, pool.range), (-1, 0))
        return offset if seen == generation else 0

    def _build(
        self, row: EndpointRow, cfg: NetworkConfig, v4: IPv4Address, v6: list[IPv6Address], rb: Rollback
    ) -> int:
        """Make the endpoint's kernel objects; returns the host veth's ifindex."""
        ipr = self.rt.ipr
        bridge = links.link_index_here(cfg.bridge)
        if bridge is None:
            raise RuntimeError(f"bridge {cfg.bridge} of network {row.network} is missing")
        if not row.adopted:
            netns.create(row.netns, links.prepare_endpoint_netns_here if cfg.ipv6 else None)
            rb.push(f"netns {row.netns}", lambda: netns.remove(row.netns))
        else:
            with IPRoute(netns=row.netns) as inner:
                if links.link_index(inner, "eth0") is not None:
                    raise Conflict(f"namespace {row.netns!r} already has an eth0")
            if cfg.ipv6:
                links.prepare_endpoint_netns(row.netns)
        # Without IPv6 the host end must not come up before disable_ipv6 is set on it.
        index, eth0 = links.create_veth(ipr, row.host_ifname, row.netns, row.mac, cfg.mtu, bridge,
                                        up=cfg.ipv6)
        # Deleting the host end deletes eth0 too (also in an adopted namespace).
        rb.push(f"veth {row.host_ifname}", lambda: links.delete_link(ipr, row.host_ifname))
        debug_pause("endpoint-add-after-veth")
        if not cfg.ipv6:
            netns.write_sysctl(f"net/ipv6/conf/{row.host_ifname}/disable_ipv6", "1")
            links.set_up(ipr, index)
        prefix6 = cfg.subnet6.prefixlen if cfg.subnet6 else 64
        gw6 = (cfg.default_gateway6 or LINK_LOCAL_GATEWAY) if cfg.ipv6 else None
        links.configure_endpoint(
            row.netns,
            eth0,
            v4,
            cfg.subnet4.prefixlen,
            cfg.default_gateway4 or cfg.gateway4,
            [(a, prefix6) for a in v6],
            gw6,
        )
        proxy = self._proxy_iface()
        if proxy is not None and v6:
            for a in v6:
                links.ensure_proxy_neighbour(ipr, proxy, a)
                rb.push(f"proxy neighbour {a}", partial(links.remove_proxy_neighbour, ipr, proxy, a))
        return index

    def _proxy_iface(self) -> int | None:
        if not self.rt.ndp_proxy_iface:
            return None
        index = links.link_index(self.rt.ipr, self.rt.ndp_proxy_iface)
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
                self.teardown(row)
                ok = True
            finally:
                self._observe("endpoint_remove", time.monotonic() - started, ok)
            log.info("endpoint %s removed", name)

    def teardown(self, row: EndpointRow) -> None:
        """Remove everything an endpoint may have (idempotent), then its row and leases."""
        ipr = self.rt.ipr
        net = self.rt.store.network(row.network)
        mine = self.rt.store.endpoint_leases(row.name)
        v6 = [IPv6Address(lease.address) for lease in mine if lease.family == 6]
        has_v4 = any(lease.family == 4 for lease in mine)
        if net is not None and has_v4:
            self.rt.datapath.remove_endpoint(self.spec(row, NetworkConfig.from_json(net.config), net.id))
        proxy = links.link_index(ipr, self.rt.ndp_proxy_iface) if self.rt.ndp_proxy_iface else None
        if proxy is not None:
            for a in v6:
                links.remove_proxy_neighbour(ipr, proxy, a)
        links.delete_link(ipr, row.host_ifname)
        if not row.adopted:
            netns.remove(row.netns)
        self.rt.store.remove_endpoint(row.name)

    # start-up
    def reconcile(self) -> dict[str, int]:
        """Finish or undo what a previous daemon left: half-made endpoints, vanished ones, leaks."""
        stats = {"rolled_back": 0, "reclaimed": 0, "leaked_links": 0, "orphan_leases": 0}
        with self.rt.lock:
            for row in self.rt.store.endpoints():
                if row.state != "ready":
                    log.warning("endpoint %s was left in state %r by a previous daemon; rolling it back",
                                row.name, row.state)
                    outcome = "rolled_back"
                elif not netns.exists(row.netns) or links.link_index(self.rt.ipr, row.host_ifname) is None:
                    log.warning("endpoint %s lost its namespace or veth; reclaiming its addresses", row.name)
                    outcome = "reclaimed"
                else:
                    continue
                try:
                    self.teardown(row)
                    stats[outcome] += 1
                except Exception:
                    log.exception("reconcile: could not remove endpoint %s; will retry at next start", row.name)
                    hook = self.rt.hooks.get("reconcile_error")
                    if hook is not None:
                        hook()
            known = {r.host_ifname for r in self.rt.store.endpoints()}
            for link in self.rt.ipr.link("dump"):
                ifname = str(link.get("IFLA_IFNAME"))
                if is_host_veth_name(ifname) and ifname not in known \
                        and links.link_kind(self.rt.ipr, link) == "veth":
                    log.warning("deleting leaked veth %s", ifname)
                    links.delete_link(self.rt.ipr, ifname)
                    stats["leaked_links"] += 1
            orphans = self.rt.store.remove_orphan_leases()
            for lease in orphans:
                log.warning("reclaimed lease %s on %s (endpoint %s is gone)", lease.address, lease.network,
                            lease.endpoint)
            stats["orphan_leases"] = len(orphans)
        return stats

    def specs(self) -> list[EndpointSpec]:
        out = []
        for row in self.rt.store.endpoints():
            if row.state != "ready":
                continue
            net_row, cfg = self.networks.config(row.network)
            out.append(self.spec(row, cfg, net_row.id))
        return out
