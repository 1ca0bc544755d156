"""The network driver interface: what a kind of network does in the kernel (libnetwork's driver API).

Boundary: the services (``networks.py``, ``endpoints.py``) decide names, addresses, order and
what to undo; a driver makes and removes the kernel objects of ONE kind of network and of its
endpoints, and keeps whatever outside record the kind needs (the overlay driver: the cluster
store). Every method that makes something registers its undo on the caller's ``Rollback``.

The calls, in libnetwork's words and order:

===================  ========================================================================
``complete``         fill in the driver's defaults of a new network (overlay: VNI, MTU)
``check_network``    before anything is made: refuse a config this driver cannot serve
``create_network``   the network's kernel objects (a bridge, a VXLAN device, ...);
                     returns what it added (``NetworkConfig.owned``)
``restore_network``  at start-up: make sure they exist again (adopt or recreate); returns
                     what it added, as ``create_network``
``prepare_delete_    before anything is removed: refuse, or drop what lives outside this
network``            host (overlay: the network's record in the cluster store)
``delete_network``   remove what ``create_network`` added, and nothing else
``reserved``         addresses the network's pool must not hand out (held elsewhere, e.g.
                     by other hosts of a cluster); the services pick from the rest
``create_endpoint``  the endpoint's record outside the local state (claim its addresses)
``join``             the endpoint's plumbing: the veth pair on the network, its interface
                     configured inside the namespace; returns the host-side ifindex
``leave``            undo ``join`` (best effort, idempotent)
``delete_endpoint``  undo ``create_endpoint`` (best effort, idempotent)
``start``            once at start-up, after the networks are restored and the datapath
                     is loaded (the overlay driver: sync with the cluster, start watching)
``stop``             at shutdown
===================  ========================================================================

Drivers are registered by name in ``bpfnet.drivers.Drivers``; a network records its driver's
name in ``NetworkConfig.driver`` ("bridge" for networks stored before there were drivers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Any, ClassVar

from ..config import NetworkConfig
from ..errors import Conflict
from ..model import InterfaceConfig
from ..rollback import Rollback
from ..state import EndpointRow


class AddressTaken(Conflict):
    """``create_endpoint`` lost a race: another host leased one of the addresses between the
    services' read (``reserved``) and the driver's claim. The services pick again."""


@dataclass(frozen=True)
class EndpointAddresses:
    """What the services decided for a new endpoint: its addresses and MAC."""

    ipv4: IPv4Address
    ipv6: tuple[IPv6Address, ...]
    mac: str


class NetworkDriver(ABC):
    """One kind of network. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str]
    # True: the network exists on every host of a cluster (its record lives in the cluster store).
    scope: ClassVar[str] = "local"
    # True: each endpoint has a host-side veth, where the datapath's programs attach (and the
    # network a bridge, where its bridge program attaches). False (macvlan, ipvlan): the endpoint's
    # link hangs on a physical interface and has no host-side peer; the datapath is not involved.
    host_side: ClassVar[bool] = True
    # True: the endpoint's interface carries the endpoint's own MAC (ipvlan's share the parent's).
    own_mac: ClassVar[bool] = True

    def host_links(self, cfg: NetworkConfig) -> list[str]:
        """Links of the managed namespace whose routes and addresses belong to CFG (its bridge; an
        underlay network's parent): not counted as the host's when checking for overlaps."""
        return [cfg.bridge]

    def complete(self, data: dict[str, Any]) -> dict[str, Any]:
        """A new network's settings with this driver's defaults filled in (before validation)."""
        return data

    def check_network(self, cfg: NetworkConfig) -> None:
        """Raise ``InvalidArgument``/``Conflict`` for a config this driver cannot serve."""

    def prepare_delete_network(self, cfg: NetworkConfig) -> None:
        """Before anything of the network is removed: refuse (raise), or drop what lives outside
        this host (the overlay driver: the network's record in the cluster store)."""

    @abstractmethod
    def create_network(self, cfg: NetworkConfig, network_id: int, rb: Rollback) -> dict[str, Any]:
        """Make the network's kernel objects; returns what was added (``NetworkConfig.owned``)."""

    @abstractmethod
    def restore_network(self, cfg: NetworkConfig, network_id: int) -> dict[str, Any]:
        """At start-up: the network's kernel objects exist again; returns what was added now."""

    @abstractmethod
    def delete_network(self, cfg: NetworkConfig, network_id: int) -> None:
        """Remove what ``create_network`` added."""

    def reserved(self, cfg: NetworkConfig) -> Iterable[str]:
        """Addresses of CFG's subnets that are taken outside the local state."""
        return ()

    def create_endpoint(self, cfg: NetworkConfig, row: EndpointRow, addrs: EndpointAddresses,
                        rb: Rollback) -> None:
        """The endpoint's record outside the local state (nothing for a local network)."""

    def delete_endpoint(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        """Undo ``create_endpoint``; best effort and idempotent."""

    @abstractmethod
    def join(self, cfg: NetworkConfig, row: EndpointRow, iface: InterfaceConfig | None, rb: Rollback) -> int:
        """Plumb the endpoint into the network and give its interface IFACE (None: a handoff
        endpoint, whose runtime configures it); returns the host-side ifindex."""

    @abstractmethod
    def leave(self, cfg: NetworkConfig, row: EndpointRow) -> None:
        """Undo ``join``; raises on failure (the caller collects and reports it)."""

    def start(self) -> None:
        """Once at start-up, after networks are restored and the datapath is loaded."""

    def stop(self) -> None:
        """At shutdown."""

    def describe(self, cfg: NetworkConfig) -> dict[str, Any]:
        """Driver-specific facts for ``network inspect`` (under "driver_state")."""
        return {}
