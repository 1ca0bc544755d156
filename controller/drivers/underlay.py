"""The underlay drivers: macvlan and ipvlan, endpoints straight on a physical interface.

Boundary: the network's parent interface (an existing link of the managed namespace, or an
802.1q sub-interface ``IFACE.VLAN`` this driver makes on IFACE and removes with the last
network on it) and each endpoint's macvlan/ipvlan link, made on the parent directly inside the
endpoint's namespace. Addresses come from the physical subnet (the services' IPAM, local to
this host: give each host its own ``--ip-range``); the default route is the physical gateway,
which bpfnet never configures. Docker's macvlan and ipvlan drivers work the same way.

What this driver cannot do, and why (README "Multi-host"):

- The host cannot reach its own macvlan endpoints through the parent (the macvlan driver
  passes frames between a lower device's macvlans, and out to the wire, but never up to the
  lower device itself). bpfnet does not hide it: reach them from another host, or give the
  host a macvlan of its own on the same parent (``ip link add shim link IFACE type macvlan
  mode bridge`` plus an address and a route), as Docker's documentation advises.
- The datapath has nowhere to attach: an endpoint's link has no host-side peer (its traffic
  leaves through the parent's queues inside the kernel's macvlan/ipvlan code, and frames
  between two macvlans of one parent never touch the parent's tc hooks). So no eBPF
  counters, spoof checks or ``--internal`` here: ``internal`` is refused, and ``--no-icc``
  becomes macvlan's ``private`` mode (no frame between the parent's macvlans), which the
  kernel enforces. Counters are the kernel's own link statistics of each endpoint's link.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Network
from typing import Any, ClassVar

from ..config import NetworkConfig, split_parent
from ..errors import Conflict, InvalidArgument
from ..model import InterfaceConfig
from ..rollback import Rollback
from ..runtime import Runtime
from ..state import EndpointRow
from ..sublinks import KindMissing
from .interface import NetworkDriver

log = logging.getLogger(__name__)
IPVLAN_MODE_NUMBERS = {"l2": 0, "l3": 1}  # IFLA_IPVLAN_MODE: IPVLAN_MODE_L2, IPVLAN_MODE_L3


class MacvlanDriver(NetworkDriver):
    """Endpoints are macvlan links (bridge mode; private with --no-icc) on the parent."""

    name = "macvlan"
    host_side = False
    kind: ClassVar[str] = "macvlan"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # what the kernel link gets
    def link_options(self, cfg: NetworkConfig) -> dict[str, Any]:
        return {"macvlan_mode": "bridge" if cfg.icc else "private"}

    def endpoint_mac(self, row: EndpointRow) -> str | None:
        return row.mac

    # networks
    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        # Nothing of an underlay network passes through the host: no masquerading. IPv6's default
        # route is the physical gateway (there is no fe80::1 on a bridge here).
        data = {**data, "masquerade": False}
        if data.get("subnet6") and not data.get("default_gateway6"):
            gateway6 = data.get("gateway6")
            if gateway6 is None:
                try:
                    gateway6 = str(IPv6Network(str(data["subnet6"]), strict=False)[1])
                except ValueError:
                    return data  # validation names the bad subnet
            data["default_gateway6"] = gateway6
        return data

    def host_links(self, cfg: NetworkConfig) -> list[str]:
        assert cfg.parent is not None
        return [split_parent(cfg.parent)[0], cfg.parent]

    def _siblings(self, cfg: NetworkConfig) -> list[NetworkConfig]:
        """The other underlay networks on the same physical interface (any VLAN of it)."""
        assert cfg.parent is not None
        base = split_parent(cfg.parent)[0]
        out = []
        for row in self.rt.store.networks():
            other = NetworkConfig.from_json(row.config)
            if other.name != cfg.name and other.parent is not None and split_parent(other.parent)[0] == base:
                out.append(other)
        return out

    def check_network(self, cfg: NetworkConfig) -> None:
        assert cfg.parent is not None
        if cfg.internal:
            raise InvalidArgument(f"a {self.name} network cannot be --internal: its endpoints' links have no "
                                  "host-side peer, so the datapath that enforces it cannot attach")
        if cfg.subnet_source != "given" or (cfg.ipv6 and cfg.subnet6_source != "given"):
            raise InvalidArgument(f"a {self.name} network needs --subnet (and --subnet6 with --ipv6): the physical "
                                  "network's, which bpfnet cannot pick")
        base, vlan = split_parent(cfg.parent)
        parent = self.rt.kernel.link_index(base)
        if parent is None:
            raise InvalidArgument(f"parent interface {base!r} does not exist (in the daemon's namespace)")
        for other in self._siblings(cfg):
            if other.parent == cfg.parent:
                for a, b in ((cfg.subnet4, other.subnet4), (cfg.subnet6, other.subnet6)):
                    if a is not None and b is not None and a.overlaps(b):
                        raise Conflict(f"subnet {a} overlaps network {other.name}'s subnet {b} on the same "
                                       f"parent {cfg.parent}")
            if other.driver != cfg.driver and split_parent(other.parent or "")[1] == vlan:
                raise Conflict(f"parent {cfg.parent} already carries {other.driver} network {other.name}; the kernel "
                               f"cannot put {cfg.driver} and {other.driver} links on one interface")
        try:
            self.rt.kernel.probe_link_kind(self.kind, parent, self.link_options(cfg))
        except KindMissing as exc:
            raise InvalidArgument(f"the {self.name} driver is not available: {exc}") from None

    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        return self._ensure_parent(cfg, rb)

    def restore_network(self, cfg: NetworkConfig, network_id: int) -> dict[str, Any]:
        with Rollback(f"restore network {cfg.name}") as rb:
            return self._ensure_parent(cfg, rb)

    def _ensure_parent(self, cfg: NetworkConfig, rb: Rollback) -> dict[str, Any]:
        """The parent exists (its VLAN sub-interface made when missing); what bpfnet added:
        {"bridge": False, "addresses": [], "vlan": the sub-interface is bpfnet's}."""
        assert cfg.parent is not None
        kernel = self.rt.kernel
        owned: dict[str, Any] = {"bridge": False, "addresses": [], "vlan": False}
        base, vlan = split_parent(cfg.parent)
        if vlan is None:
            return owned
        index = kernel.link_index(base)
        if index is None:
            raise InvalidArgument(f"parent interface {base!r} does not exist (in the daemon's namespace)")
        try:
            _, created = kernel.ensure_vlan(cfg.parent, index, vlan)
        except KindMissing as exc:
            raise InvalidArgument(f"parent {cfg.parent}: cannot make VLAN {vlan}'s sub-interface: {exc}; "
                                  f"give {base} without .VLAN, or load 8021q") from None
        if created:
            rb.push(f"vlan {cfg.parent}", lambda: kernel.delete_link(cfg.parent or ""))
            log.info("network %s: made VLAN sub-interface %s (VLAN %d on %s)", cfg.name, cfg.parent, vlan, base)
        # bpfnet's when it made it now, or when a network on it says bpfnet made it before
        owned["vlan"] = created or bool((cfg.owned or {}).get("vlan")) or any(
            other.parent == cfg.parent and (other.owned or {}).get("vlan") for other in self._siblings(cfg))
        return owned

    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        """The VLAN sub-interface goes with the last network on it, when bpfnet made it."""
        if not (cfg.owned or {}).get("vlan"):
            return
        if any(other.parent == cfg.parent for other in self._siblings(cfg)):
            return
        assert cfg.parent is not None
        self.rt.kernel.delete_link(cfg.parent)
        log.info("network %s: removed VLAN sub-interface %s (no network left on it)", cfg.name, cfg.parent)

    def describe(self, cfg: NetworkConfig) -> dict[str, Any]:
        assert cfg.parent is not None
        return {"parent": cfg.parent, "parent_ifindex": self.rt.kernel.link_index(cfg.parent),
                "vlan": split_parent(cfg.parent)[1], "kind": self.kind,
                "mode": self.link_options(cfg)}

    # endpoints
    def join(self, cfg: NetworkConfig, row: EndpointRow, iface: InterfaceConfig | None, rb: Rollback) -> int:
        assert cfg.parent is not None
        kernel = self.rt.kernel
        parent = kernel.link_index(cfg.parent)
        if parent is None:
            raise InvalidArgument(f"parent interface {cfg.parent!r} of network {cfg.name} does not exist")
        ns = row.netns  # "" (a handed-off endpoint): made beside the parent, the runtime moves it
        try:
            index = kernel.create_sublink(self.kind, parent, ns, row.ifname, cfg.mtu, self.endpoint_mac(row),
                                          self.link_options(cfg))
        except KindMissing as exc:
            raise InvalidArgument(f"the {self.name} driver is not available: {exc}") from None
        rb.push(f"{self.kind} {row.ifname}", lambda: self._delete(row))
        if iface is not None:
            kernel.configure_interface(ns, index, iface)
        return 0  # no host-side link: nothing for the datapath

    def _delete(self, row: EndpointRow) -> None:
        if row.netns:
            self.rt.kernel.delete_link_in(row.netns, row.ifname)
        else:
            self.rt.kernel.delete_link(row.ifname)

    def leave(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        self._delete(row)


class IpvlanDriver(MacvlanDriver):
    """Endpoints are ipvlan links (l2 or l3 mode) on the parent: one MAC (the parent's) for all,
    for switch ports that allow a single MAC. Debian's 6.12 kernel has it as a module; kernels
    without it are refused at ``network create``."""

    name = "ipvlan"
    own_mac = False
    kind = "ipvlan"

    def link_options(self, cfg: NetworkConfig) -> dict[str, Any]:
        return {"ipvlan_mode": IPVLAN_MODE_NUMBERS[cfg.ipvlan_mode or "l2"]}

    def endpoint_mac(self, row: EndpointRow) -> str | None:
        return None  # the parent's

    def check_network(self, cfg: NetworkConfig) -> None:
        if not cfg.icc:
            raise InvalidArgument("an ipvlan network cannot be --no-icc: bpfnet enforces it with macvlan's "
                                  "private mode or the datapath, and ipvlan has neither")
        super().check_network(cfg)
