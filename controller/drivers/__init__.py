"""Network drivers: one per kind of network (bridge, overlay, ...), chosen by ``network create --driver``.

Boundary: entered from the services only (``networks.py``, ``endpoints.py``) through the typed
interface in ``interface.py``; a driver uses the kernel adapters, the datapath and (overlay) the
cluster store, never the services, the API or the face.
"""

from __future__ import annotations

from ..errors import InvalidArgument
from .interface import AddressTaken, EndpointAddresses, NetworkDriver

__all__ = ["AddressTaken", "Drivers", "EndpointAddresses", "NetworkDriver"]


class Drivers:
    """The drivers a daemon serves, by name."""

    def __init__(self, *drivers: NetworkDriver) -> None:
        self._by_name: dict[str, NetworkDriver] = {}
        for d in drivers:
            self.add(d)

    def add(self, driver: NetworkDriver) -> None:
        self._by_name[driver.name] = driver

    def get(self, name: str) -> NetworkDriver:
        driver = self._by_name.get(name)
        if driver is None and name == "overlay":
            raise InvalidArgument("the overlay driver needs a cluster store: start the daemon with "
                                  "--cluster-store etcd://HOST:PORT --advertise-addr IP")
        if driver is None:
            raise InvalidArgument(f"unknown network driver {name!r} (this daemon has: {', '.join(self.names())})")
        return driver

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def all(self) -> list[NetworkDriver]:
        return [self._by_name[n] for n in self.names()]
