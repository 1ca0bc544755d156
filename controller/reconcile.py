"""Start-up reconcile: bring kernel, datapath and state in step, as the CNI bridge plugin's CHECK does.

Boundary: policy only, over the services and ``Runtime.kernel``. Order matters:
bridges first (programs attach to them), then the datapath adopts its pinned
maps and replaces its programs in place for every live endpoint, then each
endpoint is checked (half-made or vanished ones are torn down, which removes
their map entries; differences in ready ones are repaired), then the default
network follows the flags (which may attach a new bridge program), then the
NDP proxy entries. Each difference is logged and reported to the observer
(``reconcile_repair(kind)``); what cannot be repaired is ``reconcile_error``.

Kinds of repair: "master" (host veth not on its network's bridge), "link_up"
(host veth down), "mac", "eth0_up", "address", "route" (eth0 inside the
namespace), "datapath_entries", "datapath_filters", "proxy_neighbour".
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import replace
from typing import Any

from .config import NetworkConfig, migrate_stored_network
from .datapath.abi import ENDPOINT_DEVICES
from .endpoints import EndpointService, is_host_veth_name
from .errors import BpfnetError, InvalidArgument
from .model import InterfaceState, LinkState
from .ndp import sync_proxy_neighbours
from .networks import NetworkService
from .runtime import Runtime
from .state import EndpointRow, StateError

log = logging.getLogger(__name__)


def reconcile_all(rt: Runtime, networks: NetworkService, endpoints: EndpointService,
                  default_network: dict[str, Any] | None, delete_leaks: bool = True) -> dict[str, int]:
    """Everything a starting daemon does before it serves (see the module docstring).
    DELETE_LEAKS False (``--reconcile=adopt``): veths the state does not know stay.
    Stored rows are already in this version's form (``migrate_stored_networks`` runs first)."""
    for row in rt.store.networks():
        networks.ensure_present(row)
    nets = networks.datapath_specs()
    live = [spec for spec in endpoints.specs() if spec.host_ifindex]
    try:
        rt.datapath.start(nets, live)
    except Exception as exc:
        if "compile" not in str(exc).lower():
            raise
        raise BpfnetError(
            f"bcc could not compile bpf/ ({exc}): kernel headers for {platform.release()} are not "
            f"findable in /lib/modules/{platform.release()}/build; run scripts/setup, "
            "or pass --datapath bridge"
        ) from None
    stats = Reconciler(rt, networks, endpoints).endpoints(delete_leaks)
    networks.update_default(default_network)
    overlapping = networks.report_overlaps()
    stats["overlapping_networks"] = sum(1 for found in overlapping.values() if found)
    if rt.ndp_proxy_iface:
        stats["proxy_neighbours"] = sync_proxy_neighbours(rt)
    log.info("reconciled: %s; datapath mode %s", stats, rt.datapath.mode)
    return stats


def migrate_stored_networks(rt: Runtime) -> int:
    """Rows of networks stored by an earlier version that today's rules refuse: rewritten in the
    forms ``config.migrate_stored_network`` knows (each change logged), or a one-line StateError
    naming the network. Every other code path may then parse stored rows strictly."""
    migrated = 0
    for row in rt.store.networks():
        try:
            NetworkConfig.from_json(row.config)
            continue
        except InvalidArgument as exc:
            problem = exc.message
        data, changes = migrate_stored_network(row.config)
        try:
            NetworkConfig.from_json(data)
        except InvalidArgument as exc:
            raise StateError(f"network {row.name} in {rt.store.path} is not valid under this version's rules "
                             f"({exc.message if changes else problem}); restore it with a valid setting or "
                             "remove it from an earlier version") from None
        rt.store.update_network(row.name, data)
        for change in changes:
            log.warning("network %s, stored by an earlier version: %s", row.name, change)
        migrated += 1
    return migrated


class Reconciler:
    """Checks and repairs endpoints (usable at start-up and, under the lock, any time)."""

    def __init__(self, rt: Runtime, networks: NetworkService, endpoints: EndpointService) -> None:
        self.rt = rt
        self.networks = networks
        self.eps = endpoints

    def endpoints(self, delete_leaks: bool = True) -> dict[str, int]:
        """Finish or undo what a previous daemon left, CHECK the rest; returns counts per outcome."""
        rt = self.rt
        started = time.monotonic()
        stats = {"rolled_back": 0, "reclaimed": 0, "repaired": 0, "leaked_links": 0, "orphan_leases": 0}
        with rt.lock:
            by_name = {link.name: link for link in rt.kernel.dump_links()}
            for row in rt.store.endpoints():
                if row.state != "ready":
                    log.warning("endpoint %s was left in state %r by a previous daemon; rolling it back",
                                row.name, row.state)
                    outcome = "rolled_back"
                else:
                    try:
                        repairs = self.check(row, by_name.get(row.host_ifname))
                    except Exception:
                        log.exception("reconcile: could not check endpoint %s", row.name)
                        rt.observer.reconcile_error()
                        continue
                    if repairs is not None:
                        stats["repaired"] += bool(repairs)
                        continue
                    log.warning("endpoint %s lost its namespace, veth or eth0; reclaiming its addresses", row.name)
                    outcome = "reclaimed"
                try:
                    self.eps.teardown(row)
                    stats[outcome] += 1
                except Exception:
                    log.exception("reconcile: could not remove endpoint %s; will retry at next start", row.name)
                    rt.observer.reconcile_error()
            known = {r.host_ifname for r in rt.store.endpoints()}
            for link in rt.kernel.dump_links():
                if is_host_veth_name(link.name) and link.name not in known and link.kind in ENDPOINT_DEVICES:
                    if not delete_leaks:
                        log.warning("veth %s is not in the state; left in place (--reconcile=adopt)",
                                    link.name)
                        continue
                    log.warning("deleting leaked veth %s", link.name)
                    rt.kernel.delete_link(link.name)
                    stats["leaked_links"] += 1
            orphans = rt.store.remove_orphan_leases()
            for lease in orphans:
                log.warning("reclaimed lease %s on %s (endpoint %s is gone)", lease.address, lease.network,
                            lease.endpoint)
            stats["orphan_leases"] = len(orphans)
        log.info("checked %d endpoint(s) in %.2f s", len(known), time.monotonic() - started)
        return stats

    def check(self, row: EndpointRow, link: LinkState | None) -> list[str] | None:
        """CHECK one ready endpoint and repair what differs; the kinds repaired, or None
        when it cannot be repaired (namespace, host veth or eth0 gone: reclaim it)."""
        kernel = self.rt.kernel
        net_row, cfg = self.networks.config(row.network)
        driver = self.networks.drivers.get(cfg.driver)
        if not driver.host_side:
            return self._check_underlay(row, cfg, own_mac=driver.own_mac)
        if link is None or link.kind not in ENDPOINT_DEVICES:
            return None
        state = None
        if not row.handoff:  # a handed-off peer is the runtime's: only the host side is bpfnet's
            if not kernel.netns_exists(row.netns):
                return None
            state = kernel.interface_state(row.netns, row.ifname)
            if state is None:
                return None
        repairs: list[str] = []
        bridge = kernel.link_index(cfg.bridge)
        if bridge is not None and link.master != bridge:
            self._repair(row, "master", f"host veth {link.name} is not a port of bridge {cfg.bridge}")
            kernel.set_master(link.index, bridge)
            repairs.append("master")
        if not link.up:
            self._repair(row, "link_up", f"host veth {link.name} is down")
            kernel.set_up(link.index)
            repairs.append("link_up")
        if state is not None:
            repairs += self._check_inside(row, cfg, state)
        spec = self.eps.spec(row, cfg, net_row.id, host_ifindex=link.index, device=link.kind)
        missing = self.rt.datapath.check_endpoint(spec)
        if missing:
            for what in missing:
                self._repair(row, f"datapath_{what}", f"datapath {what} are not in place")
            self.rt.datapath.add_endpoint(spec)  # idempotent: rewrites entries, replaces filters
            repairs += [f"datapath_{what}" for what in missing]
        return repairs

    def _check_underlay(self, row: EndpointRow, cfg: NetworkConfig, own_mac: bool) -> list[str] | None:
        """An endpoint whose link hangs on a parent (macvlan, ipvlan): only its inside exists."""
        if row.handoff:
            return []  # the runtime's to configure and check
        if not self.rt.kernel.netns_exists(row.netns):
            return None
        state = self.rt.kernel.interface_state(row.netns, row.ifname)
        if state is None:
            return None
        return self._check_inside(row, cfg, state, own_mac)

    def _check_inside(self, row: EndpointRow, cfg: NetworkConfig, state: InterfaceState,
                      own_mac: bool = True) -> list[str]:
        """CHECK and repair the endpoint's interface inside its namespace; the kinds repaired."""
        kernel = self.rt.kernel
        v4, v6 = self.eps.addresses(row)
        want = self.eps.interface_config(cfg, v4, v6, ifname=row.ifname)
        inside: list[str] = []
        if own_mac and state.mac != row.mac:
            self._repair(row, "mac", f"{row.ifname} has MAC {state.mac}, not {row.mac}")
            inside.append("mac")
        if not state.up:
            self._repair(row, "eth0_up", f"{row.ifname} is down")
            inside.append("eth0_up")
        for a in want.addresses:
            if (str(a.address), a.prefixlen) not in state.addresses:
                self._repair(row, "address", f"address {a.address}/{a.prefixlen} is missing")
                inside.append("address")
        for r in want.routes:
            if str(r.gateway) not in state.gateways:
                self._repair(row, "route", f"default route via {r.gateway} is missing")
                inside.append("route")
        if inside:
            # Idempotent: re-applies the whole configuration; what is in place stays.
            kernel.configure_interface(row.netns, state.index,
                                       replace(want, mac=row.mac if "mac" in inside else None))
        return inside

    def _repair(self, row: EndpointRow, kind: str, what: str) -> None:
        log.warning("reconcile: endpoint %s: %s; repairing", row.name, what)
        self.rt.observer.reconcile_repair(kind)
