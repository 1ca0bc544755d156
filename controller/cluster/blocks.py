"""Routed networks in the cluster store: each node's block of a network's subnet (flannel's
subnet leases), and the network's settings every node must share.

Boundary: etcd I/O through the node's ``EtcdStore`` (the same client, requests and error
handling), plus the pure block arithmetic; no kernel, no local state. Keys::

    /bpfnet/v1/routed/<network>/config          {"subnet4", "subnet6", "host_prefix", "host_prefix6"}
    /bpfnet/v1/routed/<network>/blocks/<a_b>    {"node", "address", "link_local"} (a_b: block, '/' as '_')

A block is claimed by a compare-and-create transaction (create revision 0), or taken over from a
node that is no longer alive (its node key, held by the node's lease, is gone) by a transaction
comparing the key's version: two nodes never hold one block. A node keeps its block across a
restart (it finds its own name on it) and gives it up when it removes the network; the blocks of
a node whose lease expired are free for others and their routes go away everywhere.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from ..errors import Conflict, Exhausted, InvalidArgument
from .model import NODES, ROUTED
from .store import EtcdStore, _absent, _b64, _delete, _put, _range_end, _unb64, _version_is

DEFAULT_HOST_PREFIX4 = 24
DEFAULT_HOST_PREFIX6 = 80
MAX_HOST_PREFIX4 = 30  # a block holds the bridge's gateway and at least one endpoint
MAX_HOST_PREFIX6 = 120
CLAIM_TRIES = 8
CANDIDATES = 16  # a claim picks at random among the first free blocks: parallel starts rarely collide

IPNet = IPv4Network | IPv6Network


def config_key(network: str) -> str:
    return f"{ROUTED}{network}/config"


def blocks_prefix(network: str) -> str:
    return f"{ROUTED}{network}/blocks/"


def block_key(network: str, block: IPNet) -> str:
    return blocks_prefix(network) + str(block).replace("/", "_")


def check_host_prefix(subnet: IPNet, host_prefix: int) -> None:
    """SUBNET must hold at least two blocks of /HOST_PREFIX (else routing it is pointless), each
    big enough for a gateway and an endpoint."""
    top = MAX_HOST_PREFIX4 if subnet.version == 4 else MAX_HOST_PREFIX6
    if not subnet.prefixlen < host_prefix <= top:
        raise InvalidArgument(
            f"routed subnet {subnet} is too small for its host blocks of /{host_prefix}: a block must be longer "
            f"than the subnet's /{subnet.prefixlen} (so that every node gets one) and at most /{top}; give a "
            f"bigger subnet or another --host-prefix")


@dataclass(frozen=True)
class Block:
    network: IPNet
    node: str
    address: str  # the node's --advertise-addr: the IPv4 next hop to this block
    link_local: str  # the node's IPv6 link-local address on its uplink: the IPv6 next hop


def pick(subnet: IPNet, host_prefix: int, taken: set[IPNet], preferred: IPNet | None = None,
         rng: random.Random | None = None) -> IPNet | None:
    """A free block of SUBNET: PREFERRED when free, else one of the first free ones at random."""
    if preferred is not None and preferred not in taken and preferred.prefixlen == host_prefix \
            and preferred.subnet_of(subnet):  # type: ignore[arg-type]
        return preferred
    free: list[IPNet] = []
    for block in subnet.subnets(new_prefix=host_prefix):
        if block not in taken:
            free.append(block)
            if len(free) == CANDIDATES:
                break
    if not free:
        return None
    return (rng or random).choice(free)


class BlockStore:
    """This node's view of the routed networks' blocks in etcd."""

    def __init__(self, cluster: EtcdStore) -> None:
        self.cluster = cluster

    @property
    def node(self) -> str:
        return self.cluster.node

    def alive(self) -> set[str]:
        kvs, _ = self.cluster._range(NODES)
        return {key[len(NODES):] for key, _ in kvs}

    def ensure_config(self, network: str, config: dict[str, Any]) -> None:
        """The network's shared settings: stored by the first node, equal on every other one."""
        key = config_key(network)
        text = json.dumps(config, sort_keys=True)
        if self.cluster._txn([_absent(key)], [_put(key, text)]):
            return
        raw, _ = self.cluster._get(key)
        if raw is not None and json.loads(raw) != config:
            theirs = json.loads(raw)
            raise Conflict(f"routed network {network!r} exists in the cluster with subnet {theirs.get('subnet4')}"
                           f"{', ' + str(theirs.get('subnet6')) if theirs.get('subnet6') else ''} and host prefix "
                           f"/{theirs.get('host_prefix')}: create it with the same settings on every node")

    def drop_config(self, network: str) -> None:
        """Forget the network's settings once no node holds a block of it."""
        if not self.blocks(network):
            self.cluster._txn([], [_delete(config_key(network))])

    def blocks(self, network: str) -> list[Block]:
        return [b for b, _ in self._read(blocks_prefix(network)).get(network, [])]

    def all_blocks(self) -> dict[str, list[Block]]:
        """Every routed network's blocks, by network (a network with settings but no block: []); one request."""
        return {network: [b for b, _ in found] for network, found in self._read(ROUTED).items()}

    def _read(self, prefix: str) -> dict[str, list[tuple[Block, int]]]:
        """(block, its key's version) by network, from one range read: a claim's compare must use
        the version of the very read that showed the block free (a later read could show another
        node's fresh claim, and comparing its version would overwrite that claim)."""
        out: dict[str, list[tuple[Block, int]]] = {}
        reply = self.cluster._post("/kv/range", {"key": _b64(prefix), "range_end": _range_end(prefix)})
        for kv in reply.get("kvs", []):
            key = _unb64(kv["key"]).decode()
            network, sep, name = key[len(ROUTED):].partition("/blocks/")
            if not sep:
                out.setdefault(network.removesuffix("/config"), [])  # a network's settings
                continue
            d = json.loads(_unb64(kv.get("value", "")))
            block = Block(ip_network(name.replace("_", "/")), d["node"], d["address"], d.get("link_local", ""))
            out.setdefault(network, []).append((block, int(kv.get("version", 0))))
        return out

    def claim(self, network: str, subnet: IPNet, host_prefix: int, address: str, link_local: str,
              preferred: IPNet | None = None) -> IPNet:
        """This node's block of NETWORK's SUBNET: the one it holds already, else PREFERRED or another
        free one (free: unheld, or held by a node that is not alive), claimed by a transaction."""
        value = json.dumps({"node": self.node, "address": address, "link_local": link_local}, sort_keys=True)
        for _ in range(CLAIM_TRIES):
            read = [(b, v) for b, v in self._read(blocks_prefix(network)).get(network, [])
                    if b.network.version == subnet.version]
            held = [b for b, _ in read]
            mine = [b for b in held if b.node == self.node]
            if mine:
                block = mine[0].network
                if (mine[0].address, mine[0].link_local) != (address, link_local):
                    self.cluster._txn([], [_put(block_key(network, block), value)])
                return block
            alive = self.alive()
            taken = {b.network for b in held if b.node in alive}
            choice = pick(subnet, host_prefix, taken, preferred)
            if choice is None:
                raise Exhausted(f"routed network {network!r}: every /{host_prefix} block of {subnet} is held by a "
                                "node that is alive; give the network a bigger subnet or a longer --host-prefix")
            key = block_key(network, choice)
            version = next((v for b, v in read if b.network == choice), 0)  # 0: never claimed
            compare = _absent(key) if version == 0 else _version_is(key, version)
            if self.cluster._txn([compare], [_put(key, value)]):
                return choice
        raise Conflict(f"routed network {network!r}: other nodes claimed every block this node tried; retry")

    def release(self, network: str, block: IPNet) -> None:
        """Give BLOCK up, when this node holds it."""
        key = block_key(network, block)
        raw, version = self.cluster._get(key)
        if raw is not None and json.loads(raw).get("node") == self.node:
            self.cluster._txn([_version_is(key, version)], [_delete(key)])

