"""The cluster store's data model: key layout, records, and the view a daemon keeps of it.

Boundary: pure (no I/O). ``store.py`` moves these records in and out of etcd; this module
says what the keys are, what the values hold, and how a stream of (key, value) changes folds
into a ``ClusterView`` (which nodes are alive, which endpoints are remote and where).

Key layout (every key under ``/bpfnet/v1/``; values are JSON):

=====================================  ==============================================  =========
key                                    value                                           lifetime
=====================================  ==============================================  =========
``nodes/<node>``                       ``{"name", "address", "started"}``              node lease
``networks/<network>``                 the network's config (``NetworkConfig.to_json``) until rm
``vnis/<vni>``                         the network's name (a VNI is taken once)        until rm
``meta/networks``                      a counter bumped by every network create/rm     always
                                       (the overlap check's compare target)
``meta/ula_prefix``                    the cluster's IPv6 ULA /48 (picked once)        always
``leases/<network>/<address>``         ``{"node", "endpoint"}``                        until rm
``endpoints/<network>/<node>/<name>``  ``{"node", "name", "network", "ipv4", "ipv6",   until rm
                                       "mac", "vtep"}``
=====================================  ==============================================  =========

Only a node's own key is bound to its lease: when the lease expires (the daemon died or lost
etcd for longer than the TTL) the others stop forwarding to its endpoints, but its endpoints
and their address leases stay, so a node that comes back (or restarts) finds them and
reconciles; nothing of it is handed to another node meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidArgument

PREFIX = "/bpfnet/v1/"
NODES = PREFIX + "nodes/"
NETWORKS = PREFIX + "networks/"
VNIS = PREFIX + "vnis/"
LEASES = PREFIX + "leases/"
ENDPOINTS = PREFIX + "endpoints/"
ROUTED = PREFIX + "routed/"  # routed networks' settings and per-node blocks (blocks.py)
NETWORKS_VERSION = PREFIX + "meta/networks"
ULA_PREFIX = PREFIX + "meta/ula_prefix"  # the cluster's IPv6 /48 for overlay networks without --subnet6
# VXLAN network identifiers: 24 bits; like Docker's overlay, picked from 4096 up, unless given.
VNI_MIN, VNI_MAX, VNI_FIRST = 1, (1 << 24) - 1, 4096
DEFAULT_TTL = 10  # seconds a node's lease lives without a keepalive
ETCD_DEFAULT_PORT = 2379


def node_key(node: str) -> str:
    return f"{NODES}{node}"


def network_key(network: str) -> str:
    return f"{NETWORKS}{network}"


def vni_key(vni: int) -> str:
    return f"{VNIS}{vni}"


def lease_key(network: str, address: str) -> str:
    return f"{LEASES}{network}/{address}"


def leases_prefix(network: str) -> str:
    return f"{LEASES}{network}/"


def endpoint_key(network: str, node: str, name: str) -> str:
    return f"{ENDPOINTS}{network}/{node}/{name}"


@dataclass(frozen=True)
class Node:
    name: str
    address: str  # the VTEP: --advertise-addr
    started: float = 0.0


@dataclass(frozen=True)
class ClusterEndpoint:
    """An endpoint of an overlay network, as every node learns it."""

    network: str
    node: str
    name: str
    ipv4: IPv4Address
    mac: str
    vtep: IPv4Address  # its node's --advertise-addr
    ipv6: tuple[IPv6Address, ...] = ()

    @property
    def key(self) -> str:
        return endpoint_key(self.network, self.node, self.name)

    @property
    def addresses(self) -> list[str]:
        return [str(self.ipv4), *map(str, self.ipv6)]

    def to_json(self) -> str:
        d = asdict(self)
        d.update(ipv4=str(self.ipv4), vtep=str(self.vtep), ipv6=[str(a) for a in self.ipv6])
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> ClusterEndpoint:
        d = json.loads(raw)
        return cls(network=d["network"], node=d["node"], name=d["name"], ipv4=IPv4Address(d["ipv4"]),
                   mac=d["mac"], vtep=IPv4Address(d["vtep"]), ipv6=tuple(IPv6Address(a) for a in d["ipv6"]))


@dataclass
class ClusterView:
    """What a daemon knows of the cluster, folded from the store's keys (``apply``).

    ``alive``: nodes whose lease key exists. ``remote(node)``: endpoints of other nodes
    whose node is alive, the ones the datapath forwards to.
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, ClusterEndpoint] = field(default_factory=dict)  # by key
    leases: dict[str, set[str]] = field(default_factory=dict)  # network -> addresses

    def apply(self, key: str, value: bytes | None) -> None:
        """One change: VALUE None is a deletion. Unknown keys are ignored."""
        if key.startswith(NODES):
            name = key[len(NODES):]
            if value is None:
                self.nodes.pop(name, None)
            else:
                d = json.loads(value)
                self.nodes[name] = Node(d["name"], d["address"], float(d.get("started", 0.0)))
        elif key.startswith(NETWORKS):
            name = key[len(NETWORKS):]
            if value is None:
                self.networks.pop(name, None)
            else:
                self.networks[name] = json.loads(value)
        elif key.startswith(ENDPOINTS):
            if value is None:
                self.endpoints.pop(key, None)
            else:
                self.endpoints[key] = ClusterEndpoint.from_json(value)
        elif key.startswith(LEASES):
            network, _, address = key[len(LEASES):].rpartition("/")
            if value is None:
                self.leases.get(network, set()).discard(address)
            else:
                self.leases.setdefault(network, set()).add(address)

    def remote(self, me: str) -> dict[str, ClusterEndpoint]:
        """Endpoints of the other nodes that are alive, by key."""
        return {k: e for k, e in self.endpoints.items() if e.node != me and e.node in self.nodes}

    def mine(self, me: str) -> dict[str, ClusterEndpoint]:
        return {k: e for k, e in self.endpoints.items() if e.node == me}


def parse_store_url(url: str) -> list[tuple[str, int]]:
    """``etcd://HOST:PORT[,HOST:PORT…]`` -> [(host, port), …]; IPv6 hosts in brackets."""
    if not url.startswith("etcd://"):
        raise InvalidArgument(f"--cluster-store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in url[len("etcd://"):].split(","):
        try:
            split = urlsplit(f"//{part.strip()}")
            host, port = split.hostname, split.port
        except ValueError:
            host, port = None, None
        if not host or split.path or split.query or split.username:
            raise InvalidArgument(f"--cluster-store {url!r}: {part!r} is not HOST:PORT")
        out.append((host, port or ETCD_DEFAULT_PORT))
    return out


def pick_vni(taken: Iterable[int]) -> int:
    """The lowest free VNI from VNI_FIRST (Docker's overlay starts there too)."""
    used = set(taken)
    for vni in range(VNI_FIRST, VNI_MAX + 1):
        if vni not in used:
            return vni
    raise InvalidArgument("every VNI is in use")


def check_vni(vni: Any) -> int:
    if not isinstance(vni, int) or isinstance(vni, bool) or not VNI_MIN <= vni <= VNI_MAX:
        raise InvalidArgument(f"vni: expected an integer from {VNI_MIN} to {VNI_MAX}, got {vni!r}")
    return vni


def check_advertise_addr(addr: str) -> IPv4Address:
    """--advertise-addr: the IPv4 address other nodes reach this one at (the VTEP)."""
    try:
        a = ip_address(addr)
    except ValueError:
        raise InvalidArgument(f"--advertise-addr {addr!r} is not an IP address") from None
    if not isinstance(a, IPv4Address) or a.is_unspecified or a.is_multicast or a.is_loopback:
        raise InvalidArgument(f"--advertise-addr {addr}: expected a unicast IPv4 address of this host "
                              "(the VXLAN underlay is IPv4)")
    return a
