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
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from .addressing import mac_from_ipv4
from .config import DEFAULT_POOLS, NetworkConfig
from .datapath.abi import MAX_NETWORKS
from .errors import Conflict, Exhausted, Forbidden, InvalidArgument, NotFound
from .ipam import Pool
from .model import NetworkSpec
from .rollback import Rollback
from .runtime import Runtime
from .state import NetworkRow

log = logging.getLogger(__name__)
LINK_LOCAL_GATEWAY = IPv6Address("fe80::1")
# Network ids are 1..MAX_NETWORKS-1 in the datapath's maps (0 means "no network").
NETWORK_LIMIT = MAX_NETWORKS - 1


def pools(cfg: NetworkConfig) -> tuple[Pool, Pool | None]:
    p4 = Pool(cfg.name, cfg.subnet4, cfg.range4, cfg.gateway4)
    p6 = None
    if cfg.subnet6 is not None and cfg.range6 is not None:
        p6 = Pool(cfg.name, cfg.subnet6, cfg.range6, cfg.gateway6)
    return p4, p6


class NetworkService:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

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
            bridge_mac=mac_from_ipv4(cfg.gateway4),
            gateway4=cfg.gateway4,
            gateway6=gw6,
            icc=cfg.icc,
        )

    def describe(self, row: NetworkRow) -> dict[str, Any]:
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
            "bridge": cfg.bridge,
            "bridge_ifindex": self.rt.kernel.link_index(cfg.bridge),
            "mtu": cfg.mtu,
            "icc": cfg.icc,
            "ipv6": cfg.ipv6,
            "ipam": ipam,
            "endpoints": [e.name for e in eps],
            "config": cfg.to_json(),
        }

    def list_all(self) -> list[dict[str, Any]]:
        return [self.describe(r) for r in self.rt.store.networks()]

    # overlap checks
    def _our_bridges(self) -> set[int]:
        out = set()
        for row in self.rt.store.networks():
            index = self.rt.kernel.link_index(row.config["bridge"])
            if index is not None:
                out.add(index)
        return out

    def host_prefixes(self, bridge: str | None = None) -> list[IPv4Network | IPv6Network]:
        """Routes/addresses of the managed namespace that are not ours, plus the outer namespace's.
        BRIDGE: the bridge a network is about to adopt (ensure_bridge takes an existing one
        over): what is already on it is what the network will have, not a clash."""
        skip = self._our_bridges()
        if bridge is not None and (index := self.rt.kernel.link_index(bridge)) is not None:
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
            for b in self.host_prefixes(cfg.bridge):
                if a.version == b.version and a.overlaps(b):
                    raise Conflict(f"subnet {a} overlaps the host's route or address {b}")

    def pick_default_subnet(self) -> IPv4Network:
        """The first default pool that overlaps nothing (Docker's behaviour without --bip)."""
        taken: list[IPv4Network | IPv6Network] = list(self.host_prefixes())
        for row in self.rt.store.networks():
            taken.append(IPv4Network(row.config["subnet4"]))
        for pool in DEFAULT_POOLS:
            if not any(pool.version == t.version and pool.overlaps(t) for t in taken):
                return pool
        raise Conflict("every default address pool overlaps a host route or a network; pass --bip")

    # mutations
    def create(self, data: dict[str, Any], is_default: bool = False) -> dict[str, Any]:
        with self.rt.lock:
            cfg = NetworkConfig.from_json(data)
            if self.rt.store.network(cfg.name) is not None:
                raise Conflict(f"network {cfg.name!r} already exists")
            count = len(self.rt.store.networks())
            if count >= NETWORK_LIMIT:
                raise Exhausted(f"there are {count} networks, the most the datapath holds (MAX_NETWORKS); "
                                "remove one first")
            self.check_overlaps(cfg)
            with Rollback(f"network create {cfg.name}") as rb:
                self.rt.store.add_network(cfg.name, cfg.to_json(), is_default)
                rb.push("state row", lambda: self.rt.store.remove_network(cfg.name))
                index = self._ensure_bridge(cfg, rb)
                row = self.rt.store.network(cfg.name)
                assert row is not None
                spec = self.spec(row, cfg)
                self.rt.datapath.attach_network(spec)
                rb.push("datapath", lambda: self.rt.datapath.detach_network(spec))
            log.info("network %s created: bridge %s (ifindex %d), %s%s", cfg.name, cfg.bridge, index,
                     cfg.subnet4, f", {cfg.subnet6}" if cfg.subnet6 else "")
            return self.describe(row)

    def _ensure_bridge(self, cfg: NetworkConfig, rb: Rollback) -> int:
        kernel = self.rt.kernel
        index, created = kernel.ensure_bridge(cfg.bridge, mac_from_ipv4(cfg.gateway4), cfg.mtu)
        if created:
            rb.push(f"bridge {cfg.bridge}", lambda: kernel.delete_link(cfg.bridge))
        sysctls = {"net/ipv4/ip_forward": "1"}
        if cfg.ipv6:
            sysctls.update({
                "net/ipv6/conf/all/forwarding": "1",
                f"net/ipv6/conf/{cfg.bridge}/accept_dad": "0",
                f"net/ipv6/conf/{cfg.bridge}/disable_ipv6": "0",
            })
        kernel.write_sysctls(sysctls)
        kernel.ensure_address(index, str(cfg.gateway4), cfg.subnet4.prefixlen)
        if cfg.ipv6:
            kernel.ensure_address(index, str(LINK_LOCAL_GATEWAY), 64, nodad=True)
            if cfg.subnet6 is not None and cfg.gateway6 is not None:
                kernel.ensure_address(index, str(cfg.gateway6), cfg.subnet6.prefixlen, nodad=True)
            if cfg.range6 is not None and cfg.range6 != cfg.subnet6:
                kernel.ensure_route_via(str(cfg.range6), index)
        return index

    def ensure_present(self, row: NetworkRow) -> None:
        """At start-up: make sure a stored network's bridge and addresses exist (adopt or recreate)."""
        cfg = NetworkConfig.from_json(row.config)
        with Rollback(f"restore network {row.name}") as rb:
            self._ensure_bridge(cfg, rb)

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
            self.rt.datapath.detach_network(self.spec(row, cfg))
            self.rt.kernel.delete_link(cfg.bridge)
            self.rt.store.remove_network(name)
            log.info("network %s removed", name)

    def update_default(self, data: dict[str, Any]) -> None:
        """Start-up: (re)create the default network from the daemon's flags."""
        with self.rt.lock:
            existing = next((r for r in self.rt.store.networks() if r.is_default), None)
            if existing is not None:
                old = NetworkConfig.from_json(existing.config)
                if "subnet4" not in data:
                    data = {**data, "subnet4": str(old.subnet4), "gateway4": str(old.gateway4)}
                new = NetworkConfig.from_json(data)
                if new == old:
                    self.ensure_present(existing)
                    return
                if replace(old, icc=new.icc) == new:
                    # Only --icc changed: a flag in the datapath's network map, no rebuild.
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
            if "subnet4" not in data:
                if data.get("ip_range4"):
                    subnet = IPv4Network(data["ip_range4"], strict=False)
                    data = {**data, "subnet4": str(subnet)}
                else:
                    subnet = self.pick_default_subnet()
                    log.info("no --bip given: picked %s for the default network", subnet)
                    data = {**data, "subnet4": str(subnet), "gateway4": str(IPv4Address(int(subnet.network_address) + 1))}
            try:
                self.create(data, is_default=True)
            except InvalidArgument as exc:
                raise InvalidArgument(f"default network: {exc.message}") from None
