"""The bridge driver: today's (and Docker's default) network, a Linux bridge per network.

Boundary: the bridge of a network (made, or adopted when it exists: dockerd's ``-b``), its
gateway addresses, the sysctls it needs, and the endpoints' veth pairs on it. What bpfnet
added is recorded (``NetworkConfig.owned``) so that removal takes away only that. No policy
about names or addresses: the services decide; the kernel work goes through ``Runtime.kernel``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from ipaddress import IPv6Address
from typing import Any

from ..addressing import mac_from_ipv4
from ..config import NetworkConfig
from ..datapath.abi import ENDPOINT_NETKIT
from ..kernel import Kernel
from ..model import InterfaceConfig
from ..rollback import Rollback
from ..runtime import Runtime
from ..state import EndpointRow
from .interface import NetworkDriver

log = logging.getLogger(__name__)
LINK_LOCAL_GATEWAY = IPv6Address("fe80::1")


def debug_pause(stage: str) -> None:
    """Crash-recovery tests set BPFNET_DEBUG_PAUSE=STAGE:SECONDS to SIGKILL the daemon mid-operation."""
    spec = os.environ.get("BPFNET_DEBUG_PAUSE", "")
    if spec.partition(":")[0] == stage:
        log.warning("BPFNET_DEBUG_PAUSE: pausing at %s", stage)
        time.sleep(float(spec.partition(":")[2] or 30))


def _deleter(kernel: Kernel, index: int, address: str, prefixlen: int) -> Callable[[], None]:
    return lambda: kernel.delete_address(index, address, prefixlen)


class BridgeDriver(NetworkDriver):
    name = "bridge"

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    # networks
    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        return self.ensure_bridge(cfg, rb)[1]

    def restore_network(self, cfg: NetworkConfig, network_id: int) -> dict[str, Any]:
        with Rollback(f"restore network {cfg.name}") as rb:
            return self.ensure_bridge(cfg, rb)[1]

    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        self.remove_bridge(cfg)

    def ensure_bridge(self, cfg: NetworkConfig, rb: Rollback) -> tuple[int, dict[str, Any]]:
        """(ifindex, what bpfnet added: {"bridge": made it?, "addresses": [...], "mac"}): an existing
        bridge is taken over, and what was on it before is never recorded as bpfnet's."""
        kernel = self.rt.kernel
        index, created = kernel.ensure_bridge(cfg.bridge, mac_from_ipv4(cfg.gateway4), cfg.mtu)
        owned: dict[str, Any] = {"bridge": created, "addresses": []}
        before: set[str] = set()
        if created:
            rb.push(f"bridge {cfg.bridge}", lambda: kernel.delete_link(cfg.bridge))
        else:
            before = {f"{a}/{p}" for a, p in kernel.link_addresses(index)}
            mac = next((li.mac for li in kernel.dump_links() if li.index == index), "")
            if mac:
                owned["mac"] = mac  # the datapath answers with the bridge's own MAC
        # --ip-forward=false (dockerd's): the host's forwarding is left as it is
        sysctls = {"net/ipv4/ip_forward": "1"} if self.rt.ip_forward else {}
        if cfg.ipv6:
            if self.rt.ip_forward:
                sysctls["net/ipv6/conf/all/forwarding"] = "1"
            sysctls.update({
                f"net/ipv6/conf/{cfg.bridge}/accept_dad": "0",
                f"net/ipv6/conf/{cfg.bridge}/disable_ipv6": "0",
            })
        kernel.write_sysctls(sysctls)
        wanted: list[tuple[str, int, bool]] = [(str(cfg.gateway4), cfg.subnet4.prefixlen, False)]
        if cfg.ipv6:
            wanted.append((str(LINK_LOCAL_GATEWAY), 64, True))
            if cfg.subnet6 is not None and cfg.gateway6 is not None:
                wanted.append((str(cfg.gateway6), cfg.subnet6.prefixlen, True))
        for address, prefixlen, nodad in wanted:
            kernel.ensure_address(index, address, prefixlen, nodad=nodad)
            key = f"{address}/{prefixlen}"
            if key not in before:
                owned["addresses"].append(key)
                if not created:
                    rb.push(f"address {key} on {cfg.bridge}", _deleter(kernel, index, address, prefixlen))
        if cfg.ipv6 and cfg.range6 is not None and cfg.range6 != cfg.subnet6:
            kernel.ensure_route_via(str(cfg.range6), index)
            if not created:
                owned["routes"] = [str(cfg.range6)]  # bpfnet's: the range is a piece of its network
                rb.push(f"route {cfg.range6} via {cfg.bridge}", lambda: kernel.delete_route_via(str(cfg.range6), index))
        return index, owned

    def remove_bridge(self, cfg: NetworkConfig) -> None:
        """Delete what bpfnet added: the bridge if it made it, else only its addresses on it."""
        if cfg.owns_bridge:
            self.rt.kernel.delete_link(cfg.bridge)
            return
        index = self.rt.kernel.link_index(cfg.bridge)
        if index is None:
            return
        for dst in (cfg.owned or {}).get("routes", []):
            self.rt.kernel.delete_route_via(dst, index)
        for key in (cfg.owned or {}).get("addresses", []):
            address, _, prefixlen = key.rpartition("/")
            self.rt.kernel.delete_address(index, address, int(prefixlen))
        log.info("bridge %s was not made by bpfnet: left in place with its own addresses", cfg.bridge)

    # endpoints
    def join(self, cfg: NetworkConfig, row: EndpointRow, iface: InterfaceConfig | None, rb: Rollback) -> int:
        kernel = self.rt.kernel
        bridge = kernel.link_index(cfg.bridge)
        if bridge is None:
            raise RuntimeError(f"bridge {cfg.bridge} of network {row.network} is missing")
        # Without IPv6 the host end must not come up before disable_ipv6 is set on it.
        # A veth or netkit pair (--endpoint-device), the host end a port of the bridge either way.
        create = kernel.create_netkit if self.rt.endpoint_device == ENDPOINT_NETKIT else kernel.create_veth
        index, eth0 = create(row.host_ifname, row.netns, row.mac, cfg.mtu, bridge, up=cfg.ipv6,
                             peer_ifname=row.ifname)
        # Deleting the host end deletes eth0 too (also in an adopted namespace).
        rb.push(f"veth {row.host_ifname}", lambda: kernel.delete_link(row.host_ifname))
        debug_pause("endpoint-add-after-veth")
        if not cfg.ipv6:
            kernel.write_sysctls({f"net/ipv6/conf/{row.host_ifname}/disable_ipv6": "1"})
            kernel.set_up(index)
        if iface is not None:
            kernel.configure_interface(row.netns, eth0, iface)
        return index

    def leave(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        self.rt.kernel.delete_link(row.host_ifname)
