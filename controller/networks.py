"""Networks: validation against each other and the host, bridges, gateways.

Boundary: one network = one bridge in the managed namespace carrying the IPv4
gateway, fe80::1 and the global IPv6 gateway, plus the datapath's bridge
program. IPAM pools are derived here from the network config; leases belong
to the endpoint service. Policy here (bridge names, sysctls, limits), kernel
work through ``Runtime.kernel`` (``bpfnet.kernel``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_interface,
)
from typing import TYPE_CHECKING, Any

from .addressing import mac_from_ipv4
from .config import (
    ULA_SUBNET_PREFIXLEN,
    AddressPool,
    NetworkConfig,
    bridge_name_for,
    check_name,
    random_ula_prefix,
)
from .datapath.abi import MAX_NETWORKS, MODE_BRIDGE
from .drivers import Drivers
from .drivers.bridge import LINK_LOCAL_GATEWAY, BridgeDriver
from .drivers.underlay import IpvlanDriver, MacvlanDriver
from .errors import Conflict, Exhausted, Forbidden, InvalidArgument, NotFound
from .ipam import Pool
from .model import LinkState, NetworkSpec
from .rollback import Rollback
from .runtime import Runtime
from .state import NetworkRow

if TYPE_CHECKING:
    from .dns.service import DnsService
    from .outside.service import OutsideService

log = logging.getLogger(__name__)
# Network ids are 1..MAX_NETWORKS-1 in the datapath's maps (0 means "no network").
NETWORK_LIMIT = MAX_NETWORKS - 1


def pools(cfg: NetworkConfig) -> tuple[Pool, Pool | None]:
    p4 = Pool(cfg.name, cfg.subnet4, cfg.range4, cfg.gateway4)
    p6 = None
    if cfg.subnet6 is not None and cfg.range6 is not None:
        p6 = Pool(cfg.name, cfg.subnet6, cfg.range6, cfg.gateway6)
    return p4, p6


class NetworkService:
    def __init__(self, rt: Runtime, drivers: Drivers | None = None) -> None:
        self.rt = rt
        self.drivers = drivers or Drivers(BridgeDriver(rt), MacvlanDriver(rt), IpvlanDriver(rt))
        self.outside: OutsideService | None = None  # masquerading follows the networks; set by the daemon
        self.dns: DnsService | None = None  # the resolver listens on every network's gateway; set by the daemon

    # queries
    def config(self, name: str) -> tuple[NetworkRow, NetworkConfig]:
        row = self.rt.store.network(name)
        if row is None:
            raise NotFound(f"network {name!r} not found")
        return row, NetworkConfig.from_json(row.config)

    def spec(self, row: NetworkRow, cfg: NetworkConfig | None = None) -> NetworkSpec:
        cfg = cfg or NetworkConfig.from_json(row.config)
        index = self.rt.kernel.link_index(cfg.bridge)
        gw6: tuple[IPv6Address, ...] = ()
        if cfg.ipv6:
            gw6 = (LINK_LOCAL_GATEWAY,) + ((cfg.gateway6,) if cfg.gateway6 else ())
        return NetworkSpec(
            name=row.name,
            id=row.id,
            bridge=cfg.bridge,
            bridge_ifindex=index or 0,
            bridge_mac=str((cfg.owned or {}).get("mac") or mac_from_ipv4(cfg.gateway4)),
            gateway4=cfg.gateway4,
            gateway6=gw6,
            icc=cfg.icc,
            internal=cfg.internal,
            vni=cfg.vni or 0,
            routed4=cfg.cluster_subnet4 if cfg.driver == "routed" else None,
            routed6=cfg.cluster_subnet6 if cfg.driver == "routed" else None,
        )

    def describe(self, row: NetworkRow, host: list[IPv4Network | IPv6Network] | None = None) -> dict[str, Any]:
        """The network's document; HOST: the host's prefixes when the caller already has them."""
        cfg = NetworkConfig.from_json(row.config)
        p4, p6 = pools(cfg)
        leases = self.rt.store.leases(row.name)
        eps = self.rt.store.endpoints(row.name)
        ipam: dict[str, Any] = {
            "ipv4": {
                "subnet": str(cfg.subnet4),
                "range": str(p4.range),
                "gateway": str(cfg.gateway4),
                "capacity": p4.capacity(),
                "in_use": sum(1 for lease in leases if lease.family == 4),
            }
        }
        if cfg.ipv6:
            ipam["ipv6"] = {
                "subnet": str(cfg.subnet6) if cfg.subnet6 else None,
                "range": str(p6.range) if p6 else None,
                "gateway": str(cfg.gateway6) if cfg.gateway6 else None,
                "link_local_gateway": str(LINK_LOCAL_GATEWAY),
                "capacity": p6.capacity() if p6 else 0,
                "in_use": sum(1 for lease in leases if lease.family == 6),
            }
        return {
            "name": row.name,
            "id": row.id,
            "default": row.is_default,
            "driver": cfg.driver,
            "scope": self.drivers.get(cfg.driver).scope if cfg.driver in self.drivers.names() else None,
            "bridge": cfg.bridge,
            "bridge_ifindex": self.rt.kernel.link_index(cfg.bridge),
            "mtu": cfg.mtu,
            "icc": cfg.icc,
            "internal": cfg.internal,
            "masquerade": cfg.masquerade,
            "ipv6": cfg.ipv6,
            "ipam": ipam,
            "endpoints": [e.name for e in eps],
            # where the subnets came from; None (networks stored before this was recorded): not known
            "subnet_source": cfg.subnet_source,
            "subnet6_source": cfg.subnet6_source if cfg.subnet6 is not None else None,
            "overlaps": self.overlaps(cfg, host),
            "config": cfg.to_json(),
            "driver_state": self.drivers.get(cfg.driver).describe(cfg) if cfg.driver in self.drivers.names() else {},
        }

    def list_all(self) -> list[dict[str, Any]]:
        host = self.host_prefixes()  # one route and address dump for every network's overlaps
        return [self.describe(r, host) for r in self.rt.store.networks()]

    # overlap checks
    def _our_bridges(self) -> set[int]:
        out = set()
        for row in self.rt.store.networks():
            index = self.rt.kernel.link_index(row.config["bridge"])
            if index is not None:
                out.add(index)
        return out

    def host_prefixes(self, bridge: str | None = None, *own: str) -> list[IPv4Network | IPv6Network]:
        """Routes/addresses of the managed namespace that are not ours, plus the outer namespace's.
        BRIDGE: the bridge a network is about to adopt (ensure_bridge takes an existing one
        over): what is already on it is what the network will have, not a clash. OWN: further
        links whose prefixes are the network's own (an underlay network's parent)."""
        skip = self._our_bridges()
        for name in (bridge, *own):
            if name is not None and (index := self.rt.kernel.link_index(name)) is not None:
                skip.add(index)
        return self.rt.kernel.host_prefixes(skip) + list(self.rt.outer_prefixes)

    def check_overlaps(self, cfg: NetworkConfig, exclude: str | None = None) -> None:
        mine: list[IPv4Network | IPv6Network] = [cfg.subnet4]
        if cfg.subnet6 is not None:
            mine.append(cfg.subnet6)
        for row in self.rt.store.networks():
            if row.name == exclude:
                continue
            other = NetworkConfig.from_json(row.config)
            if other.bridge == cfg.bridge:
                raise Conflict(f"bridge {cfg.bridge} is already used by network {row.name}")
            theirs: list[IPv4Network | IPv6Network] = [other.subnet4]
            if other.subnet6 is not None:
                theirs.append(other.subnet6)
            for a in mine:
                for b in theirs:
                    if a.version == b.version and a.overlaps(b):
                        raise Conflict(f"subnet {a} overlaps network {row.name}'s subnet {b}")
        for a in mine:
            for b in self.host_prefixes(*self.drivers.get(cfg.driver).host_links(cfg)):
                if a.version == b.version and a.overlaps(b):
                    raise Conflict(f"subnet {a} overlaps the host's route or address {b}")

    def overlaps(self, cfg: NetworkConfig, host: list[IPv4Network | IPv6Network] | None = None) -> list[str]:
        """Routes and addresses of the host (not bpfnet's bridges) that overlap CFG's subnets now:
        what appeared after the network was made (create refuses overlaps). Reported, never changed.
        HOST: ``host_prefixes()`` when the caller checks several networks."""
        mine: list[IPv4Network | IPv6Network] = [cfg.subnet4] + ([cfg.subnet6] if cfg.subnet6 else [])
        own = self.drivers.get(cfg.driver).host_links(cfg)
        if own != [cfg.bridge]:
            host = self.host_prefixes(*own)  # an underlay network: the parent's subnet is its own
        prefixes = self.host_prefixes() if host is None else host
        return sorted({str(b) for b in prefixes for a in mine if a.version == b.version and a.overlaps(b)})

    def report_overlaps(self) -> dict[str, list[str]]:
        """The start-up CHECK of every network against the host's routes and addresses: logged and
        reported to the observer (the bpfnet_network_overlaps gauge)."""
        found = {}
        host = self.host_prefixes()
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            found[row.name] = self.overlaps(cfg, host)
            if found[row.name]:
                log.warning("network %s (%s%s) overlaps the host's route or address %s, which appeared after it "
                            "was made: traffic to those addresses may go the wrong way", row.name, cfg.subnet4,
                            f", {cfg.subnet6}" if cfg.subnet6 else "", ", ".join(found[row.name]))
            self.rt.observer.network_overlaps(row.name, len(found[row.name]))
        return found

    def taken_subnets(self, version: int) -> list[IPv4Network | IPv6Network]:
        """What a new network of this family must not overlap on this host: its networks, routes and
        addresses (the overlay driver adds the cluster's networks when it picks a subnet)."""
        return self._taken(None, version)

    def _taken(self, bridge: str | None, version: int) -> list[IPv4Network | IPv6Network]:
        taken: list[IPv4Network | IPv6Network] = [p for p in self.host_prefixes(bridge) if p.version == version]
        for row in self.rt.store.networks():
            key = "subnet4" if version == 4 else "subnet6"
            if row.config.get(key):
                taken.append(IPv4Network(row.config[key]) if version == 4 else IPv6Network(row.config[key]))
        return taken

    def pick_subnet(self, bridge: str | None = None, hint: str = "pass --subnet") -> tuple[IPv4Network, AddressPool]:
        """The first subnet of the address pools that overlaps no network, no route or address of the
        managed namespace and none of the outer one (dockerd's --default-address-pool)."""
        taken = self._taken(bridge, 4)
        pools_ = self.rt.address_pools
        for pool in pools_:
            near = [t for t in taken if t.overlaps(pool.base)]
            for subnet in pool.subnets():
                if not any(subnet.overlaps(t) for t in near):
                    return subnet, pool
        total = sum(p.count for p in pools_)
        raise Exhausted(f"the address pools ({'; '.join(str(p) for p in pools_)}) hold {total} network(s), and "
                        f"every one overlaps a network or a host route or address; {hint}")

    def ula_prefix(self) -> IPv6Network:
        """This host's ULA /48 (RFC 4193: fd + a random 40-bit global ID), chosen once and kept in the state."""
        return IPv6Network(self.rt.store.claim_meta("ula_prefix", str(random_ula_prefix())))

    def pick_subnet6(self, bridge: str | None = None) -> tuple[IPv6Network, IPv6Network]:
        """(the next free /64 of the host's ULA prefix, that prefix)."""
        prefix = self.ula_prefix()
        near = [t for t in self._taken(bridge, 6) if t.overlaps(prefix)]
        for subnet in prefix.subnets(new_prefix=ULA_SUBNET_PREFIXLEN):
            if not any(subnet.overlaps(t) for t in near):
                return subnet, prefix
        raise Exhausted(f"every /64 of this host's IPv6 prefix {prefix} is taken; pass --subnet6")

    # bridges bpfnet did not make
    def _user_bridge(self, bridge: str) -> LinkState | None:
        """BRIDGE when it exists and bpfnet did not make it (no stored network says it did), else None."""
        link = next((li for li in self.rt.kernel.dump_links() if li.name == bridge), None)
        if link is None or link.kind != "bridge":
            return None
        for row in self.rt.store.networks():
            if row.config.get("bridge") == bridge and NetworkConfig.from_json(row.config).owns_bridge:
                return None
        return link

    def _user_addresses(self, link: LinkState) -> list[IPv4Interface | IPv6Interface]:
        """The addresses on a user's bridge that bpfnet did not add (link-local ones aside)."""
        ours: set[str] = set()
        for row in self.rt.store.networks():
            if row.config.get("bridge") == link.name:
                ours.update((row.config.get("owned") or {}).get("addresses", []))
        out: list[IPv4Interface | IPv6Interface] = []
        for address, prefixlen in self.rt.kernel.link_addresses(link.index):
            iface = ip_interface(f"{address}/{prefixlen}")
            if f"{address}/{prefixlen}" not in ours and not iface.is_link_local:
                out.append(iface)
        return out

    def _from_user_bridge(self, data: dict[str, Any], is_default: bool) -> dict[str, Any]:
        """DATA completed from an existing bridge bpfnet did not make (dockerd -b): its IPv4 address is
        the subnet and gateway, its global IPv6 address too (with IPv6), its MTU the default network's
        unless given. The default network's --bip must be one of its addresses."""
        link = self._user_bridge(data["bridge"])
        if link is None:
            return data
        data = dict(data)
        addrs = self._user_addresses(link)
        v4 = [a for a in addrs if isinstance(a, IPv4Interface)]
        v6 = [a for a in addrs if isinstance(a, IPv6Interface)]
        if "subnet4" in data:
            want = IPv4Interface(f"{data.get('gateway4') or IPv4Network(data['subnet4'], strict=False)[1]}/"
                                 f"{IPv4Network(data['subnet4'], strict=False).prefixlen}")
            if is_default and v4 and want not in v4:
                raise Conflict(f"--bip {want} differs from the address of bridge {link.name} "
                               f"({', '.join(map(str, v4))}): start without --bip to use the bridge's address, "
                               f"or give --bip {v4[0]}")
        elif v4:
            data.update(subnet4=str(v4[0].network), gateway4=str(v4[0].ip), subnet_source="bridge")
        if data.get("ipv6") and "subnet6" not in data and v6:
            data.update(subnet6=str(v6[0].network), gateway6=str(v6[0].ip), subnet6_source="bridge")
        if is_default and "mtu" not in data and link.mtu:
            data["mtu"] = link.mtu
        return data

    def _complete(self, data: dict[str, Any], is_default: bool) -> dict[str, Any]:
        """DATA with every subnet decided: given, from a user's bridge, or picked from the pools."""
        data = {k: v for k, v in data.items() if v is not None}
        name = check_name(data.get("name"), "network name")  # type: ignore[arg-type]  # checked there
        data = self.drivers.get(str(data.get("driver", "bridge"))).complete(data)
        data.setdefault("bridge", bridge_name_for(name))
        data = self._from_user_bridge(data, is_default)
        if "subnet4" in data:
            data.setdefault("subnet_source", "given")
        elif is_default and data.get("ip_range4"):
            # --fixed-cidr without --bip: the range's network is the subnet (as before)
            data.update(subnet4=str(IPv4Network(data["ip_range4"], strict=False)), subnet_source="given")
        else:
            if data.get("gateway4") or data.get("ip_range4"):
                raise InvalidArgument("gateway4 and ip_range4 need subnet4")
            subnet, pool = self.pick_subnet(data["bridge"], "pass --bip" if is_default else "pass --subnet")
            data.update(subnet4=str(subnet), gateway4=str(subnet[1]), subnet_source=f"pool {pool.base}")
            log.info("network %s: picked %s from the address pool %s", name, subnet, pool)
        if "subnet6" in data:
            data.setdefault("subnet6_source", "given")
        elif data.get("ipv6") and not is_default:
            # The default network keeps --ipv6 without --fixed-cidr-v6 link-local only, as before.
            subnet6, prefix = self.pick_subnet6(data["bridge"])
            data.update(subnet6=str(subnet6), subnet6_source=f"ula {prefix}")
            log.info("network %s: picked %s from this host's IPv6 prefix %s", name, subnet6, prefix)
        return data

    # mutations
    def create(self, data: dict[str, Any], is_default: bool = False) -> dict[str, Any]:
        with self.rt.lock:
            if self.rt.store.network(str(data.get("name"))) is not None:
                raise Conflict(f"network {data.get('name')!r} already exists")
            cfg = NetworkConfig.from_json(self._complete(data, is_default))
            driver = self.drivers.get(cfg.driver)
            if self.rt.store.network(cfg.name) is not None:
                raise Conflict(f"network {cfg.name!r} already exists")
            count = len(self.rt.store.networks())
            if count >= NETWORK_LIMIT:
                raise Exhausted(f"there are {count} networks, the most the datapath holds (MAX_NETWORKS); "
                                "remove one first")
            self.check_overlaps(cfg)
            if cfg.internal and self.rt.datapath.mode == MODE_BRIDGE:
                raise InvalidArgument("an internal network needs an eBPF datapath, which enforces it; this daemon "
                                      "runs --datapath bridge (no programs)")
            driver.check_network(cfg)
            with Rollback(f"network create {cfg.name}") as rb:
                self.rt.store.add_network(cfg.name, cfg.to_json(), is_default)
                rb.push("state row", lambda: self.rt.store.remove_network(cfg.name))
                made = self.rt.store.network(cfg.name)
                assert made is not None
                owned = driver.create_network(cfg, made.id, rb)
                cfg = replace(cfg, owned=owned)
                self.rt.store.update_network(cfg.name, cfg.to_json())
                row = self.rt.store.network(cfg.name)
                assert row is not None
                spec = self.spec(row, cfg)
                if driver.host_side:
                    self.rt.datapath.attach_network(spec)
                    rb.push("datapath", lambda: self.rt.datapath.detach_network(spec))
                if self.outside is not None:
                    self.outside.sync()
                if self.dns is not None:
                    self.dns.changed()
            log.info("network %s created (driver %s): bridge %s (ifindex %s), %s%s", cfg.name, cfg.driver,
                     cfg.bridge, spec.bridge_ifindex, cfg.subnet4, f", {cfg.subnet6}" if cfg.subnet6 else "")
            return self.describe(row)

    def datapath_specs(self) -> list[NetworkSpec]:
        """The networks the datapath serves: those whose driver has host-side links."""
        out = []
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            if self.drivers.get(cfg.driver).host_side:
                out.append(self.spec(row, cfg))
        return out

    # the cluster (overlay networks): bpfnet.drivers.overlay.ClusterNetworks
    def adopt_cluster_network(self, config: dict[str, Any]) -> None:
        """Make a network another host of the cluster created (its stored config) here too."""
        with self.rt.lock:
            if self.rt.store.network(str(config.get("name"))) is None:
                self.create(dict(config))

    def forget_cluster_network(self, name: str) -> None:
        """Remove a network the cluster no longer has (refused while it has endpoints here)."""
        with self.rt.lock:
            if self.rt.store.network(name) is not None:
                self._remove(name)

    def ensure_present(self, row: NetworkRow) -> None:
        """At start-up: make sure a stored network's bridge and addresses exist (adopt or recreate)."""
        cfg = NetworkConfig.from_json(row.config)
        now = self.drivers.get(cfg.driver).restore_network(cfg, row.id)
        if cfg.owned is None:
            return  # stored before bpfnet recorded this: it made the bridge (and deletes it whole)
        if now["bridge"]:
            owned = now  # the bridge had vanished: bpfnet made it anew, with everything on it
        else:
            owned = {**cfg.owned, "addresses": sorted(set(cfg.owned.get("addresses", [])) | set(now["addresses"]))}
            if "routes" in now:
                owned["routes"] = now["routes"]
        if owned != cfg.owned:
            self.rt.store.update_network(row.name, replace(cfg, owned=owned).to_json())

    def remove(self, name: str) -> None:
        with self.rt.lock:
            row, _ = self.config(name)
            if row.is_default:
                # As Docker refuses for its predefined networks: every endpoint add without
                # --network would fail until the daemon recreates it at its next start.
                raise Forbidden(f"network {name!r} is the default network and cannot be removed; "
                                "restart the daemon with other settings to change it")
            self._remove(name)

    def _remove(self, name: str) -> None:
        with self.rt.lock:
            row, cfg = self.config(name)
            eps = self.rt.store.endpoints(name)
            if eps:
                raise Conflict(
                    f"network {name!r} has {len(eps)} endpoint(s) attached "
                    f"({', '.join(e.name for e in eps[:5])}{'…' if len(eps) > 5 else ''}); remove them first"
                )
            driver = self.drivers.get(cfg.driver)
            driver.prepare_delete_network(cfg)
            if driver.host_side:
                self.rt.datapath.detach_network(self.spec(row, cfg))
            driver.delete_network(cfg, row.id)
            self.rt.store.remove_network(name)
            if self.outside is not None:
                self.outside.sync()
            if self.dns is not None:
                self.dns.changed()
            self.rt.observer.network_overlaps(name, 0)
            log.info("network %s removed", name)

    def update_default(self, data: dict[str, Any] | None) -> None:
        """Start-up: (re)create the default network from the daemon's flags (None: --bridge none)."""
        with self.rt.lock:
            existing = next((r for r in self.rt.store.networks() if r.is_default), None)
            if data is None:
                if existing is not None:
                    if self.rt.store.endpoints(existing.name):
                        raise Conflict(f"--bridge none, but the default network {existing.name!r} still has "
                                       "endpoints; remove them first or start without --bridge none")
                    log.info("--bridge none: removing the default network %s", existing.name)
                    self._remove(existing.name)
                return
            data = self._from_user_bridge(data, True)
            if existing is not None:
                old = NetworkConfig.from_json(existing.config)
                if "subnet4" not in data and old.bridge == data["bridge"]:
                    data = {**data, "subnet4": str(old.subnet4), "gateway4": str(old.gateway4),
                            "subnet_source": old.subnet_source}
                new = NetworkConfig.from_json(self._complete(data, True)) if "subnet4" in data else None
                if new == old:
                    self.ensure_present(existing)
                    return
                if new is not None and replace(old, icc=new.icc) == new:
                    # Only --icc changed: a flag in the datapath's network map, no rebuild.
                    new = replace(old, icc=new.icc)
                    self.rt.store.update_network(existing.name, new.to_json())
                    row = self.rt.store.network(existing.name)
                    assert row is not None
                    self.rt.datapath.attach_network(self.spec(row, new))
                    log.info("default network: icc is now %s", "on" if new.icc else "off")
                    return
                if self.rt.store.endpoints(existing.name):
                    raise Conflict(
                        f"the default network's settings changed but it still has endpoints; "
                        f"remove them or start with the old settings ({old.subnet4})"
                    )
                log.info("default network settings changed; recreating it")
                self._remove(existing.name)
            try:
                self.create(data, is_default=True)
            except InvalidArgument as exc:
                raise InvalidArgument(f"default network: {exc.message}") from None
