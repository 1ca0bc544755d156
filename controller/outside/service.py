"""Ways out and in: masquerading, published ports and internal networks (the policy).

Boundary: decides what bpfnet's nftables table must hold, from the state (networks,
endpoints, their published ports) and the daemon's settings, and has it applied through
``OutsideKernel`` (``outside.nft``) as one transaction per change; ``outside.ruleset``
writes the rules. Published ports are checked here before anything is made (a malformed
spec, a host address the managed namespace does not have, an internal network: 400; a
port another endpoint publishes: 409), stored with the endpoint, and removed with it.
Internal networks are enforced by the datapath (``DROP_INTERNAL``); here they only get
no masquerading and no published ports. Entered from the services: ``EndpointService``
calls check/publish/unpublish, ``NetworkService`` calls ``sync`` after a change.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from ..config import NetworkConfig
from ..datapath.abi import MODE_BRIDGE
from ..errors import Conflict, InvalidArgument
from ..runtime import Runtime
from . import ruleset
from .nft import NftError, OutsideKernel
from .ports import PortMapping, assign, first_collision

log = logging.getLogger(__name__)
MECHANISM = f"nftables table {ruleset.TABLE_REF}"


@dataclass(frozen=True)
class OutsideSettings:
    """The daemon's flags: --ip-masq, --ip6-masq, --ip-forward."""

    ip_masq: bool = True
    ip6_masq: bool = False
    ip_forward: bool = True


def _mapping(row: tuple[str, str, str, int, int]) -> tuple[str, PortMapping]:
    endpoint, proto, host_ip, host_port, endpoint_port = row
    return endpoint, PortMapping.from_json({"proto": proto, "host_ip": host_ip or None,
                                            "host_port": host_port, "endpoint_port": endpoint_port})


class OutsideService:
    def __init__(self, rt: Runtime, kernel: OutsideKernel, settings: OutsideSettings) -> None:
        self.rt = rt
        self.kernel = kernel
        self.settings = settings

    # queries ----------------------------------------------------------------
    def published(self, endpoint: str) -> list[dict[str, Any]]:
        return [m.to_json() for _, m in map(_mapping, self.rt.store.published_ports(endpoint))]

    def info(self) -> dict[str, Any]:
        return {"mechanism": MECHANISM, "ip_masq": self.settings.ip_masq, "ip6_masq": self.settings.ip6_masq,
                "ip_forward": self.settings.ip_forward, "installed": self.kernel.table_exists(),
                "published_ports": len(self.rt.store.published_ports())}

    def plan(self) -> ruleset.Plan:
        """What the table must hold now, from the state."""
        nets: dict[str, tuple[ruleset.NetworkPlan, NetworkConfig]] = {}
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            nets[row.name] = (ruleset.NetworkPlan(row.name, row.id, cfg.bridge, cfg.subnet4, cfg.subnet6,
                                                  cfg.masquerade, cfg.internal), cfg)
        published: list[ruleset.PublishPlan] = []
        for endpoint, mapping in map(_mapping, self.rt.store.published_ports()):
            ep = self.rt.store.endpoint(endpoint)
            if ep is None or ep.network not in nets:
                continue
            net, _ = nets[ep.network]
            v4, v6 = self._addresses(endpoint)
            if v4 is None or net.internal:
                continue
            published.append(ruleset.PublishPlan(endpoint, net.bridge, mapping, v4, v6))
        return ruleset.Plan(tuple(n for n, _ in nets.values()), tuple(published),
                            self.settings.ip_masq, self.settings.ip6_masq)

    def _addresses(self, endpoint: str) -> tuple[IPv4Address | None, IPv6Address | None]:
        v4: IPv4Address | None = None
        v6: IPv6Address | None = None
        for lease in self.rt.store.endpoint_leases(endpoint):
            if lease.family == 4:
                v4 = IPv4Address(lease.address)
            elif v6 is None:
                v6 = IPv6Address(lease.address)
        return v4, v6

    # changes ----------------------------------------------------------------
    def sync(self) -> None:
        """Rebuild the table from the state, in one nft transaction (also at start: adopting
        what a previous daemon left, without a gap)."""
        with self.rt.lock:
            plan = self.plan()
            bridges = {n.bridge for n in plan.networks}
            # 127.0.0.1:PORT answered by an endpoint: the DNATed packet leaves through the
            # bridge with a loopback source, which the kernel routes only with route_localnet
            # (dockerd sets it on docker0 with --userland-proxy=false for the same reason).
            self.kernel.write_sysctls({f"net/ipv4/conf/{b}/route_localnet": "1"
                                       for b in sorted({p.bridge for p in plan.published})})
            self.kernel.apply(ruleset.render(plan, list(self.kernel.counters()), self.kernel.chains()))
            log.debug("%s: %d network(s) (%d bridge(s)), %d published port(s)", MECHANISM,
                      len(plan.networks), len(bridges), len(plan.published))

    def start(self) -> None:
        """At daemon start: forwarding sysctls (--ip-forward), then the table."""
        if self.settings.ip_forward:
            self.kernel.write_sysctls({"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"})
        self.sync()
        internal = [n.name for n in self.plan().networks if n.internal]
        if internal and self.rt.datapath.mode == MODE_BRIDGE:
            log.warning("internal network(s) %s are NOT isolated: --datapath bridge has no programs to enforce it",
                        ", ".join(internal))
        log.info("outside: %s (ip-masq %s, ip6-masq %s, ip-forward %s)", MECHANISM,
                 "on" if self.settings.ip_masq else "off", "on" if self.settings.ip6_masq else "off",
                 "on" if self.settings.ip_forward else "off")

    def check_publish(self, network: str, cfg: NetworkConfig, specs: Any,
                      has_ipv6: bool) -> list[PortMapping]:
        """The mappings of an endpoint add's --publish values, refused (nothing made) when
        malformed, impossible here, or taken. Call with rt.lock held."""
        if not specs:
            return []
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise InvalidArgument("publish: expected a list of strings like 8080:80")
        existing = list(map(_mapping, self.rt.store.published_ports()))
        mappings = assign(specs, [m for _, m in existing])
        if cfg.internal:
            raise InvalidArgument(f"network {network} is internal: nothing outside it can reach it, "
                                  "so it cannot publish ports")
        local = self.kernel.local_addresses()
        for m in mappings:
            if m.host_ip is not None and m.host_ip not in local:
                raise InvalidArgument(f"--publish {m}: the host (namespace "
                                      f"{self.rt.hostns or 'of the daemon'}) has no address {m.host_ip}")
            if m.host_ip is not None and m.host_ip.version == 6 and not has_ipv6:
                raise InvalidArgument(f"--publish {m}: network {network} has no IPv6")
        clash = first_collision(mappings, existing)
        if clash is not None:
            new, owner, old = clash
            raise Conflict(f"--publish {new}: port {old.host_port}/{old.proto} is already published "
                           f"as {old} by endpoint {owner!r}")
        return mappings

    def publish(self, endpoint: str, mappings: list[PortMapping]) -> None:
        """Store ENDPOINT's mappings and apply; on failure nothing is left stored."""
        if not mappings:
            return
        rows = [(m.proto, str(m.host_ip) if m.host_ip is not None else "", m.host_port, m.endpoint_port)
                for m in mappings]
        try:
            self.rt.store.add_published_ports(endpoint, rows)
        except sqlite3.IntegrityError:
            raise Conflict(f"a port of endpoint {endpoint!r} was published meanwhile; retry") from None
        try:
            self.sync()
        except BaseException:
            self.rt.store.remove_published_ports(endpoint)
            raise
        log.info("endpoint %s publishes %s", endpoint, ", ".join(str(m) for m in mappings))

    def unpublish(self, endpoint: str) -> None:
        """Forget ENDPOINT's mappings and apply (established connections are left to conntrack)."""
        had = self.rt.store.published_ports(endpoint)
        self.rt.store.remove_published_ports(endpoint)
        if had:
            self.sync()

    def cleanup(self) -> bool:
        """--cleanup: delete bpfnet's table (nothing else is touched). False if there was none."""
        try:
            return self.kernel.delete_table()
        except NftError as exc:
            log.warning("%s", exc.message)
            return False

    # metrics ------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Per published port and per network, read from the table's named counters now."""
        raw = self.kernel.counters()
        ports = []
        for endpoint, m in map(_mapping, self.rt.store.published_ports()):
            row = self.rt.store.endpoint(endpoint)
            c = {w: raw.get(ruleset.port_counter(m, w), (0, 0)) for w in ("in", "out", "conn")}
            ports.append({"endpoint": endpoint, "network": row.network if row else "", **m.to_json(),
                          "in_packets": c["in"][0], "in_bytes": c["in"][1], "out_packets": c["out"][0],
                          "out_bytes": c["out"][1], "connections": c["conn"][0]})
        masq = []
        for net in self.rt.store.networks():
            names = {d: ruleset.masq_counter(net.id, d) for d in ruleset.DIRECTIONS}
            if names["out"] in raw:
                masq.append({"network": net.name, "out_bytes": raw[names["out"]][1],
                             "out_packets": raw[names["out"]][0], "in_bytes": raw[names["in"]][1],
                             "in_packets": raw[names["in"]][0]})
        return {"ports": ports, "masquerade": masq}
