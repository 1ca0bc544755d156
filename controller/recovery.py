"""Kernel objects the state does not know: refuse, adopt or wipe (``--reconcile``).

Boundary: policy over ``Runtime.kernel`` and the store, run once at start-up
before the reconcile CHECK (``bpfnet.reconcile``). Endpoint rows are always
written before their veth is made and removed after it is gone, so a bpfnet
veth (``bnvN``) without a row means the state is behind the kernel: a lost,
emptied or restored state file. Deleting such veths as "leaks" would destroy
live endpoints because of a missing file (issue 10, defect #10), so:

- ``check`` (default): a new or empty state file next to bpfnet veths or
  pinned maps stops the start with one line saying what was found and what to
  do. With a state that is not new, unknown veths are deleted as leaks, as
  before (what a crash between two steps of a removal can leave).
- ``adopt``: rebuild the missing rows from the kernel. Each unknown ``bnvN``
  veth becomes endpoint id N, named after the named namespace holding its
  peer (``eth0``), with that interface's MAC and addresses as leases; its
  bridge becomes a network (gateway and subnet from the bridge's addresses;
  ``bridge`` is the default network's name when it is ``--bridge``,
  ``br-NAME`` gives NAME). Adopted endpoints are marked as living in an
  adopted namespace, so removing them never deletes a namespace bpfnet cannot
  prove it made. A veth whose peer is in no named namespace is left alone and
  reported.
- ``wipe``: start afresh: unknown veths are deleted (the reconcile that
  follows does it), the datapath drops entries of endpoints it no longer has.
  Bridges and namespaces are left in place (reported): bpfnet cannot tell
  which of them it made.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, ip_interface

from .config import DEFAULT_NETWORK, NAME_RE, NetworkConfig
from .datapath.abi import ENDPOINT_DEVICES
from .endpoints import HOST_VETH_PREFIX, is_host_veth_name
from .errors import InvalidArgument
from .links import ENDPOINT_IFNAME
from .model import InterfaceState, LinkState
from .runtime import Runtime
from .state import EndpointRow, StateError

log = logging.getLogger(__name__)
LINK_LOCAL_GATEWAY = IPv6Address("fe80::1")


@dataclass(frozen=True)
class Survey:
    """bpfnet's kernel objects that the state does not know about."""

    veths: tuple[LinkState, ...]
    pins: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.veths or self.pins)

    def describe(self) -> str:
        parts = []
        if self.veths:
            names = ", ".join(v.name for v in self.veths[:5]) + (", …" if len(self.veths) > 5 else "")
            parts.append(f"{len(self.veths)} endpoint veth(s) ({names})")
        if self.pins:
            parts.append(f"{len(self.pins)} pinned map(s) in {os.path.dirname(self.pins[0])}")
        return " and ".join(parts)


def survey(rt: Runtime, pin_dir: str) -> Survey:
    """The unknown bnvN veths of the managed namespace, and the pins under PIN_DIR."""
    known = {row.host_ifname for row in rt.store.endpoints()}
    veths = tuple(link for link in rt.kernel.dump_links()
                  if link.kind in ENDPOINT_DEVICES and is_host_veth_name(link.name) and link.name not in known)
    pins: tuple[str, ...] = ()
    if os.path.isdir(pin_dir):
        pins = tuple(sorted(os.path.join(pin_dir, f) for f in os.listdir(pin_dir)))
    return Survey(veths, pins)


def check_fresh_state(rt: Runtime, mode: str, pin_dir: str, default_bridge: str) -> Survey:
    """Start-up, before reconcile: what ``--reconcile MODE`` says to do with what the state lacks.

    Raises StateError (mode "check") when the state file is new or empty but bpfnet's
    objects exist; adopts them into the state (mode "adopt"). Returns the survey.
    """
    found = survey(rt, pin_dir)
    if mode == "adopt" and found.veths:
        adopt(rt, found.veths, default_bridge)
    elif rt.store.fresh and found and mode == "check":
        raise StateError(
            f"the state file {rt.store.path} is new or empty, but {found.describe()} exist: "
            "they belong to a state that is missing. Restore the state file, or start with "
            "--reconcile=adopt (rebuild the state from them) or --reconcile=wipe (delete them)"
        )
    elif mode == "wipe" and found.veths:
        log.warning("--reconcile=wipe: deleting %s; bridges and namespaces stay in place",
                    found.describe())
    return found


def adopt(rt: Runtime, veths: tuple[LinkState, ...], default_bridge: str) -> int:
    """Rows for unknown endpoint veths, from what the kernel shows (see the module docstring)."""
    links = {link.index: link for link in rt.kernel.dump_links()}
    peers: dict[int, list[tuple[str, InterfaceState]]] = {}
    for ns in rt.kernel.list_netns():
        if ns == rt.hostns:
            continue
        try:
            state = rt.kernel.interface_state(ns, ENDPOINT_IFNAME)
        except OSError as exc:
            log.debug("adopt: cannot look into namespace %s: %s", ns, exc)
            continue
        if state is not None and state.peer:
            peers.setdefault(state.peer, []).append((ns, state))
    adopted = 0
    used_ids = {row.id for row in rt.store.endpoints()}
    for veth in veths:
        found = [(ns, st) for ns, st in peers.get(veth.index, [])
                 if st.index == veth.peer and st.peer_in_caller is not False]
        bridge = links.get(veth.master) if veth.master else None
        ep_id = int(veth.name[len(HOST_VETH_PREFIX):])
        why = None
        if len(found) != 1:
            why = "its peer is in no named namespace"
        elif bridge is None or bridge.kind != "bridge":
            why = "it is on no bridge"
        elif ep_id in used_ids or ep_id >= rt.max_endpoints:
            why = f"endpoint id {ep_id} is taken or out of range"
        elif rt.store.endpoint(found[0][0]) is not None:
            why = f"an endpoint named {found[0][0]} exists"
        if why is not None:
            log.warning("--reconcile=adopt: left veth %s alone: %s", veth.name, why)
            continue
        assert bridge is not None
        ns, eth0 = found[0]
        try:
            network, cfg = _network_of(rt, bridge, default_bridge)
            leases = _leases(cfg, eth0)
            row = EndpointRow(ns, ep_id, network, ns, True, veth.name, eth0.mac, "ready", time.time())
            rt.store.adopt_endpoint(row, leases)
        except (InvalidArgument, sqlite3.IntegrityError) as exc:
            log.warning("--reconcile=adopt: left veth %s alone: %s", veth.name, exc)
            continue
        used_ids.add(ep_id)
        adopted += 1
        log.warning("--reconcile=adopt: endpoint %s (veth %s, %s) adopted into network %s", ns, veth.name,
                    " ".join(a for a, _ in leases), network)
    return adopted


def _network_of(rt: Runtime, bridge: LinkState, default_bridge: str) -> tuple[str, NetworkConfig]:
    """The network a bridge carries: a stored one, or one rebuilt from its addresses."""
    for row in rt.store.networks():
        if row.config.get("bridge") == bridge.name:
            return row.name, NetworkConfig.from_json(row.config)
    v4: IPv4Interface | None = None
    v6: IPv6Interface | None = None
    has_ll_gateway = False
    for address, prefixlen in rt.kernel.link_addresses(bridge.index):
        iface = ip_interface(f"{address}/{prefixlen}")
        if isinstance(iface, IPv4Interface) and v4 is None and not iface.is_link_local:
            v4 = iface
        elif isinstance(iface, IPv6Interface):
            if iface.ip == LINK_LOCAL_GATEWAY:
                has_ll_gateway = True
            elif not iface.is_link_local and v6 is None:
                v6 = iface
    if v4 is None:
        raise InvalidArgument(f"bridge {bridge.name} has no IPv4 address to rebuild its network from")
    name = _network_name(rt, bridge.name, default_bridge)
    data: dict[str, object] = {"name": name, "bridge": bridge.name, "subnet4": str(v4.network),
                               "gateway4": str(v4.ip), "ipv6": has_ll_gateway or v6 is not None}
    if v6 is not None:
        data.update(subnet6=str(v6.network), gateway6=str(v6.ip))
    if bridge.mtu:
        data["mtu"] = bridge.mtu
    cfg = NetworkConfig.from_json(data)
    is_default = name == DEFAULT_NETWORK
    rt.store.add_network(name, cfg.to_json(), is_default)
    log.warning("--reconcile=adopt: network %s rebuilt from bridge %s (%s%s); icc is assumed on",
                name, bridge.name, cfg.subnet4, f", {cfg.subnet6}" if cfg.subnet6 else "")
    return name, cfg


def _network_name(rt: Runtime, bridge: str, default_bridge: str) -> str:
    taken = {row.name for row in rt.store.networks()}
    if bridge == default_bridge and DEFAULT_NETWORK not in taken:
        return DEFAULT_NETWORK
    short = bridge.removeprefix("br-")
    for candidate in (short, bridge):
        if NAME_RE.fullmatch(candidate) and candidate not in taken:
            return candidate
    raise InvalidArgument(f"no free network name for bridge {bridge}")


def _leases(cfg: NetworkConfig, eth0: InterfaceState) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for address, prefixlen in sorted(eth0.addresses):
        iface = ip_interface(f"{address}/{prefixlen}")
        if isinstance(iface, IPv4Interface) and iface.ip in cfg.subnet4:
            out.append((str(iface.ip), 4))
        elif isinstance(iface, IPv6Interface) and cfg.subnet6 is not None and iface.ip in cfg.subnet6:
            out.append((str(iface.ip), 6))
    if not any(family == 4 for _, family in out):
        raise InvalidArgument(f"its eth0 has no IPv4 address in {cfg.subnet4}")
    return out
