"""What the network and endpoint services share inside one daemon.

Boundary: a plain container; it owns no behaviour beyond handing out the
netlink socket of the managed namespace under the daemon's lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from .datapath import Datapath
from .datapath.abi import DEFAULT_MAX_ENDPOINTS
from .state import Store


@dataclass
class Runtime:
    store: Store
    datapath: Datapath
    ipr: Any  # pyroute2.IPRoute of the managed namespace
    hostns: str | None  # name of the managed namespace, None = the daemon's own
    outer_prefixes: list[IPv4Network | IPv6Network] = field(default_factory=list)
    ndp_proxy_iface: str | None = None
    max_endpoints: int = DEFAULT_MAX_ENDPOINTS  # endpoint slots; the datapath gets the same value
    # One lock for every mutation: kernel state and SQLite move together.
    lock: threading.RLock = field(default_factory=threading.RLock)
    hooks: dict[str, Any] = field(default_factory=dict)
