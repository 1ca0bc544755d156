"""The routed driver: one subnet for the cluster, a block of it per node, routes between nodes,
no encapsulation (flannel's host-gw, Cilium's native routing).

Boundary: on every node that creates the network (the same name and settings on each; the
cluster store refuses different ones), this driver claims the node's block of the subnet from
etcd (``bpfnet.cluster.blocks``: /24 and /80 by default, ``--host-prefix``), serves it on a local
bridge exactly as the bridge driver does (the endpoints' addresses come from the block, their
gateway is its first address), and keeps one route per other node's block via that node's
``--advertise-addr`` (IPv6 blocks via its link-local address on the uplink), marked with
bpfnet's routing protocol number (``bpfnet.routes.PROTO``). A sync thread, every second, adds the
routes of new blocks and removes those of blocks whose node is no longer alive (its lease
expired), re-claims this node's blocks after a restart, and gives up claims of networks this
node no longer has. Next hops that are not on a connected subnet (hosts without a shared link)
are refused by the kernel: the driver reports them (``network inspect``: ``unreachable``) and
logs them; such hosts need a router that knows the blocks, or an overlay network.

Cross-host packets take the kernel's path (bridge, routing, uplink); the datapath's eBPF bypass
(``bpf_redirect_neigh`` to the uplink) is not built yet.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from ipaddress import IPv4Address, ip_network
from typing import Any

from ..cluster.blocks import (
    DEFAULT_HOST_PREFIX4,
    DEFAULT_HOST_PREFIX6,
    Block,
    BlockStore,
    IPNet,
    check_host_prefix,
)
from ..config import NetworkConfig, parse_v4_network, parse_v6_network
from ..errors import BpfnetError, Conflict, InvalidArgument
from ..rollback import Rollback
from ..routes import NotAdjacent
from ..runtime import Runtime
from .bridge import BridgeDriver

log = logging.getLogger(__name__)
SYNC_INTERVAL = 1.0  # seconds between two looks at the cluster's blocks


class RoutedDriver(BridgeDriver):
    name = "routed"

    def __init__(self, rt: Runtime, blocks: BlockStore | None, advertise: IPv4Address | None) -> None:
        super().__init__(rt)
        self.blocks = blocks
        self.advertise = advertise
        self.unreachable: dict[str, dict[str, str]] = {}  # network -> {block: why}
        self.syncs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._uplink: tuple[int, str] | None = None

    def _store(self) -> BlockStore:
        if self.blocks is None or self.advertise is None:
            raise InvalidArgument("the routed driver needs the cluster store: start the daemon with --cluster-store "
                                  "and --advertise-addr")
        return self.blocks

    # -- the uplink --------------------------------------------------------------------------
    def uplink(self) -> tuple[int, str]:
        """(ifindex, IPv6 link-local address) of the link holding --advertise-addr. The last one
        found is asked first: one request per sync, not one per link (a host has a veth per
        endpoint)."""
        if self._uplink is not None:
            addrs = [a for a, _ in self.rt.kernel.link_addresses(self._uplink[0])]
            if str(self.advertise) in addrs:
                return self._uplink[0], next((a for a in addrs if a.startswith("fe80:")), "")
        for link in self.rt.kernel.dump_links():
            addrs = [a for a, _ in self.rt.kernel.link_addresses(link.index)]
            if str(self.advertise) in addrs:
                self._uplink = (link.index, next((a for a in addrs if a.startswith("fe80:")), ""))
                return self._uplink
        self._uplink = None
        raise InvalidArgument(f"--advertise-addr {self.advertise} is not an address of this host's managed namespace: "
                              "other nodes route this node's blocks to it")

    # -- networks ----------------------------------------------------------------------------
    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        store = self._store()
        name = str(data.get("name"))
        if not data.get("subnet4"):
            raise InvalidArgument("a routed network needs --subnet: the cluster's subnet, cut into one block per node")
        if data.get("ipv6") and not data.get("subnet6"):
            raise InvalidArgument("a routed network with IPv6 needs --subnet6: the cluster's IPv6 subnet")
        subnet4 = parse_v4_network(data["subnet4"], "subnet")
        prefix4 = int(data.get("host_prefix") or DEFAULT_HOST_PREFIX4)
        check_host_prefix(subnet4, prefix4)
        subnet6 = parse_v6_network(data["subnet6"], "IPv6 subnet") if data.get("subnet6") else None
        for key, what, subnet in (("gateway4", "--gateway", subnet4), ("ip_range4", "--ip-range", None),
                                  ("gateway6", "--gateway6", subnet6), ("ip_range6", "--ip-range6", None)):
            # (the API's validation fills in a gateway: the subnet's first address, which is allowed)
            if data.get(key) is not None and not (subnet is not None and data[key] == str(subnet[1])):
                raise InvalidArgument(f"a routed network takes no {what}: each node's gateway is the first address "
                                      "of its block")
        prefix6 = int(data.get("host_prefix6") or DEFAULT_HOST_PREFIX6)
        if subnet6 is not None:
            check_host_prefix(subnet6, prefix6)
        shared = {"subnet4": str(subnet4), "host_prefix": prefix4, "subnet6": str(subnet6) if subnet6 else None,
                  "host_prefix6": prefix6 if subnet6 else None, "mtu": data.get("mtu", 1500)}
        store.ensure_config(name, shared)
        _, link_local = self.uplink()
        # The claims outlive a create that fails after this point; the sync thread gives up the
        # claims of networks this node does not have (within SYNC_INTERVAL).
        block4 = store.claim(name, subnet4, prefix4, str(self.advertise), link_local)
        out = {**data, "subnet4": str(block4), "gateway4": str(block4[1]), "cluster_subnet4": str(subnet4),
               "host_prefix": prefix4}
        if subnet6 is not None:
            block6 = store.claim(name, subnet6, prefix6, str(self.advertise), link_local)
            out.update(subnet6=str(block6), gateway6=str(block6[1]), cluster_subnet6=str(subnet6),
                       host_prefix6=prefix6, ipv6=True)
        log.info("routed network %s: this node's block %s%s of %s", name, block4,
                 f" and {out['subnet6']}" if subnet6 else "", subnet4)
        return out

    def check_network(self, cfg: NetworkConfig) -> None:
        for row in self.rt.store.networks():
            other = NetworkConfig.from_json(row.config)
            if other.driver != self.name or other.name == cfg.name:
                continue
            for a, b in ((cfg.cluster_subnet4, other.cluster_subnet4), (cfg.cluster_subnet6, other.cluster_subnet6)):
                if a is not None and b is not None and a.overlaps(b):
                    raise Conflict(f"routed subnet {a} overlaps network {other.name}'s subnet {b}")

    def _mine(self, cfg: NetworkConfig) -> list[IPNet]:
        return [cfg.subnet4] + ([cfg.subnet6] if cfg.subnet6 is not None else [])

    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        store = self._store()
        for block in self._mine(cfg):
            rb.push(f"block {block} in the cluster store", partial(store.release, cfg.name, block))
        owned = super().create_network(cfg, network_id, rb)
        if self.rt.ip_forward and cfg.ipv6:
            self.rt.kernel.write_sysctls({"net/ipv6/conf/all/forwarding": "1"})
        return owned

    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        self.unreachable.pop(cfg.name, None)
        for dst in self._routes_of(cfg, self.rt.kernel.own_routes()):
            self.rt.kernel.delete_own_route(dst)
        super().delete_network(cfg, network_id)
        if self.blocks is not None:
            for block in self._mine(cfg):
                self.blocks.release(cfg.name, block)
            self.blocks.drop_config(cfg.name)

    def describe(self, cfg: NetworkConfig) -> dict[str, Any]:
        routes = self._routes_of(cfg, self.rt.kernel.own_routes())
        return {"cluster_subnet4": str(cfg.cluster_subnet4), "host_prefix": cfg.host_prefix,
                "cluster_subnet6": str(cfg.cluster_subnet6) if cfg.cluster_subnet6 else None,
                "host_prefix6": cfg.host_prefix6, "block4": str(cfg.subnet4),
                "block6": str(cfg.subnet6) if cfg.subnet6 else None,
                "routes": dict(sorted(routes.items())), "unreachable": self.unreachable.get(cfg.name, {})}

    @staticmethod
    def _routes_of(cfg: NetworkConfig, routes: dict[str, str]) -> dict[str, str]:
        """The routes (of bpfnet's own) into CFG's cluster subnets."""
        subnets = [s for s in (cfg.cluster_subnet4, cfg.cluster_subnet6) if s is not None]
        out = {}
        for dst, gateway in routes.items():
            net = ip_network(dst)
            if any(net.version == s.version and net.subnet_of(s) for s in subnets):  # type: ignore[arg-type]
                out[dst] = gateway
        return out

    # -- the cluster -------------------------------------------------------------------------
    def start(self) -> None:
        if self.blocks is None:
            return
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="routed-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(SYNC_INTERVAL):
            try:
                self.sync()
            except BpfnetError as exc:
                log.debug("routed: sync skipped: %s", exc.message)  # e.g. etcd away: routes stay
            except Exception:
                log.exception("routed: sync failed")

    def _configs(self) -> dict[str, NetworkConfig]:
        out = {}
        for row in self.rt.store.networks():
            cfg = NetworkConfig.from_json(row.config)
            if cfg.driver == self.name:
                out[cfg.name] = cfg
        return out

    def sync(self) -> None:
        """One pass: this node's claims, then the routes to the other nodes' blocks."""
        store = self._store()
        self.syncs += 1
        everything = store.all_blocks()
        alive = store.alive()
        with self.rt.lock:
            local = self._configs()
            uplink, link_local = self.uplink()
            for network, blocks in everything.items():  # claims of networks this node no longer has
                if network not in local:
                    for b in blocks:
                        if b.node == store.node:
                            log.info("routed: giving up block %s of network %s (not on this node)", b.network, network)
                            store.release(network, b.network)
                    store.drop_config(network)  # when no node holds a block of it any more
            have = self.rt.kernel.own_routes()
            for cfg in local.values():
                blocks = everything.get(cfg.name, [])
                self._reclaim(store, cfg, blocks, link_local)
                want: dict[str, tuple[str, int | None]] = {}
                for b in blocks:
                    if b.node == store.node or b.node not in alive:
                        continue
                    if b.network.version == 4:
                        want[str(b.network)] = (b.address, None)
                    elif b.link_local:
                        want[str(b.network)] = (b.link_local, uplink)
                self._apply(cfg, want, self._routes_of(cfg, have))

    def _reclaim(self, store: BlockStore, cfg: NetworkConfig, blocks: list[Block], link_local: str) -> None:
        """After a restart (or etcd lost the key): this node's blocks are claimed again."""
        held = {b.network: b.node for b in blocks}
        for block, subnet, prefix in ((cfg.subnet4, cfg.cluster_subnet4, cfg.host_prefix),
                                      (cfg.subnet6, cfg.cluster_subnet6, cfg.host_prefix6)):
            if block is None or subnet is None or prefix is None or held.get(block) == store.node:
                continue
            got = store.claim(cfg.name, subnet, prefix, str(self.advertise), link_local, preferred=block)
            if got != block:
                store.release(cfg.name, got)
                log.error("routed network %s: this node's block %s is held by node %s now; remove and create the "
                          "network again on this node", cfg.name, block, held.get(block))
            else:
                log.info("routed network %s: claimed this node's block %s again", cfg.name, block)

    def _apply(self, cfg: NetworkConfig, want: dict[str, tuple[str, int | None]], have: dict[str, str]) -> None:
        unreachable: dict[str, str] = {}
        for dst, (gateway, oif) in want.items():
            if have.get(dst) == gateway:
                continue
            try:
                self.rt.kernel.replace_own_route(dst, gateway, oif)
                log.info("routed network %s: route %s via %s", cfg.name, dst, gateway)
            except NotAdjacent as exc:
                unreachable[dst] = str(exc)
                if dst not in self.unreachable.get(cfg.name, {}):
                    log.error("routed network %s: %s: the nodes share no link; they need a router that knows the "
                              "blocks, or an overlay network", cfg.name, exc)
        for dst in have:
            if dst not in want:
                self.rt.kernel.delete_own_route(dst)
                log.info("routed network %s: route %s removed (its node is gone)", cfg.name, dst)
        self.unreachable[cfg.name] = unreachable

