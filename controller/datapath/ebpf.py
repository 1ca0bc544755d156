"""The eBPF datapath: bpfnet's programs on endpoint veths and bridges.

Boundary: implements the ``Datapath`` protocol for the eBPF modes
(``abi.EBPF_MODES``: "redirect-peer" and "redirect") inside the current
network namespace (the daemon has already entered the namespace it manages).
It owns the programs' attachments — tcx links pinned under
``pin_dir/links/`` (``tcx.py``) where the kernel has tcx, else the tc filters
named "bpfnet:*" (``tc.py``) — and the maps pinned under pin_dir; the network
devices themselves belong to the controller. Struct layouts, map shapes and
limits come from ``abi.py``; a load whose C side disagrees raises
``layout.AbiMismatch``.

Lifecycle:
- start() compiles the programs, reusing maps already pinned in pin_dir (a
  restarted daemon keeps counters and entries), atomically replaces the
  programs on every device (BPF_LINK_UPDATE on the pinned tcx link, or the
  same tc prio/handle), and removes entries, counters, links and filters of
  anything no longer in the given state. A device that still carries a
  cls_bpf filter from a daemon that used tc gets its tcx link first and loses
  the filter after, so it is never without a program (tcx programs run before
  cls_bpf on the same hook, so during the overlap the new program decides).
- close() frees our file descriptors only: programs stay attached and maps
  pinned, so stopping the daemon never stops traffic.
- cleanup() removes every link, filter, map entry and pin bpfnet made.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any

from ..model import EndpointSpec, NetworkSpec, RemoteEndpointSpec
from ..netlink import IPRoute
from . import abi, tc, tcx
from . import maps as m
from . import published as pub
from .loader import LoadedPrograms, load

log = logging.getLogger(__name__)


# Programs that stay on cls_bpf filters in tcx mode. Each tcx (or netkit) link
# create and detach waits for an RCU grace period under the RTNL lock (~12 ms
# here, kernel/bpf/tcx.c: tcx_entry_sync), so an endpoint with two links cost
# 24 ms to add against 0.9 ms with filters. The endpoint's egress program is
# off the endpoint-to-endpoint fast path in redirect-peer mode (the packet goes
# from the sender's host-side ingress straight into the receiver's eth0) and
# the cheapest program on it in redirect mode (it sees the redirect mark and
# returns): on a filter it costs the add a tc request instead of a second grace
# period. ep_ingress (every packet an endpoint sends) and bridge_egress (once
# per network) are links. Measured in bench/RESULTS.md ("tcx vs cls_bpf").
TC_IN_TCX_MODE = frozenset({"ep_egress"})


def tc_direction(hook: str) -> str:
    """The tc direction of a hook: an uplink's hook is its ingress."""
    return "ingress" if hook == pub.UPLINK else hook


def check_netkit_mode(mode: str, device: str) -> None:
    """netkit endpoints need "redirect": bpf_redirect_peer() works only from a tc
    ingress hook, and a netkit program runs inside the peer's transmit."""
    if device == abi.ENDPOINT_NETKIT and mode != abi.MODE_REDIRECT:
        raise ValueError(f"netkit endpoints need datapath mode {abi.MODE_REDIRECT!r}, not {mode!r}: "
                         f"bpf_redirect_peer works only from tc ingress, and netkit runs bpfnet's program "
                         f"inside the endpoint's transmit (use --datapath redirect or auto, or "
                         f"--endpoint-device veth)")


def endpoint_hooks(ep: EndpointSpec) -> list[tuple[str, str]]:
    """(hook, program) of an endpoint. veth: both on the host end's tc hooks. netkit:
    ep_ingress inside the peer's transmit (it sees what the endpoint sends, with
    skb->ifindex = the primary's), ep_egress on the primary's egress hook, where
    skb->dev is still the primary (netkit's own primary hook runs after skb->dev
    became the peer, whose ifindex is only unique inside the endpoint's namespace)."""
    first = tcx.NETKIT_PEER if ep.device == abi.ENDPOINT_NETKIT else "ingress"
    return [(first, "ep_ingress"), ("egress", "ep_egress")]


class EbpfDatapath:
    """Datapath with the eBPF fast path (see module docstring)."""

    def __init__(self, mode: str = abi.MODE_REDIRECT_PEER,
                 pin_dir: str = "/sys/fs/bpf/bpfnet/default",
                 max_endpoints: int = abi.DEFAULT_MAX_ENDPOINTS,
                 attach: str = abi.MODE_AUTO, endpoint_device: str = abi.ENDPOINT_VETH) -> None:
        if mode not in abi.EBPF_MODES:
            raise ValueError(f"EbpfDatapath mode must be one of {abi.EBPF_MODES}, not {mode!r}")
        if attach not in abi.REQUESTABLE_ATTACHES:
            raise ValueError(f"attach must be one of {abi.REQUESTABLE_ATTACHES}, not {attach!r}")
        if attach == abi.MODE_AUTO:
            from .probe import probe_attach

            attach = probe_attach()
        if endpoint_device not in abi.ENDPOINT_DEVICES:
            raise ValueError(f"endpoint_device must be one of {abi.ENDPOINT_DEVICES}, not {endpoint_device!r}")
        check_netkit_mode(mode, endpoint_device)
        self.mode = mode
        self.attach = attach
        self.endpoint_device = endpoint_device  # what the daemon makes new endpoints with (info())
        self.pin_dir = pin_dir
        self.max_endpoints = abi.check_max_endpoints(max_endpoints)
        self._progs: LoadedPrograms | None = None
        self._maps: m.PinnedMaps | None = None
        self._ipr: IPRoute | None = None
        self._lock = threading.RLock()
        self._networks: dict[int, NetworkSpec] = {}  # by bridge ifindex
        self._endpoints: dict[int, EndpointSpec] = {}  # by host ifindex
        # tcx only: the hooks of each device still carrying a cls_bpf filter of an earlier
        # daemon (set in start()), dropped once their link is in place.
        self._old_filters: dict[int, set[str]] = {}
        self._tunnel = 0  # ifindex of the overlay's VXLAN device (set_tunnel), 0: none
        self._uplinks: dict[int, str] = {}  # ifindex -> name: devices carrying uplink_ingress
        # dns_names as last written: key -> value; None until read back from the pinned map
        self._dns: dict[bytes, bytes] | None = None

    # -- lifecycle --------------------------------------------------------
    def start(self, networks: list[NetworkSpec], endpoints: list[EndpointSpec]) -> None:
        with self._lock:
            if self._progs is None:
                self._progs = load(self.mode, self.pin_dir, self.max_endpoints)
                self._maps = m.PinnedMaps(self.pin_dir, self.max_endpoints)
                self._ipr = IPRoute()
            if self.attach == abi.ATTACH_TCX:
                _, ipr = self._need()
                self._old_filters = tc.filter_hooks_by_device(ipr)
            for net in networks:
                self.attach_network(net)
            for ep in endpoints:
                self.add_endpoint(ep)
            self._adopt_uplinks()
            self._reconcile(networks, endpoints)

    def _adopt_uplinks(self) -> None:
        """Swap the new uplink_ingress into every uplink an earlier daemon attached it to
        (no gap); the outside service then says which devices stay uplinks."""
        _, ipr = self._need()
        found: set[int] = set()
        for ifindex in tc.devices_with_our_filters(ipr):
            if any(name == tc.FILTER_PREFIX + "uplink_ingress" for *_, name in tc.our_filters(ipr, ifindex)):
                found.add(ifindex)
        found |= {i for i, d in tcx.pinned(self.pin_dir) if d == pub.UPLINK
                  and tcx.attached(self.pin_dir, i, d) is not None}
        names = {int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
        for ifindex in found - set(self._networks) - set(self._endpoints):
            if ifindex in names:
                self._attach(ipr, ifindex, [(pub.UPLINK, "uplink_ingress")])
                self._uplinks[ifindex] = names[ifindex]

    def _reconcile(self, networks: list[NetworkSpec], endpoints: list[EndpointSpec]) -> None:
        """Drop state left by networks/endpoints that went away while we were down."""
        maps, ipr = self._need()
        ep_ifindexes = {e.host_ifindex for e in endpoints}
        br_ifindexes = {n.bridge_ifindex for n in networks}
        # the tunnel device keeps its program until the overlay driver says otherwise (set_tunnel)
        raw = maps.get("tunnel_config", m.u32(0))
        if raw is not None and (tunnel := int(abi.TUNNEL_CONFIG.unpack(raw)["ifindex"])):
            br_ifindexes.add(tunnel)
        want_v4 = {m.ipv4_key(e.network_id, e.ipv4) for e in endpoints}
        want_v6 = {m.ipv6_key(e.network_id, a) for e in endpoints for a in m.endpoint_ipv6(e)}
        want = {
            "endpoint_by_ifindex": {m.u32(i) for i in ep_ifindexes},
            "endpoint_id_by_ipv4": want_v4,
            "endpoint_id_by_ipv6": want_v6,
            "network_by_bridge_ifindex": {m.u32(n.bridge_ifindex) for n in networks},
            "network_by_vni": {m.u32(n.vni) for n in networks if n.vni},
            # arrays last: their slots are emptied once no hash entry points at them
            "endpoint_by_id": {m.u32(e.id) for e in endpoints},
            "network_by_id": {m.u32(n.id) for n in networks},
        }
        for name, keys in want.items():
            array = m.is_array(maps.specs[name])
            for key, value in list(maps.items(name)):
                if key in keys or (array and not any(value)):
                    continue
                if array:
                    maps.clear(name, key)
                else:
                    maps.delete(name, key)
                log.info("removed stale entry from %s", name)
        self._set_routed(maps, {n.id for n in networks if n.routed4 or n.routed6})
        live = {e.id for e in endpoints}
        for slot in maps.counters(set()):
            if slot not in live:
                maps.zero_counters(slot)
        keep = ep_ifindexes | br_ifindexes | set(self._uplinks)
        nets = {n.id for n in networks}
        for network_id in maps.dns_counters():
            if network_id not in nets:
                maps.zero_dns_counters(network_id)
        for ifindex in tc.devices_with_our_filters(ipr):
            if ifindex not in keep:
                log.info("removing stale bpfnet filters from ifindex %d", ifindex)
                tc.detach(ipr, ifindex)
        tcx.remove_stale(self.pin_dir, keep)
        self._old_filters.clear()

    def close(self) -> None:
        with self._lock:
            if self._progs is not None:
                self._progs.close()
                self._progs = None
            if self._maps is not None:
                self._maps.close()
                self._maps = None
            if self._ipr is not None:
                self._ipr.close()
                self._ipr = None
            self._dns = None

    def cleanup(self) -> None:
        with self._lock:
            ipr = self._ipr or IPRoute()
            try:
                for ifindex in tc.devices_with_our_filters(ipr):
                    tc.detach(ipr, ifindex)
                tcx.remove_all(self.pin_dir)
            finally:
                if ipr is not self._ipr:
                    ipr.close()
            maps = self._maps
            if maps is None and os.path.isdir(self.pin_dir):
                try:
                    maps = m.PinnedMaps(self.pin_dir, self.max_endpoints)
                except OSError:
                    maps = None  # missing or foreign pins: unlinking below is enough
            if maps is not None:
                try:
                    for name, spec in maps.specs.items():
                        if m.is_array(spec):
                            continue  # array elements cannot be deleted; dies with its pin
                        for key, _ in list(maps.items(name)):
                            maps.delete(name, key)
                except OSError as e:
                    # e.g. pins left by a build with other struct sizes: unlinking is enough
                    log.warning("could not empty the maps in %s: %s", self.pin_dir, e)
                finally:
                    if maps is not self._maps:
                        maps.close()
            self.close()
            self._networks.clear()
            self._endpoints.clear()
            self._uplinks.clear()
            if os.path.isdir(self.pin_dir):
                specs = m.map_specs(self.max_endpoints)
                for name in [s.name for s in specs] + m.stale_pins(self.pin_dir, specs):
                    path = os.path.join(self.pin_dir, name)
                    if os.path.exists(path):
                        os.unlink(path)
                try:
                    os.rmdir(self.pin_dir)
                except OSError as e:
                    log.warning("left %s in place: %s", self.pin_dir, e)

    # -- attachments ------------------------------------------------------
    def _on_tc(self, hook: str, name: str) -> bool:
        """Whether (hook, program) sits on a cls_bpf filter: every tc hook in tc mode; in
        tcx mode only the programs in TC_IN_TCX_MODE. netkit's peer hook takes links only."""
        if hook not in tcx.TCX_HOOKS:
            return False
        return self.attach == abi.ATTACH_TC or name in TC_IN_TCX_MODE

    def _via(self, hook: str, name: str) -> str:
        """How (hook, program) is attached: "tc", "tcx" or "netkit" (info())."""
        if hook not in tcx.TCX_HOOKS:
            return "netkit"
        return abi.ATTACH_TC if self._on_tc(hook, name) else abi.ATTACH_TCX

    def _attach(self, ipr: IPRoute, ifindex: int, progs: list[tuple[str, str]]) -> None:
        """Attach or atomically replace (hook, program name) on one device."""
        assert self._progs is not None
        fds = self._progs.fds
        links = [(h, fds[name]) for h, name in progs if not self._on_tc(h, name)]
        on_tc = [(h, name) for h, name in progs if self._on_tc(h, name)]
        for hook, fd in links:
            tcx.attach(self.pin_dir, ifindex, hook, fd)
            if hook == pub.UPLINK:
                tc.detach(ipr, ifindex, "ingress")  # a forced tcx after a tc run
        if on_tc:
            tc.attach_all(ipr, ifindex, [(tc_direction(h), fds[name], name) for h, name in on_tc])
            # Links an earlier daemon made on these hooks go, or both programs would run.
            tcx.detach(self.pin_dir, ifindex, tuple(h for h, _ in on_tc))
        old = self._old_filters.pop(ifindex, set())
        for hook, _ in links:
            if hook in old:
                # Upgrade from a tc daemon: the link runs already, now the filter can go.
                tc.detach(ipr, ifindex, hook)
                log.info("ifindex %d/%s: cls_bpf filter replaced by a tcx link", ifindex, hook)

    def _detach(self, ipr: IPRoute, ifindex: int) -> None:
        tcx.detach(self.pin_dir, ifindex)
        tc.detach(ipr, ifindex)

    def _attached_names(self, ipr: IPRoute, ifindex: int, hooks: list[tuple[str, str]]) -> set[str]:
        """Which of the (hook, program) pairs are attached on ifindex, as this datapath attaches them."""
        assert self._progs is not None
        filters: set[tuple[str, str]] | None = None  # (direction, program name), read once
        out = set()
        for hook, name in hooks:
            if self._on_tc(hook, name):
                if filters is None:
                    filters = {(d, n.removeprefix(tc.FILTER_PREFIX)) for d, _, _, n in tc.our_filters(ipr, ifindex)}
                if (tc_direction(hook), name) in filters:
                    out.add(name)
            elif tcx.attached(self.pin_dir, ifindex, hook) == self._progs.info[name].id:
                out.add(name)
        return out

    def _need(self) -> tuple[m.PinnedMaps, IPRoute]:
        if self._maps is None or self._ipr is None or self._progs is None:
            raise RuntimeError("EbpfDatapath used before start() or after close()")
        return self._maps, self._ipr

    # -- networks ---------------------------------------------------------
    def attach_network(self, net: NetworkSpec) -> None:
        if not 0 < net.id < abi.MAX_NETWORKS:
            raise ValueError(f"network {net.name}: id {net.id} not in [1, {abi.MAX_NETWORKS})")
        with self._lock:
            maps, ipr = self._need()
            assert self._progs is not None
            old = self._networks.get(net.bridge_ifindex)
            for n in list(self._networks.values()):
                if n.id == net.id and n.bridge_ifindex != net.bridge_ifindex:
                    maps.delete("network_by_bridge_ifindex", m.u32(n.bridge_ifindex))
                    del self._networks[n.bridge_ifindex]
            if old is not None and old.id != net.id:
                maps.clear("network_by_id", m.u32(old.id))
            maps.put("network_by_id", m.u32(net.id), m.pack_network(net))
            maps.put("network_by_bridge_ifindex", m.u32(net.bridge_ifindex), m.u32(net.id))
            if net.vni:
                maps.put("network_by_vni", m.u32(net.vni), m.u32(net.id))
            routed = self._routed_ids(maps) - {net.id}
            self._set_routed(maps, routed | ({net.id} if net.routed4 or net.routed6 else set()))
            self._attach(ipr, net.bridge_ifindex, [("egress", "bridge_egress")])
            self._networks[net.bridge_ifindex] = net

    @staticmethod
    def _routed_ids(maps: m.PinnedMaps) -> set[int]:
        return {int.from_bytes(v, sys.byteorder) for _, v in maps.items("routed_networks")} - {0}

    @staticmethod
    def _set_routed(maps: m.PinnedMaps, ids: set[int]) -> None:
        """routed_networks (bpf/routed.h) holds exactly IDS: a network keeps its slot, new
        ones take free slots; more than MAX_ROUTED take the kernel's path (logged)."""
        slots = {i: int.from_bytes(maps.get("routed_networks", m.u32(i)) or bytes(4), sys.byteorder)
                 for i in range(abi.MAX_ROUTED)}
        for i, nid in slots.items():
            if nid and nid not in ids:
                maps.put("routed_networks", m.u32(i), m.u32(0))
                slots[i] = 0
        missing = sorted(ids - set(slots.values()))
        for i in [i for i, nid in slots.items() if not nid]:
            if not missing:
                break
            maps.put("routed_networks", m.u32(i), m.u32(missing.pop(0)))
        if missing:
            log.warning("more than %d routed networks: network ids %s take the kernel's path across hosts",
                        abi.MAX_ROUTED, missing)

    def detach_network(self, net: NetworkSpec) -> None:
        with self._lock:
            maps, ipr = self._need()
            self._detach(ipr, net.bridge_ifindex)
            maps.delete("network_by_bridge_ifindex", m.u32(net.bridge_ifindex))
            if net.vni and maps.get("network_by_vni", m.u32(net.vni)) == m.u32(net.id):
                maps.delete("network_by_vni", m.u32(net.vni))
            self._set_routed(maps, self._routed_ids(maps) - {net.id})
            if 0 < net.id < abi.MAX_NETWORKS:
                maps.clear("network_by_id", m.u32(net.id))
                maps.zero_dns_counters(net.id)  # a network made later with this id starts at 0
            self._networks.pop(net.bridge_ifindex, None)

    # -- endpoints --------------------------------------------------------
    def add_endpoint(self, ep: EndpointSpec) -> None:
        if not 0 <= ep.id < self.max_endpoints:
            raise ValueError(f"endpoint {ep.name}: id {ep.id} not in [0, {self.max_endpoints})")
        check_netkit_mode(self.mode, ep.device)
        with self._lock:
            maps, ipr = self._need()
            assert self._progs is not None
            # Same endpoint re-added with another veth: drop the old one's entries.
            for other in list(self._endpoints.values()):
                if other.name == ep.name and other.host_ifindex != ep.host_ifindex:
                    self._remove_entries(other.host_ifindex)
                    del self._endpoints[other.host_ifindex]
            self._remove_entries(ep.host_ifindex, keep=ep)
            # The slot first: the address maps point at it by id.
            eid, record = m.u32(ep.id), m.pack_endpoint(ep)
            maps.put("endpoint_by_id", eid, record)
            maps.put("endpoint_by_ifindex", m.u32(ep.host_ifindex), record)
            maps.put("endpoint_id_by_ipv4", m.ipv4_key(ep.network_id, ep.ipv4), eid)
            for a in m.endpoint_ipv6(ep):
                maps.put("endpoint_id_by_ipv6", m.ipv6_key(ep.network_id, a), eid)
            self._attach(ipr, ep.host_ifindex, endpoint_hooks(ep))
            self._endpoints[ep.host_ifindex] = ep

    def _remove_entries(self, ifindex: int, keep: EndpointSpec | None = None) -> None:
        """Delete the entries installed for ifindex (as the maps say, so a
        restarted daemon cleans what its predecessor wrote). With keep, only
        the addresses keep no longer has are removed, and the slot only if
        keep has another id."""
        maps, _ = self._need()
        e = maps.endpoint(ifindex)
        if keep is None:
            maps.delete("endpoint_by_ifindex", m.u32(ifindex))
        if e is None:
            return
        keys4 = {m.ipv4_key(e.network_id, e.ipv4)}
        keys6 = {m.ipv6_key(e.network_id, a) for a in e.ipv6}
        if keep is not None:
            keys4 -= {m.ipv4_key(keep.network_id, keep.ipv4)}
            keys6 -= {m.ipv6_key(keep.network_id, a) for a in m.endpoint_ipv6(keep)}
        for k in keys4:
            self._delete_if_points_to("endpoint_id_by_ipv4", k, e.id)
        for k in keys6:
            self._delete_if_points_to("endpoint_id_by_ipv6", k, e.id)
        if keep is None or keep.id != e.id:
            self._clear_slot(e.id, ifindex)

    def _delete_if_points_to(self, name: str, key: bytes, eid: int) -> None:
        # An address may already belong to a newer endpoint: never delete that one.
        maps, _ = self._need()
        if maps.get(name, key) == m.u32(eid):
            maps.delete(name, key)

    def _clear_slot(self, eid: int, ifindex: int) -> None:
        # Empty the slot only while it holds this ifindex's endpoint: the id may
        # already belong to a newer one.
        maps, _ = self._need()
        if not 0 <= eid < self.max_endpoints:
            return
        raw = maps.get("endpoint_by_id", m.u32(eid))
        if raw is not None and m.unpack_endpoint(raw).ifindex == ifindex:
            maps.clear("endpoint_by_id", m.u32(eid))

    def remove_endpoint(self, ep: EndpointSpec) -> None:
        with self._lock:
            maps, ipr = self._need()
            self._detach(ipr, ep.host_ifindex)  # first, so nothing counts after the reset
            self._remove_entries(ep.host_ifindex)
            # The spec's own addresses and slot too, in case the map entry was already gone.
            self._delete_if_points_to("endpoint_id_by_ipv4", m.ipv4_key(ep.network_id, ep.ipv4),
                                      ep.id)
            for a in m.endpoint_ipv6(ep):
                self._delete_if_points_to("endpoint_id_by_ipv6", m.ipv6_key(ep.network_id, a),
                                          ep.id)
            self._clear_slot(ep.id, ep.host_ifindex)
            if 0 <= ep.id < self.max_endpoints:
                maps.zero_counters(ep.id)
            self._endpoints.pop(ep.host_ifindex, None)

    # -- the overlay tunnel (bpf/tunnel.h) ----------------------------------
    def set_tunnel(self, ifindex: int, vtep: IPv4Address | None = None, uplink_ifindex: int = 0) -> None:
        with self._lock:
            maps, ipr = self._need()
            old = self._tunnel or int(abi.TUNNEL_CONFIG.unpack(
                maps.get("tunnel_config", m.u32(0)) or bytes(abi.TUNNEL_CONFIG.size))["ifindex"])
            if old and old != ifindex:
                self._detach(ipr, old)
            if ifindex:
                self._attach(ipr, ifindex, [("ingress", "tunnel_ingress")])
            native = ifindex and vtep is not None and uplink_ifindex
            maps.put("tunnel_config", m.u32(0), abi.TUNNEL_CONFIG.pack(
                ifindex=ifindex, vtep=(vtep.packed if native and vtep else bytes(4)),
                uplink_ifindex=uplink_ifindex if native else 0))
            self._tunnel = ifindex

    def add_remote(self, r: RemoteEndpointSpec) -> None:
        with self._lock:
            maps, _ = self._need()
            value = m.pack_remote(r)
            for name, key in m.remote_keys(r):
                maps.put(name, key, value)

    def remove_remote(self, r: RemoteEndpointSpec) -> None:
        with self._lock:
            maps, _ = self._need()
            value = m.pack_remote(r)
            for name, key in m.remote_keys(r):
                if maps.get(name, key) == value:  # the address may be someone else's by now
                    maps.delete(name, key)

    def set_remotes(self, remotes: list[RemoteEndpointSpec]) -> None:
        with self._lock:
            maps, _ = self._need()
            want = {(name, key): m.pack_remote(r) for r in remotes for name, key in m.remote_keys(r)}
            for name in ("remote_by_ipv4", "remote_by_ipv6"):
                for key, _ in list(maps.items(name)):
                    if (name, key) not in want:
                        maps.delete(name, key)
            for (name, key), value in want.items():
                maps.put(name, key, value)

    def remotes(self) -> int:
        """How many remote endpoint addresses the datapath forwards to."""
        with self._lock:
            maps, _ = self._need()
            return sum(1 for name in ("remote_by_ipv4", "remote_by_ipv6") for _ in maps.items(name))

    def tunnel_counters(self) -> dict[str, int]:
        with self._lock:
            maps, _ = self._need()
            return maps.tunnel_counters()

    # -- check (the controller's reconcile) --------------------------------
    def check_endpoint(self, ep: EndpointSpec) -> list[str]:
        """What of EP's datapath state is not in place: "entries" (its records
        as add_endpoint writes them) and/or "filters" (its two programs, as
        tcx links or tc filters, whichever this datapath uses)."""
        with self._lock:
            maps, ipr = self._need()
            out = []
            eid, record = m.u32(ep.id), m.pack_endpoint(ep)
            if (maps.get("endpoint_by_ifindex", m.u32(ep.host_ifindex)) != record
                    or maps.get("endpoint_by_id", eid) != record
                    or maps.get("endpoint_id_by_ipv4", m.ipv4_key(ep.network_id, ep.ipv4)) != eid
                    or any(maps.get("endpoint_id_by_ipv6", m.ipv6_key(ep.network_id, a)) != eid
                           for a in m.endpoint_ipv6(ep))):
                out.append("entries")
            if self._attached_names(ipr, ep.host_ifindex, endpoint_hooks(ep)) != {"ep_ingress", "ep_egress"}:
                out.append("filters")
            return out

    # -- published ports' fast path (bpf/nat.h) ----------------------------
    def set_uplinks(self, uplinks: dict[int, str]) -> None:
        """Attach uplink_ingress to exactly these devices (ifindex -> name)."""
        with self._lock:
            _, ipr = self._need()
            for ifindex in set(self._uplinks) - set(uplinks):
                tcx.detach(self.pin_dir, ifindex, pub.UPLINK)
                tc.detach(ipr, ifindex, "ingress")
                log.info("uplink_ingress detached from %s", self._uplinks.pop(ifindex))
            for ifindex, name in uplinks.items():
                if ifindex in self._networks or ifindex in self._endpoints:
                    raise ValueError(f"{name} is one of bpfnet's own devices, not an uplink")
                if ifindex not in self._uplinks:
                    self._attach(ipr, ifindex, [(pub.UPLINK, "uplink_ingress")])
                    log.info("uplink_ingress attached to %s (ifindex %d)", name, ifindex)
                self._uplinks[ifindex] = name

    def uplinks(self) -> dict[int, str]:
        with self._lock:
            return dict(self._uplinks)

    def set_published(self, ports: list[pub.PublishedPort]) -> None:
        with self._lock:
            maps, _ = self._need()
            pub.replace(maps, ports)

    def published(self) -> list[pub.PublishedPort]:
        with self._lock:
            maps, _ = self._need()
            return pub.entries(maps)

    def published_counters(self) -> dict[int, dict[str, int]]:
        with self._lock:
            maps, _ = self._need()
            return pub.counters(maps)

    def flows(self) -> list[pub.Flow]:
        with self._lock:
            maps, _ = self._need()
            return pub.flows(maps)

    # -- observability ----------------------------------------------------
    def program_fd(self, name: str) -> int:
        """fd of a loaded entry program ("ep_ingress", "ep_egress", "bridge_egress", "uplink_ingress"),
        for BPF_PROG_TEST_RUN in tests and tools; valid until close()."""
        with self._lock:
            if self._progs is None:
                raise RuntimeError("EbpfDatapath not started")
            return self._progs.fds[name]

    def counters(self) -> dict[int, dict[str, Any]]:
        """{endpoint id: EndpointCounters} (see bpfnet.datapath.counters) for every
        attached endpoint plus any slot with non-zero counters. One batch syscall
        (the counter array): the attached ids are known here, so the endpoint map
        is not read on every scrape."""
        with self._lock:
            maps, _ = self._need()
            slots = {spec.id for spec in self._endpoints.values()}
            return dict(maps.counters(slots))  # type: ignore[arg-type]

    # -- DNS ---------------------------------------------------------------
    def set_dns_names(self, names: Mapping[tuple[int, bytes], tuple[tuple[bytes, ...], tuple[bytes, ...]]]) -> None:
        """Bring dns_names to exactly NAMES (what fits: see abi.DNS_NAME_MAX, DNS_MAX_ADDRS),
        writing only the differences: one add of a 1000-endpoint network writes its few names."""
        want: dict[bytes, bytes] = {}
        for (network_id, wire), (v4, v6) in names.items():
            if len(wire) <= abi.DNS_NAME_MAX and len(v4) <= abi.DNS_MAX_ADDRS and len(v6) <= abi.DNS_MAX_ADDRS:
                want[m.dns_name_key(network_id, wire)] = m.pack_dns_addrs(v4, v6)
        with self._lock:
            maps, _ = self._need()
            if self._dns is None:
                self._dns = dict(maps.items("dns_names"))
            have = self._dns
            for key in [k for k in have if k not in want]:
                maps.delete("dns_names", key)
                del have[key]
            for key, value in want.items():
                if have.get(key) == value:
                    continue
                try:
                    maps.put("dns_names", key, value)
                except OSError as exc:  # full (E2BIG): the resolver process answers the rest
                    log.warning("dns_names: cannot add a name (%s); the resolver process answers it", exc)
                    continue
                have[key] = value

    def dns_counters(self) -> dict[int, dict[str, int]]:
        with self._lock:
            maps, _ = self._need()
            return maps.dns_counters()

    def info(self) -> dict[str, Any]:
        with self._lock:
            programs: list[dict[str, Any]] = []
            if self._progs is not None:
                pi = self._progs.info
                for net in self._networks.values():
                    p = pi["bridge_egress"]
                    programs.append({"name": "bridge_egress", "id": p.id, "tag": p.tag,
                                     "attach": f"{net.bridge}/egress", "via": self._via("egress", "bridge_egress")})
                if self._tunnel:
                    p = pi["tunnel_ingress"]
                    programs.append({"name": "tunnel_ingress", "id": p.id, "tag": p.tag,
                                     "attach": f"ifindex {self._tunnel}/ingress"})
                for ep in self._endpoints.values():
                    for d, name in endpoint_hooks(ep):
                        p = pi[name]
                        programs.append({"name": name, "id": p.id, "tag": p.tag,
                                         "attach": f"{ep.host_ifname}/{d}", "via": self._via(d, name)})
                for ifname in self._uplinks.values():
                    p = pi["uplink_ingress"]
                    programs.append({"name": "uplink_ingress", "id": p.id, "tag": p.tag,
                                     "attach": f"{ifname}/ingress", "via": self._via(pub.UPLINK, "uplink_ingress")})
            return {"mode": self.mode, "attach": self.attach, "endpoint_device": self.endpoint_device,
                    "pin_dir": self.pin_dir,
                    "max_endpoints": self.max_endpoints, "programs": programs}
