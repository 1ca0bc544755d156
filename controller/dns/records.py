"""What the embedded resolver answers, per network (pure).

Boundary: from the networks and endpoints (plain values the service reads from the store)
to the resolver's state document (JSON, handed to the resolver process in a file), and from
that document to the prepared answers the resolver serves. Each network sees only its own
endpoints: a name, alias or hostname, bare and as ``NAME.NETWORK``, maps to the endpoint's
IPv4 and global IPv6 addresses; each address maps back (PTR) to ``NAME.NETWORK``. Only the
network's own subnets may ask: another network's endpoint can reach this network's gateway
through the host, and is REFUSED there (by subnet, not by the endpoint list, so a new endpoint
is never refused while the resolver loads the state that names it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any

from . import wire
from .rules import reverse_name

# Every state document holds every name and address again (an endpoint add hands over the whole
# state): the per-name work is cached, so a reload costs dictionary look-ups for what did not
# change (at 1000 endpoints this took an endpoint add from ~100 ms of DNS work to a few).
CACHE = 1 << 16


@lru_cache(maxsize=CACHE)
def packed(address: str) -> bytes:
    return ip_address(address).packed


@lru_cache(maxsize=CACHE)
def ptr_name(address: str) -> str:
    return reverse_name(ip_address(address))


@lru_cache(maxsize=CACHE)
def name_wire(name: str) -> bytes:
    return wire.encode_name(name)


@lru_cache(maxsize=CACHE)
def _answers(addresses: tuple[str, ...]) -> dict[int, tuple[int, bytes]]:
    v4 = [packed(a) for a in addresses if ":" not in a]
    v6 = [packed(a) for a in addresses if ":" in a]
    rr4 = b"".join(wire.rr(wire.QTYPE_A, TTL, a) for a in v4)
    rr6 = b"".join(wire.rr(wire.QTYPE_AAAA, TTL, a) for a in v6)
    return {wire.QTYPE_A: (len(v4), rr4), wire.QTYPE_AAAA: (len(v6), rr6),
            wire.QTYPE_ANY: (len(v4) + len(v6), rr4 + rr6)}


@lru_cache(maxsize=CACHE)
def _ptr_answer(target: str) -> tuple[int, bytes]:
    return (1, wire.rr(wire.QTYPE_PTR, TTL, wire.encode_name(target)))

TTL = 600  # what Docker's embedded DNS gives its records
STATE_VERSION = 1


@dataclass(frozen=True)
class NetworkView:
    id: int
    name: str
    listen: tuple[str, ...]  # the gateway addresses the resolver answers this network on
    subnets: tuple[str, ...] = ()  # who may ask: addresses in these (the network's own endpoints)


@dataclass(frozen=True)
class EndpointView:
    name: str
    network: str
    addresses: tuple[str, ...]  # IPv4 and global IPv6
    hostname: str = ""
    aliases: tuple[str, ...] = ()
    upstreams: tuple[str, ...] | None = None  # the endpoint's own --dns (None: the daemon's)


@dataclass
class State:
    generation: int
    owner: str
    upstreams: tuple[str, ...]
    networks: Sequence[NetworkView]
    endpoints: Sequence[EndpointView]
    netns: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        nets: dict[str, dict[str, Any]] = {
            n.name: {"id": n.id, "name": n.name, "listen": list(n.listen), "subnets": list(n.subnets), "names": {},
                     "ptr": {}}
            for n in self.networks}
        clients: dict[str, list[str]] = {}
        for ep in self.endpoints:
            net = nets.get(ep.network)
            if net is None:
                continue
            for name in names_of(ep):
                net["names"].setdefault(name, [])
                net["names"][name] += [a for a in ep.addresses if a not in net["names"][name]]
            for a in ep.addresses:
                net["ptr"][ptr_name(a)] = f"{ep.name}.{ep.network}".lower()
                if ep.upstreams is not None:
                    clients[a] = list(ep.upstreams)
        return {"version": STATE_VERSION, "generation": self.generation, "owner": self.owner,
                "netns": self.netns, "upstreams": list(self.upstreams), "networks": list(nets.values()),
                "clients": clients, **self.extra}


def names_of(ep: EndpointView) -> list[str]:
    """Every name ENDPOINT answers to in its network, lowercased, without duplicates."""
    bare = [ep.name.lower()] + ([ep.hostname.lower()] if ep.hostname else []) + [a.lower() for a in ep.aliases]
    out: list[str] = []
    for name in bare + [f"{n}.{ep.network.lower()}" for n in bare]:
        if name not in out:
            out.append(name)
    return out


# --- prepared answers ------------------------------------------------------------------------
Answers = dict[bytes, dict[int, tuple[int, bytes]]]  # name (wire, lowercase) -> qtype -> (ancount, records)


def compile_network(net: dict[str, Any]) -> Answers:
    """The answers of one network of the state document: A, AAAA (and ANY: both) for every
    name, PTR for every address. A name without records of the asked type answers NOERROR
    with no records (NODATA), as a name that exists must."""
    out: Answers = {}
    for name, addresses in net.get("names", {}).items():
        out[name_wire(name)] = dict(_answers(tuple(addresses)))
    for rev, target in net.get("ptr", {}).items():
        out.setdefault(name_wire(rev), {})[wire.QTYPE_PTR] = _ptr_answer(target)
    return out


def local_suffixes(networks: Iterable[dict[str, Any]]) -> tuple[bytes, ...]:
    """Wire-form endings of names that are bpfnet's to answer (".NETWORK" for every network):
    such a name that a network does not know is NXDOMAIN there, never forwarded, so names of
    other networks are neither disclosed nor sent upstream."""
    return tuple(name_wire(str(n["name"])) for n in networks)


def datapath_names(state: dict[str, Any]) -> dict[tuple[int, bytes], tuple[tuple[bytes, ...], tuple[bytes, ...]]]:
    """What the datapath answers itself (bpf/dns.h): (network id, name in wire form) -> (IPv4s,
    IPv6s) packed, for every name of the state document. The datapath leaves out what does not
    fit its map; the resolver process answers those."""
    out: dict[tuple[int, bytes], tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
    for net in state.get("networks", []):
        for name, addresses in net.get("names", {}).items():
            v4 = tuple(packed(a) for a in addresses if ":" not in a)
            v6 = tuple(packed(a) for a in addresses if ":" in a)
            out[(int(net["id"]), name_wire(name))] = (v4, v6)
    return out


def reverse_address(key: bytes) -> IPv4Address | IPv6Address | None:
    """The address a full reverse name (wire form) stands for: d.c.b.a.in-addr.arpa or the 32
    nibbles of an ip6.arpa name; None for anything else (partial names included)."""
    text = wire.name_text(key)
    try:
        if text.endswith(".in-addr.arpa"):
            parts = text[:-len(".in-addr.arpa")].split(".")
            return IPv4Address(".".join(reversed(parts))) if len(parts) == 4 else None
        if text.endswith(".ip6.arpa"):
            nibbles = text[:-len(".ip6.arpa")].split(".")
            if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
                return None
            digits = "".join(reversed(nibbles))
            return IPv6Address(":".join(digits[i:i + 4] for i in range(0, 32, 4)))
    except ValueError:
        return None
    return None
