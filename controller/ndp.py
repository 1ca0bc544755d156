"""NDP proxy entries for the endpoints' global IPv6 addresses (--ndp-proxy-iface).

Boundary: policy only: which proxy neighbours the upstream interface should
have (one per leased IPv6 address of a network with a subnet6) and which are
leftovers; the kernel work goes through ``Runtime.kernel``.
"""

from __future__ import annotations

import logging
from ipaddress import IPv6Address, IPv6Network

from .errors import InvalidArgument
from .runtime import Runtime

log = logging.getLogger(__name__)


def sync_proxy_neighbours(rt: Runtime) -> int:
    """Enable proxy_ndp on the interface, add a proxy neighbour per IPv6 lease and drop
    those of removed endpoints. Returns how many were missing (each counted as a repair)."""
    iface = rt.ndp_proxy_iface
    assert iface
    kernel = rt.kernel
    index = kernel.link_index(iface)
    if index is None:
        raise InvalidArgument(f"--ndp-proxy-iface {iface}: no such interface in the managed namespace")
    kernel.write_sysctls({f"net/ipv6/conf/{iface}/proxy_ndp": "1"})
    want = {IPv6Address(lease.address) for lease in rt.store.leases() if lease.family == 6}
    ours = [IPv6Network(r.config["subnet6"]) for r in rt.store.networks() if r.config.get("subnet6")]
    present = {IPv6Address(text) for text in kernel.proxy_neighbours(index)}
    for address in present - want:
        if any(address in net for net in ours):
            kernel.remove_proxy_neighbour(index, address)  # left by a removed endpoint
    missing = want - present
    for address in sorted(missing):
        log.warning("proxy neighbour %s on %s was missing; re-added", address, iface)
        kernel.ensure_proxy_neighbour(index, address)
        rt.observer.reconcile_repair("proxy_neighbour")
    return len(missing)
