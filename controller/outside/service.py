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

The fast path (``--published-fastpath``, bpf/nat.h): every sync also hands the datapath
the published ports (one entry per mapping and family, a counter slot per mapping that
keeps its number while the mapping exists) and the uplinks to attach ``uplink_ingress``
to: the ``--uplink`` interfaces, or every interface of the managed namespace with an
address that is not a bpfnet bridge, while any port is published. The kernel's DNAT
still admits every flow; the datapath takes over once the kernel has forwarded it. Its
counters are added to the nftables ones, so the metrics count either path.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from ..config import NetworkConfig
from ..datapath.abi import MAX_PUBLISHED, MODE_BRIDGE
from ..datapath.published import PublishedPort
from ..errors import Conflict, InvalidArgument
from ..runtime import Runtime
from . import ruleset
from .nft import NftError, OutsideKernel
from .ports import PortMapping, assign, first_collision

log = logging.getLogger(__name__)
MECHANISM = f"nftables table {ruleset.TABLE_REF}"
FASTPATH = "BPF fast path (uplink_ingress)"
# The kernel judges a fast-pathed TCP flow's FIN/RST after missing its sequence numbers
# (bpf/nat.h): conntrack must not call them out of window.
FASTPATH_SYSCTLS = {"net/netfilter/nf_conntrack_tcp_be_liberal": "1"}

PortKey = tuple[str, IPv4Address | IPv6Address | None, int]  # (proto, host ip, host port)


@dataclass(frozen=True)
class OutsideSettings:
    """The daemon's flags: --ip-masq, --ip6-masq, --ip-forward, --published-fastpath, --uplink."""

    ip_masq: bool = True
    ip6_masq: bool = False
    ip_forward: bool = True
    fastpath: bool = True
    uplinks: tuple[str, ...] = ()  # () = every interface with an address that is not bpfnet's


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

    @property
    def fastpath(self) -> bool:
        return self.settings.fastpath and self.rt.datapath.mode != MODE_BRIDGE

    def info(self) -> dict[str, Any]:
        fast: dict[str, Any] = {"enabled": self.fastpath, "uplinks": [], "flows": 0, "established": 0}
        if self.fastpath:
            flows = self.rt.datapath.flows()
            fast.update(uplinks=sorted(self.rt.datapath.uplinks().values()), flows=len(flows),
                        established=sum(1 for f in flows if f.state == "established"))
        return {"mechanism": MECHANISM + (f" + {FASTPATH}" if self.fastpath else ""),
                "ip_masq": self.settings.ip_masq, "ip6_masq": self.settings.ip6_masq,
                "ip_forward": self.settings.ip_forward, "installed": self.kernel.table_exists(),
                "published_ports": len(self.rt.store.published_ports()), "fastpath": fast}

    def plan(self) -> ruleset.Plan:
        """What the table must hold now, from the state."""
        nets: dict[str, tuple[ruleset.NetworkPlan, NetworkConfig]] = {}
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            nets[row.name] = (ruleset.NetworkPlan(row.name, row.id, cfg.bridge, cfg.subnet4, cfg.subnet6,
                                                  cfg.masquerade, cfg.internal, cfg.cluster_subnet4,
                                                  cfg.cluster_subnet6), cfg)
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
            self._sync_fastpath(plan)
            log.debug("%s: %d network(s) (%d bridge(s)), %d published port(s)", MECHANISM,
                      len(plan.networks), len(bridges), len(plan.published))

    def _sync_fastpath(self, plan: ruleset.Plan) -> None:
        """The datapath's published ports and uplinks, from PLAN (nothing with the fast path off)."""
        dp = self.rt.datapath
        if not self.fastpath:
            dp.set_published([])
            dp.set_uplinks({})
            return
        ports = self._fast_ports(plan)
        if ports:
            self.kernel.write_sysctls(FASTPATH_SYSCTLS)
        dp.set_published(ports)
        # routed and overlay networks' cross-host packets arrive through the uplinks too
        # (bpf/routed.h, bpf/tunnel.h)
        cross_host = any(NetworkConfig.from_json(r.config).driver in ("routed", "overlay")
                         for r in self.rt.store.networks())
        dp.set_uplinks(self._uplinks(plan) if ports or cross_host else {})

    def _fast_ports(self, plan: ruleset.Plan) -> list[PublishedPort]:
        """One entry per published mapping and family; slots kept from the map (a mapping keeps
        its counters), new mappings get slots no entry had (freed ones are zeroed first)."""
        had: dict[PortKey, int] = {(p.proto, p.host_ip, p.host_port): p.slot for p in self.rt.datapath.published()}
        free = (s for s in range(MAX_PUBLISHED) if s not in set(had.values()))
        out: list[PublishedPort] = []
        for pub in plan.published:
            m = pub.mapping
            ep = self.rt.store.endpoint(pub.endpoint)
            if ep is None:
                continue
            key: PortKey = (m.proto, m.host_ip, m.host_port)
            slot = had.get(key)
            if slot is None:
                slot = next(free, None)
                if slot is None:
                    log.warning("--publish %s: more than %d published ports, this one takes the kernel's "
                                "path only", m, MAX_PUBLISHED)
                    continue
                had[key] = slot
            for fam, addr in ((4, pub.ipv4), (6, pub.ipv6)):
                if addr is not None and fam in m.families:
                    out.append(PublishedPort(m.proto, fam, m.host_port, addr, m.endpoint_port, ep.id, slot,
                                             m.host_ip))
        return out

    def _uplinks(self, plan: ruleset.Plan) -> dict[int, str]:
        """--uplink's interfaces, or every interface with an address that is not a bpfnet bridge."""
        links = self.kernel.links()
        by_name = {name: index for index, name in links.items()}
        if self.settings.uplinks:
            missing = [n for n in self.settings.uplinks if n not in by_name]
            if missing:
                log.warning("--uplink %s: no such interface in the managed namespace (yet)", ", ".join(missing))
            return {by_name[n]: n for n in self.settings.uplinks if n in by_name}
        bridges = {n.bridge for n in plan.networks}
        return {i: links[i] for i in sorted(self.kernel.addressed_links())
                if i in links and links[i] != "lo" and links[i] not in bridges}

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
        """--cleanup: delete bpfnet's table (nothing else is touched; the datapath's cleanup
        removes uplink_ingress with every other program). False if there was none."""
        try:
            return self.kernel.delete_table()
        except NftError as exc:
            log.warning("%s", exc.message)
            return False

    # metrics ------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Per published port and per network, read from the table's named counters now."""
        raw = self.kernel.counters()
        slots: dict[PortKey, int] = {}
        fast: dict[int, dict[str, int]] = {}
        if self.fastpath:
            slots = {(p.proto, p.host_ip, p.host_port): p.slot for p in self.rt.datapath.published()}
            fast = self.rt.datapath.published_counters()
        ports = []
        for endpoint, m in map(_mapping, self.rt.store.published_ports()):
            row = self.rt.store.endpoint(endpoint)
            c = {w: raw.get(ruleset.port_counter(m, w), (0, 0)) for w in ("in", "out", "conn")}
            slot = slots.get((m.proto, m.host_ip, m.host_port))
            f = fast.get(slot, {}) if slot is not None else {}
            ports.append({"endpoint": endpoint, "network": row.network if row else "", **m.to_json(),
                          "in_packets": c["in"][0] + f.get("in_packets", 0),
                          "in_bytes": c["in"][1] + f.get("in_bytes", 0),
                          "out_packets": c["out"][0] + f.get("out_packets", 0),
                          "out_bytes": c["out"][1] + f.get("out_bytes", 0), "connections": c["conn"][0],
                          "fast_in_packets": f.get("in_packets", 0), "fast_out_packets": f.get("out_packets", 0)})
        masq = []
        for net in self.rt.store.networks():
            names = {d: ruleset.masq_counter(net.id, d) for d in ruleset.DIRECTIONS}
            if names["out"] in raw:
                masq.append({"network": net.name, "out_bytes": raw[names["out"]][1],
                             "out_packets": raw[names["out"]][0], "in_bytes": raw[names["in"]][1],
                             "in_packets": raw[names["in"]][0]})
        return {"ports": ports, "masquerade": masq}
