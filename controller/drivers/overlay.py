"""The overlay driver: one subnet stretched over every host of a cluster, VXLAN between hosts.

Boundary: what an overlay network is on this host and in the cluster store. On this host it is
a bridge network like any other (``BridgeDriver``: the local endpoints' veths, the gateway, the
local fast path), plus one collect-metadata VXLAN device for all overlay networks
(``bpfnet_vx``, UDP 4789) and the datapath's remote endpoint table, which this driver keeps equal
to what the cluster store says (``sync``). In the store (``bpfnet.cluster``): the network (its
config and VNI, created by one transaction that refuses a VNI in use or an overlapping subnet),
each endpoint's address leases and record (node, addresses, MAC, VTEP).

Who does what when:
- ``network create --driver overlay`` on any host stores the network; every other host's watch
  sees it and creates it locally (``ClusterNetworks.adopt``); ``network rm`` removes it from the
  store (refused while any host has endpoints on it) and every host forgets it.
- ``endpoint add`` leases its addresses in the store before anything is made on the host
  (``reserved`` reads the cluster's leases; ``create_endpoint`` claims them in one transaction);
  the other hosts' watches add it to their datapath's remote table.
- A host's lease expiring removes its endpoints from the others' tables (``ClusterView.remote``
  lists only live nodes); its records stay in the store, so a restarted host reconciles.
- IPv6 neighbour discovery for remote addresses: a proxy entry on the network's bridge per
  remote IPv6 address (the kernel answers with the bridge's MAC); ARP: bpf/tunnel.h answers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any, Protocol, TypeVar

from ..cluster.model import ClusterEndpoint, ClusterView, pick_vni
from ..cluster.store import EtcdStore
from ..config import NetworkConfig, random_ula_prefix
from ..errors import BpfnetError, Conflict, Exhausted, InvalidArgument, StoreUnavailable
from ..model import RemoteEndpointSpec
from ..rollback import Rollback
from ..runtime import Runtime
from ..state import EndpointRow
from .bridge import BridgeDriver
from .interface import AddressTaken, EndpointAddresses

log = logging.getLogger(__name__)
VXLAN_DEVICE = "bpfnet_vx"
VXLAN_PORT = 4789  # IANA's VXLAN port, as Docker's overlay and Cilium use
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


class ClusterNetworks(Protocol):
    """What the network service does for the driver when the cluster changes."""

    def adopt_cluster_network(self, config: dict[str, Any]) -> None:
        """Make a network another host created (its config as stored) on this host."""

    def forget_cluster_network(self, name: str) -> None:
        """Remove a network the cluster no longer has from this host."""

    def taken_subnets(self, version: int) -> list[IPv4Network | IPv6Network]:
        """This host's networks, routes and addresses of that family (a new subnet avoids them)."""


@dataclass(frozen=True)
class _Remote:
    spec: RemoteEndpointSpec
    bridge: str  # the local bridge of its network: where its IPv6 proxy entries go


OVERLAY_POOL4 = IPv4Network("10.0.0.0/8")  # Docker swarm's default address pool for overlay networks
OVERLAY_SUBNET_PREFIXLEN4 = 24


Net = TypeVar("Net", IPv4Network, IPv6Network)


def _first_free(candidates: Iterator[Net], taken: Sequence[Net]) -> Net | None:
    """The first of CANDIDATES (in order) that overlaps nothing in TAKEN."""
    for subnet in candidates:
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    return None


def overlaps(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    na, nb = ip_network(a), ip_network(b)
    return na.version == nb.version and na.overlaps(nb)


class OverlayDriver(BridgeDriver):
    name = "overlay"
    scope = "global"

    def __init__(self, rt: Runtime, cluster: EtcdStore, advertise: IPv4Address, node: str,
                 native: bool = True) -> None:
        super().__init__(rt)
        self.cluster = cluster
        self.advertise = advertise
        self.node = node
        self.native = native  # --overlay-encap native: the programs encapsulate (bpf/tunnel.h)
        self.networks: ClusterNetworks | None = None  # set by the daemon (the network service)
        self.vx_ifindex = 0
        self._remotes: dict[tuple[str, str], _Remote] = {}  # (network, address) -> programmed
        self._adopting: set[str] = set()
        self._forgetting: set[str] = set()
        # Networks a view has shown: only those are forgotten when a view no longer has them. A
        # sync may run with a view older than a network this host has just created (the watch
        # thread waits for the lock the create holds before it can apply the create's event).
        self._seen: set[str] = set()
        self._mine_checked = -1  # the store's resync count when this node's records were last checked
        self.syncs = 0

    # -- the underlay ------------------------------------------------------------------------
    def underlay_ifindex(self) -> int:
        """The link holding --advertise-addr (0 when not found)."""
        for link in self.rt.kernel.dump_links():
            if any(a == str(self.advertise) for a, _ in self.rt.kernel.link_addresses(link.index)):
                return link.index
        return 0

    def uplink_mtu(self) -> int:
        """The MTU of the link holding --advertise-addr (1500 when not found)."""
        index = self.underlay_ifindex()
        return (self.rt.kernel.link_mtu(index) or 1500) if index else 1500

    def check_underlay(self) -> None:
        if not self.underlay_ifindex():
            raise InvalidArgument(f"--advertise-addr {self.advertise} is not an address of this host's managed "
                                  "namespace: other hosts send VXLAN packets to it")

    # -- networks ----------------------------------------------------------------------------
    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("name") in self._adopting:
            return data  # as stored by the host that made it
        data = dict(data)
        if not data.get("subnet4") or (data.get("ipv6") and not data.get("subnet6")):
            self._pick_subnets(data)
        if data.get("vni") is None:
            data["vni"] = pick_vni(self.cluster.taken_vnis())
        data.setdefault("mtu", self.uplink_mtu() - VXLAN_OVERHEAD)
        return data

    def _pick_subnets(self, data: dict[str, Any]) -> None:
        """Subnets for an overlay network created without them, as Docker's swarm does: IPv4 the
        first /24 of 10.0.0.0/8, IPv6 the first /64 of the cluster's ULA /48, that overlaps no
        network of the cluster and nothing of this host. The store's transaction then refuses
        the network if another node took the subnet meanwhile."""
        if (data.get("gateway4") or data.get("ip_range4")) and not data.get("subnet4"):
            raise InvalidArgument("gateway4 and ip_range4 need subnet4")
        if self.networks is None:
            raise InvalidArgument("an overlay network needs --subnet here")
        cluster = [c.get(k) for c in self.cluster.networks().values() for k in ("subnet4", "subnet6")]
        name = data.get("name")
        if not data.get("subnet4"):
            taken4 = [*(n for n in self.networks.taken_subnets(4) if isinstance(n, IPv4Network)),
                      *(IPv4Network(c) for c in cluster if c and ":" not in c)]
            subnet4 = _first_free(OVERLAY_POOL4.subnets(new_prefix=OVERLAY_SUBNET_PREFIXLEN4), taken4)
            if subnet4 is None:
                raise Exhausted(f"every /{OVERLAY_SUBNET_PREFIXLEN4} of the overlay pool {OVERLAY_POOL4} overlaps a "
                                "network of the cluster or of this host; pass --subnet")
            data.update(subnet4=str(subnet4), subnet_source=f"cluster pool {OVERLAY_POOL4}")
            log.info("overlay: network %s: picked %s from the cluster pool %s", name, subnet4, OVERLAY_POOL4)
        if data.get("ipv6") and not data.get("subnet6"):
            prefix = IPv6Network(self.cluster.claim_ula_prefix(str(random_ula_prefix())))
            taken6 = [*(n for n in self.networks.taken_subnets(6) if isinstance(n, IPv6Network)),
                      *(IPv6Network(c) for c in cluster if c and ":" in c)]
            subnet6 = _first_free(prefix.subnets(new_prefix=64), taken6)
            if subnet6 is None:
                raise Exhausted(f"every /64 of the cluster's IPv6 prefix {prefix} is taken; pass --subnet6")
            data.update(subnet6=str(subnet6), subnet6_source=f"cluster ula {prefix}")
            log.info("overlay: network %s: picked %s from the cluster's IPv6 prefix %s", name, subnet6, prefix)

    def check_network(self, cfg: NetworkConfig) -> None:
        limit = self.uplink_mtu() - VXLAN_OVERHEAD
        if cfg.mtu > limit:
            raise InvalidArgument(f"mtu {cfg.mtu}: an overlay network's MTU must leave room for VXLAN "
                                  f"({VXLAN_OVERHEAD} bytes): at most {limit} on this uplink")
        if cfg.vni is None:
            raise InvalidArgument("an overlay network needs a VNI")

    def _clash(self, cfg: NetworkConfig, networks: dict[str, dict[str, Any]]) -> None:
        for name, other in networks.items():
            if name == cfg.name:
                raise Conflict(f"network {cfg.name!r} already exists in the cluster")
            for mine in (str(cfg.subnet4), str(cfg.subnet6) if cfg.subnet6 else None):
                for theirs in (other.get("subnet4"), other.get("subnet6")):
                    if overlaps(mine, theirs):
                        raise Conflict(f"subnet {mine} overlaps network {name}'s subnet {theirs} in the cluster")

    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        if cfg.name not in self._adopting:
            assert cfg.vni is not None
            stored = {k: v for k, v in cfg.to_json().items() if k not in ("owned", "subnet_source", "subnet6_source")}
            self.cluster.create_network(cfg.name, stored, cfg.vni, lambda nets: self._clash(cfg, nets))
            rb.push(f"network {cfg.name} in the cluster store",
                    lambda: self.cluster.delete_network(cfg.name, cfg.vni or 0))
        owned = super().create_network(cfg, network_id, rb)
        self._overlay_sysctls(cfg)
        return owned

    def restore_network(self, cfg: NetworkConfig, network_id: int) -> dict[str, Any]:
        owned = super().restore_network(cfg, network_id)
        self._overlay_sysctls(cfg)
        return owned

    def _overlay_sysctls(self, cfg: NetworkConfig) -> None:
        if cfg.ipv6:
            # The kernel answers neighbour solicitations for remote endpoints (proxy entries on the
            # bridge, see sync) at once, not after a random proxy_delay of up to 0.8 s.
            self.rt.kernel.write_sysctls({f"net/ipv6/conf/{cfg.bridge}/proxy_ndp": "1",
                                          f"net/ipv6/neigh/{cfg.bridge}/proxy_delay": "0"})

    def prepare_delete_network(self, cfg: NetworkConfig) -> None:
        if cfg.name in self._forgetting:
            return  # the cluster removed it already
        self.cluster.delete_network(cfg.name, cfg.vni or 0)

    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        for key in [k for k in self._remotes if k[0] == cfg.name]:
            self._unprogram(key)
        self._seen.discard(cfg.name)  # a network of this name made again is new to the views
        super().delete_network(cfg, network_id)

    # -- endpoints ---------------------------------------------------------------------------
    def reserved(self, cfg: NetworkConfig) -> set[str]:
        return self.cluster.leased(cfg.name)

    def _record(self, cfg: NetworkConfig, row: EndpointRow, v4: IPv4Address,
                v6: tuple[IPv6Address, ...]) -> ClusterEndpoint:
        return ClusterEndpoint(network=cfg.name, node=self.node, name=row.name, ipv4=v4, mac=row.mac,
                               vtep=self.advertise, ipv6=v6)

    def create_endpoint(self, cfg: NetworkConfig, row: EndpointRow, addrs: EndpointAddresses,
                        rb: Rollback) -> None:
        ep = self._record(cfg, row, addrs.ipv4, addrs.ipv6)
        if not self.cluster.claim_endpoint(ep):
            raise AddressTaken(f"an address of endpoint {row.name!r} ({', '.join(ep.addresses)}) was leased by "
                               "another host meanwhile")
        rb.push(f"endpoint {row.name} in the cluster store", lambda: self.cluster.release_endpoint(ep))

    def delete_endpoint(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        record = self._local_record(cfg, row)
        if record is not None:
            self.cluster.release_endpoint(record)

    def _local_record(self, cfg: NetworkConfig, row: EndpointRow) -> ClusterEndpoint | None:
        leases = self.rt.store.endpoint_leases(row.name)
        v4 = [IPv4Address(lease.address) for lease in leases if lease.family == 4]
        if not v4:
            return None
        v6 = tuple(IPv6Address(lease.address) for lease in leases if lease.family == 6)
        return self._record(cfg, row, v4[0], v6)

    # -- the cluster -------------------------------------------------------------------------
    def start(self) -> None:
        self.check_underlay()
        mtu = self.uplink_mtu()
        self.vx_ifindex, created = self.rt.kernel.ensure_vxlan(VXLAN_DEVICE, VXLAN_PORT, mtu)
        if created:
            log.info("overlay: made %s (external, UDP %d, ifindex %d)", VXLAN_DEVICE, VXLAN_PORT, self.vx_ifindex)
        if self.native:
            # the programs encapsulate towards the route to each VTEP; receiving natively needs
            # uplink_ingress on the underlay, which the outside service attaches (it owns uplinks)
            self.rt.datapath.set_tunnel(self.vx_ifindex, self.advertise, self.underlay_ifindex())
        else:
            self.rt.datapath.set_tunnel(self.vx_ifindex)
        self.sync(self.cluster.view, resync=True)
        self.cluster.start(lambda view: self.sync(view))

    def stop(self) -> None:
        self.cluster.stop()

    def _overlay_configs(self) -> dict[str, tuple[int, NetworkConfig]]:
        out = {}
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            if cfg.driver == self.name:
                out[row.name] = (row.id, cfg)
        return out

    def sync(self, view: ClusterView, resync: bool = False) -> None:
        """Bring this host in step with VIEW: networks, this node's records, the remote table."""
        with self.rt.lock:
            self.syncs += 1
            self._sync_networks(view, resync)
            local = self._overlay_configs()
            if self.cluster.resyncs != self._mine_checked:
                # Only after a whole read (start, etcd back): in between, endpoint add and rm keep
                # the records in step themselves, and a view behind them must not undo that.
                self._sync_mine(view, local)
            self._sync_remotes(view, local)

    def _sync_networks(self, view: ClusterView, resync: bool) -> None:
        """RESYNC (at start, nothing created meanwhile): the view is the whole truth; otherwise a
        network is forgotten only once a view has shown it and a later one does not."""
        local = self._overlay_configs()
        self._seen |= set(view.networks)
        for name, stored in sorted(view.networks.items()):
            if name in local or self.networks is None:
                continue
            if self.rt.store.network(name) is not None:
                log.error("overlay network %s of the cluster clashes with this host's network of that name", name)
                continue
            self._adopting.add(name)
            try:
                self.networks.adopt_cluster_network(stored)
                log.info("overlay: network %s (VNI %s) joined from the cluster", name, stored.get("vni"))
            except BpfnetError as exc:
                log.error("overlay: cannot make the cluster's network %s on this host: %s", name, exc.message)
            finally:
                self._adopting.discard(name)
        if not self.cluster.connected:
            return  # an unreachable store says nothing about what was removed
        for name in local:
            if name in view.networks or self.networks is None or not (resync or name in self._seen):
                continue
            if self.rt.store.endpoints(name):
                log.warning("overlay: network %s is gone from the cluster but has endpoints here; kept", name)
                continue
            self._forgetting.add(name)
            try:
                self.networks.forget_cluster_network(name)
                self._seen.discard(name)
                log.info("overlay: network %s removed from the cluster: removed here", name)
            except BpfnetError as exc:
                log.error("overlay: cannot remove network %s: %s", name, exc.message)
            finally:
                self._forgetting.discard(name)

    def _sync_mine(self, view: ClusterView, local: dict[str, tuple[int, NetworkConfig]]) -> None:
        """The store's records of this node's endpoints equal what this host has."""
        if not self.cluster.connected:
            return
        resyncs = self.cluster.resyncs
        mine = view.mine(self.node)
        have: dict[str, ClusterEndpoint] = {}
        rows = {}
        for name, (_, cfg) in local.items():
            for row in self.rt.store.endpoints(name):
                rows[row.name] = row
                if row.state == "ready" and (record := self._local_record(cfg, row)) is not None:
                    have[record.key] = record
        try:
            for key, record in mine.items():
                if key not in have and record.name not in rows:
                    log.info("overlay: endpoint %s of this node is gone: removing it from the cluster", record.name)
                    self.cluster.release_endpoint(record)
            for key, record in have.items():
                if mine.get(key) != record:
                    log.info("overlay: endpoint %s is missing from the cluster: storing it again", record.name)
                    if self.cluster.claim_endpoint(record):
                        continue
                    if self.cluster.owns_leases(record):
                        self.cluster.put_endpoint(record)  # its leases are there already (its own)
                    else:  # `node rm` forgot this node, and its address went to another endpoint since
                        log.error("overlay: endpoint %s: an address of it (%s) is leased to another endpoint "
                                  "of the cluster now; not stored again: remove it", record.name,
                                  ", ".join(record.addresses))
            self._mine_checked = resyncs
        except StoreUnavailable:
            pass  # the next sync after the store is back does it

    def _sync_remotes(self, view: ClusterView, local: dict[str, tuple[int, NetworkConfig]]) -> None:
        want: dict[tuple[str, str], _Remote] = {}
        for e in view.remote(self.node).values():
            if e.network not in local:
                continue
            net_id, cfg = local[e.network]
            spec = RemoteEndpointSpec(net_id, e.ipv4, e.mac, e.vtep, e.ipv6)
            for a in e.addresses:
                want[(e.network, a)] = _Remote(spec, cfg.bridge)
        for key in [k for k in self._remotes if want.get(k) != self._remotes[k]]:
            self._unprogram(key)
        for key, remote in want.items():
            if key in self._remotes:
                continue
            self.rt.datapath.add_remote(remote.spec)
            if ":" in key[1]:
                index = self.rt.kernel.link_index(remote.bridge)
                if index is not None:
                    self.rt.kernel.ensure_proxy_neighbour(index, IPv6Address(key[1]))
            self._remotes[key] = remote

    def _unprogram(self, key: tuple[str, str]) -> None:
        remote = self._remotes.pop(key)
        if not any(r.spec == remote.spec for r in self._remotes.values()):
            self.rt.datapath.remove_remote(remote.spec)
        if ":" in key[1]:
            index = self.rt.kernel.link_index(remote.bridge)
            if index is not None:
                self.rt.kernel.remove_proxy_neighbour(index, IPv6Address(key[1]))

    # -- what users see ----------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's nodes: registered ones (alive) and those that own endpoints but whose
        lease expired (down)."""
        alive = self.cluster.nodes()
        names = {n["name"] for n in alive}
        view = self.cluster.view
        down = sorted({e.node for e in view.endpoints.values()} - names)
        counts: dict[str, int] = {}
        for e in view.endpoints.values():
            counts[e.node] = counts.get(e.node, 0) + 1
        out = [{**n, "endpoints": counts.get(n["name"], 0)} for n in alive]
        out += [{"name": n, "address": next((str(e.vtep) for e in view.endpoints.values() if e.node == n), None),
                 "started": None, "state": "down", "self": False, "endpoints": counts.get(n, 0)} for n in down]
        return out

    def remove_node(self, name: str) -> None:
        """``node rm``: forget a node that is gone for good (see EtcdStore.remove_node); the
        watch then takes its endpoints out of every host's view."""
        if name == self.node:
            raise Conflict(f"node {name!r} is this daemon's own node")
        self.cluster.remove_node(name)

    def describe(self, cfg: NetworkConfig) -> dict[str, Any]:
        remote = sum(1 for e in self.cluster.view.remote(self.node).values() if e.network == cfg.name)
        return {"vni": cfg.vni, "vxlan_device": VXLAN_DEVICE, "remote_endpoints": remote,
                "cluster_store": self.cluster.url, "node": self.node}
