"""Published ports: parsing ``--publish`` specs, picking free host ports, deciding which collide.

Boundary: pure, no I/O. A spec is Docker's ``[HOST_IP:]HOST_PORT:ENDPOINT_PORT[/tcp|/udp]``,
with ranges of equal length on both sides (``8000-8003:80-83``); a range becomes one
``PortMapping`` per port, as dockerd expands it. As with ``docker run -p``, the host port may
also be left to bpfnet: ``ENDPOINT_PORT`` alone or ``HOST_IP::ENDPOINT_PORT`` (a free port of
the ephemeral range), ``LOW-HIGH:ENDPOINT_PORT`` (a free port of that range): a ``PortChoice``,
resolved against what is published by ``assign``. Whether the host has HOST_IP is the
service's question (it needs the kernel); everything a spec says by itself is checked here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from ..errors import Exhausted, InvalidArgument

PROTOCOLS = ("tcp", "udp")
MAX_RANGE = 1024  # ports one spec may publish: each is a rule and three counters
MAX_PUBLISH = 64  # specs per endpoint
# Where `-p ENDPOINT_PORT` picks its host port: dockerd's portallocator default range.
EPHEMERAL = (49153, 65535)
_PORTS = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")


@dataclass(frozen=True, order=True)
class PortMapping:
    """One published port. host_ip None: every address of the host (both families)."""

    proto: str
    host_port: int
    endpoint_port: int
    host_ip: IPv4Address | IPv6Address | None = None

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.host_ip is None else (self.host_ip.version,)

    def collides(self, other: PortMapping) -> bool:
        """Same protocol and host port, and the host addresses overlap: equal, or one of them
        is "every address" of a family the other uses (dockerd refuses those too)."""
        if (self.proto, self.host_port) != (other.proto, other.host_port):
            return False
        return bool(set(self.families) & set(other.families)) and (
            self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip)

    def to_json(self) -> dict[str, Any]:
        return {"host_ip": str(self.host_ip) if self.host_ip is not None else None,
                "host_port": self.host_port, "endpoint_port": self.endpoint_port, "proto": self.proto}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PortMapping:
        host = data.get("host_ip")
        return cls(str(data["proto"]), int(data["host_port"]), int(data["endpoint_port"]),
                   ip_address(host) if host else None)

    def __str__(self) -> str:
        host = "" if self.host_ip is None else (
            f"[{self.host_ip}]:" if self.host_ip.version == 6 else f"{self.host_ip}:")
        return f"{host}{self.host_port}:{self.endpoint_port}/{self.proto}"


@dataclass(frozen=True)
class PortChoice:
    """A spec whose host port is bpfnet's to pick: the first free one in [low, high]."""

    proto: str
    low: int
    high: int
    endpoint_port: int
    host_ip: IPv4Address | IPv6Address | None = None

    def candidates(self) -> list[PortMapping]:
        return [PortMapping(self.proto, port, self.endpoint_port, self.host_ip)
                for port in range(self.low, self.high + 1)]

    def __str__(self) -> str:
        host = "" if self.host_ip is None else (
            f"[{self.host_ip}]:" if self.host_ip.version == 6 else f"{self.host_ip}:")
        return f"{host}{self.low}-{self.high}:{self.endpoint_port}/{self.proto}"


def _port_range(text: str, spec: str, what: str) -> tuple[int, int]:
    m = _PORTS.match(text)
    if not m:
        raise InvalidArgument(f"--publish {spec!r}: {what} {text!r} is not a port or a range like 8000-8003")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) is not None else low
    for port in (low, high):
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"--publish {spec!r}: {what} {port} is out of range 1-65535")
    if high < low:
        raise InvalidArgument(f"--publish {spec!r}: {what} range {text} ends before it starts")
    return low, high


def parse_spec(spec: str) -> list[PortMapping] | PortChoice:
    """One ``--publish`` value -> its mappings (one per port of a range), or the choice it
    leaves to bpfnet (no host port, or a host range for one endpoint port)."""
    if not isinstance(spec, str) or not spec:
        raise InvalidArgument("--publish: expected [HOST_IP:]HOST_PORT:ENDPOINT_PORT[/tcp|/udp]")
    body, slash, proto = spec.partition("/")
    proto = proto.lower() if slash else "tcp"
    if proto not in PROTOCOLS:
        raise InvalidArgument(f"--publish {spec!r}: protocol {proto!r} is not tcp or udp")
    host_ip: IPv4Address | IPv6Address | None = None
    if body.startswith("["):
        address, sep, rest = body[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise InvalidArgument(f"--publish {spec!r}: write an IPv6 host address as [ADDRESS]:PORT:PORT")
        try:
            host_ip = IPv6Address(address)
        except ValueError:
            raise InvalidArgument(f"--publish {spec!r}: {address!r} is not an IPv6 address") from None
        body = rest[1:]
        if ":" not in body:
            raise InvalidArgument(f"--publish {spec!r}: expected [ADDRESS]:[HOST_PORT]:ENDPOINT_PORT")
    parts = body.split(":")
    if len(parts) > 3 and host_ip is None:
        raise InvalidArgument(f"--publish {spec!r}: too many ':'; an IPv6 host address goes in brackets: "
                              "[ADDRESS]:HOST_PORT:ENDPOINT_PORT")
    if len(parts) == 3 and host_ip is None:
        address = parts.pop(0)
        try:
            host_ip = IPv4Address(address)
        except ValueError:
            raise InvalidArgument(f"--publish {spec!r}: {address!r} is not an IPv4 address "
                                  "(IPv6 goes in brackets)") from None
    if len(parts) == 1 and host_ip is None:
        parts.insert(0, "")  # `-p 80`: the host port is bpfnet's to pick
    if len(parts) != 2:
        raise InvalidArgument(f"--publish {spec!r}: expected [HOST_IP:]HOST_PORT:ENDPOINT_PORT[/tcp|/udp]")
    if host_ip is not None and (host_ip.is_unspecified or host_ip.is_multicast):
        if host_ip.is_unspecified:
            host_ip = None  # 0.0.0.0 / :: as Docker: every address (of both families)
        else:
            raise InvalidArgument(f"--publish {spec!r}: {host_ip} is a multicast address")
    e_low, e_high = _port_range(parts[1], spec, "endpoint port")
    if not parts[0]:
        if e_high != e_low:
            raise InvalidArgument(f"--publish {spec!r}: an endpoint port range needs a host port range "
                                  "of the same length")
        return PortChoice(proto, EPHEMERAL[0], EPHEMERAL[1], e_low, host_ip)
    h_low, h_high = _port_range(parts[0], spec, "host port")
    if e_high == e_low and h_high != h_low:
        return PortChoice(proto, h_low, h_high, e_low, host_ip)  # Docker: any free port of the range
    if h_high - h_low != e_high - e_low:
        raise InvalidArgument(f"--publish {spec!r}: the host and endpoint port ranges differ in length")
    if h_high - h_low + 1 > MAX_RANGE:
        raise InvalidArgument(f"--publish {spec!r}: at most {MAX_RANGE} ports per spec")
    return [PortMapping(proto, h_low + i, e_low + i, host_ip) for i in range(h_high - h_low + 1)]


def parse_publish(spec: str) -> list[PortMapping]:
    """One ``--publish`` value that names its host ports -> its mappings."""
    out = parse_spec(spec)
    if isinstance(out, PortChoice):
        raise InvalidArgument(f"--publish {spec!r}: no host port given")
    return out


def parse_all(specs: list[str]) -> list[PortMapping]:
    """Every spec of one endpoint, all naming their host ports; a port given twice (or
    colliding within the list) is an error."""
    return assign(specs, [])


def assign(specs: list[str], published: list[PortMapping]) -> list[PortMapping]:
    """Every spec of one endpoint -> its mappings, host ports left to bpfnet picked as the
    first free in their range (free: colliding neither with PUBLISHED nor with the request's
    own). A port given twice within the request is an error; a range with no free port is
    refused (collisions with PUBLISHED of named ports are the caller's to report)."""
    fixed: list[PortMapping] = []
    choices: list[PortChoice] = []
    for spec in specs:
        parsed = parse_spec(spec)
        if isinstance(parsed, PortChoice):
            choices.append(parsed)
            continue
        for mapping in parsed:
            clash = next((m for m in fixed if m.collides(mapping)), None)
            if clash is not None:
                raise InvalidArgument(f"--publish {mapping} collides with {clash} given in the same request")
            fixed.append(mapping)
    out = list(fixed)
    for choice in choices:
        pick = next((c for c in choice.candidates()
                     if not any(c.collides(m) for m in out) and not any(c.collides(m) for m in published)),
                    None)
        if pick is None:
            raise Exhausted(f"--publish {choice}: no free host port in {choice.low}-{choice.high}")
        out.append(pick)
    return out


def first_collision(new: list[PortMapping], existing: list[tuple[str, PortMapping]]
                    ) -> tuple[PortMapping, str, PortMapping] | None:
    """(new mapping, owner, its mapping) of the first collision with EXISTING (owner, mapping) pairs."""
    for mapping in new:
        for owner, other in existing:
            if mapping.collides(other):
                return mapping, owner, other
    return None
