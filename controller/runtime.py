"""What the network and endpoint services share inside one daemon.

Boundary: a plain container; it owns no behaviour. ``kernel`` is the services'
only way into the kernel (``bpfnet.kernel``); by default it is the netlink
implementation over ``ipr``, the IPRoute of the managed namespace. ``observer``
hears what the services do (``bpfnet.observer``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from .config import DEFAULT_ADDRESS_POOLS, AddressPool
from .datapath import Datapath
from .datapath.abi import DEFAULT_MAX_ENDPOINTS, ENDPOINT_VETH
from .kernel import Kernel, NetlinkKernel
from .observer import NullObserver, Observer
from .state import Store


@dataclass
class Runtime:
    store: Store
    datapath: Datapath
    ipr: Any  # pyroute2.IPRoute of the managed namespace (None with a KERNEL given)
    hostns: str | None  # name of the managed namespace, None = the daemon's own
    outer_prefixes: list[IPv4Network | IPv6Network] = field(default_factory=list)
    ndp_proxy_iface: str | None = None
    # where networks created without a subnet get one (--default-address-pool)
    address_pools: tuple[AddressPool, ...] = DEFAULT_ADDRESS_POOLS
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS  # endpoint slots; the datapath gets the same value
    ip_forward: bool = True  # --ip-forward: networks turn on the namespace's forwarding
    endpoint_device: str = ENDPOINT_VETH  # what new endpoints' device pairs are: veth or netkit (resolved)
    # One lock for every mutation: kernel state and SQLite move together.
    lock: threading.RLock = field(default_factory=threading.RLock)
    kernel: Kernel = None  # type: ignore[assignment]  # filled in from ipr below
    observer: Observer = field(default_factory=NullObserver)

    def __post_init__(self) -> None:
        if self.kernel is None:
            self.kernel = NetlinkKernel(self.ipr)
