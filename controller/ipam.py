"""IP address management for one network.

Boundary: pure logic over a pool description and the set of addresses already
leased; persistence of leases lives in ``bpfnet.state``. Never hands out the
network address, the IPv4 broadcast or the gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from .errors import Conflict, Exhausted, InvalidArgument

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Pool:
    """Where one network's addresses of one family come from."""

    network: str  # network name, for messages
    subnet: IPNetwork
    range: IPNetwork  # fixed-cidr / ip-range; equal to subnet when not limited
    gateway: IPAddress | None

    def __post_init__(self) -> None:
        if self.range.version != self.subnet.version or not self.range.subnet_of(self.subnet):  # type: ignore[arg-type]
            raise InvalidArgument(f"address range {self.range} is not inside subnet {self.subnet}")

    def reserved(self) -> set[IPAddress]:
        """Addresses never handed out: network address, IPv4 broadcast, gateway."""
        out: set[IPAddress] = {self.subnet.network_address}
        if self.subnet.version == 4 and self.subnet.prefixlen < 31:
            out.add(self.subnet.broadcast_address)
        if self.gateway is not None:
            out.add(self.gateway)
        return out

    def capacity(self) -> int:
        """How many addresses of the range can be leased."""
        return self.range.num_addresses - sum(1 for a in self.reserved() if a in self.range)

    def check_static(self, address: IPAddress, used: AbstractSet[IPAddress]) -> IPAddress:
        """Validate a requested address: inside the subnet, not reserved, free."""
        if address.version != self.subnet.version or address not in self.subnet:
            raise InvalidArgument(f"address {address} is outside network {self.network}'s subnet {self.subnet}")
        if address == self.gateway:
            raise Conflict(f"address {address} is network {self.network}'s gateway")
        if address in self.reserved():
            raise InvalidArgument(f"address {address} is reserved in {self.subnet} (network or broadcast address)")
        if address in used:
            raise Conflict(f"address {address} is already in use on network {self.network}")
        return address

    def allocate(
        self,
        used: AbstractSet[IPAddress],
        requested: IPAddress | None = None,
        preferred: IPAddress | None = None,
        start: int = 0,
    ) -> IPAddress:
        """Pick an address: the requested one (checked), else preferred if usable, else the next free.

        The search for the next free address begins START addresses into the
        range: a caller that knows every address below that is taken (see
        offset()) spares walking past them, which made each add O(N).
        """
        if requested is not None:
            return self.check_static(requested, used)
        reserved = self.reserved()
        if (
            preferred is not None
            and preferred in self.range
            and preferred not in reserved
            and preferred not in used
        ):
            return preferred
        for candidate in self._candidates(start):
            if candidate not in reserved and candidate not in used:
                return candidate
        raise Exhausted(
            f"network {self.network} is full: all {self.capacity()} addresses of "
            f"{self.range} are in use"
        )

    def offset(self, address: IPAddress) -> int:
        """Position of ADDRESS in the range (what allocate's start counts)."""
        return int(address) - int(self.range.network_address)

    def _candidates(self, start: int) -> Iterable[IPAddress]:
        # Walk the range in order; for a huge IPv6 range stop after a bound that
        # is far above any realistic endpoint count instead of iterating 2^64.
        first = int(self.range.network_address)
        limit = min(self.range.num_addresses, 1 << 24)
        make = type(self.range.network_address)
        return (make(first + i) for i in range(start, limit))


def parse_address(text: str, what: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        raise InvalidArgument(f"malformed {what} {text!r}: not an IP address") from None
