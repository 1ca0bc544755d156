"""The nftables ruleset of bpfnet's ``inet bpfnet`` table, rendered from a plan.

Boundary: pure, no I/O. ``render(plan, stale_counters)`` is one ``nft -f -`` script that
rebuilds the table's contents in a single transaction (the kernel commits it whole or not
at all, so a rebuild never leaves a moment without rules; connections already NATed keep
their conntrack bindings whatever the rules say). Named counters survive a rebuild
(``add counter`` leaves an existing one alone), so per-port and per-network counters are
monotonic across changes and daemon restarts; counters no longer wanted are deleted in
the same transaction.

The rules are those dockerd writes with ``--userland-proxy=false``, in nftables:
- nat prerouting/output: packets to a local address jump to ``publish``, whose rules DNAT
  each published port to its endpoint (outside clients keep their address);
- nat postrouting: masquerade a network's subnet leaving through any interface that is
  not a bpfnet bridge; masquerade DNATed traffic that the host itself (loopback, its own
  addresses) or an endpoint of the same network sends (hairpin), so replies come back
  through the host's conntrack;
- filter forward/input/output (policy accept, they never drop): counters only.

Counting costs one map lookup per packet whatever the number of networks and ports (a
first version matched one rule per port and network and cost ~650 ns per published-port
packet in ``nft_do_chain``, bench.outside's profile): the masqueraded bytes through
interval maps from a subnet to its counter, the published ports through verdict maps keyed
by what a packet shows after DNAT (protocol, the endpoint's address and port) that jump to a
small chain per such key, where the original host port (and address) picks the counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from .ports import PortMapping

TABLE = "bpfnet"
FAMILY = "inet"
TABLE_REF = f"{FAMILY} {TABLE}"
DIRECTIONS = ("in", "out")


@dataclass(frozen=True)
class NetworkPlan:
    name: str
    id: int
    bridge: str
    subnet4: IPv4Network
    subnet6: IPv6Network | None
    masquerade: bool  # the network's own setting (network create --no-masquerade)
    internal: bool
    # destinations reached with the endpoints' own addresses (a routed network's cluster subnets:
    # the other nodes route to them, so traffic to them must keep its source)
    within4: IPv4Network | None = None
    within6: IPv6Network | None = None


@dataclass(frozen=True)
class PublishPlan:
    endpoint: str
    bridge: str
    mapping: PortMapping
    ipv4: IPv4Address
    ipv6: IPv6Address | None


@dataclass(frozen=True)
class Plan:
    networks: tuple[NetworkPlan, ...] = ()
    published: tuple[PublishPlan, ...] = ()
    masquerade4: bool = True  # --ip-masq
    masquerade6: bool = False  # --ip6-masq


def _host_key(mapping: PortMapping) -> str:
    if mapping.host_ip is None:
        return "all"
    return str(mapping.host_ip).replace(".", "_").replace(":", "_")


def port_counter(mapping: PortMapping, what: str) -> str:
    """Counter name of a published port: WHAT is in, out or conn."""
    return f"pp_{mapping.proto}_{mapping.host_port}_{_host_key(mapping)}_{what}"


def masq_counter(net_id: int, direction: str) -> str:
    return f"masq_{net_id}_{direction}"


def masquerading(plan: Plan, net: NetworkPlan) -> tuple[bool, bool]:
    """(IPv4, IPv6) masquerade of NET's subnets under PLAN."""
    on = net.masquerade and not net.internal
    return on and plan.masquerade4, on and plan.masquerade6 and net.subnet6 is not None


def counters(plan: Plan) -> list[str]:
    """Every named counter PLAN's rules use."""
    out: list[str] = []
    for net in plan.networks:
        if any(masquerading(plan, net)):
            out += [masq_counter(net.id, d) for d in DIRECTIONS]
    seen: set[PortMapping] = set()
    for pub in plan.published:
        if pub.mapping not in seen:
            seen.add(pub.mapping)
            out += [port_counter(pub.mapping, w) for w in ("in", "out", "conn")]
    return out


def _q(name: str) -> str:
    return f'"{name}"'


def _set(names: list[str]) -> str:
    return "{ " + ", ".join(_q(n) for n in names) + " }"


def _publish_rules(pub: PublishPlan) -> list[str]:
    m = pub.mapping
    conn = _q(port_counter(m, "conn"))
    out: list[str] = []
    if 4 in m.families:
        match = f"ip daddr {m.host_ip}" if m.host_ip is not None else "meta nfproto ipv4"
        out.append(f"{match} {m.proto} dport {m.host_port} counter name {conn} "
                   f"dnat ip to {pub.ipv4}:{m.endpoint_port}")
    if 6 in m.families and pub.ipv6 is not None:
        match = f"ip6 daddr {m.host_ip}" if m.host_ip is not None else "meta nfproto ipv6"
        out.append(f"{match} {m.proto} dport {m.host_port} counter name {conn} "
                   f"dnat ip6 to [{pub.ipv6}]:{m.endpoint_port}")
    return out


def _key(text: str) -> str:
    return text.replace(".", "_").replace(":", "_")


def count_chain(direction: str, version: int, proto: str, ep: IPv4Address | IPv6Address, port: int) -> str:
    """The chain the DIRECTION verdict map jumps to for traffic of endpoint EP:PORT/PROTO."""
    return f"{direction}{version}_{proto}_{_key(str(ep))}_{port}"


def _count(pub: PublishPlan) -> list[tuple[str, str, str, str]]:
    """(map, element key, chain, rule) for one published port, both directions and families:
    the map's key is what the packet shows after DNAT, the rule picks this port's counter by
    the original destination port (and address)."""
    m = pub.mapping
    out = []
    for fam, version, ep in (("ip", 4, pub.ipv4), ("ip6", 6, pub.ipv6)):
        if ep is None or version not in m.families:
            continue
        orig = f" ct original {fam} daddr {m.host_ip}" if m.host_ip is not None else ""
        for direction in DIRECTIONS:
            chain = count_chain(direction, version, m.proto, ep, m.endpoint_port)
            key = f"{m.proto} . {ep} . {m.endpoint_port}"
            rule = (f"meta l4proto {m.proto} ct original proto-dst {m.host_port}{orig} "
                    f"counter name {_q(port_counter(m, direction))}")
            out.append((f"pp{version}_{direction}", key, chain, rule))
    return out


# named sets and maps: name -> declaration
SETS: dict[str, str] = {
    "bridges": "type ifname;",
    **{f"masq{v}_{d}": f"type {t} : counter; flags interval;"
       for v, t in ((4, "ipv4_addr"), (6, "ipv6_addr")) for d in DIRECTIONS},
    **{f"pp{v}_{d}": f"type inet_proto . {t} . inet_service : verdict;"
       for v, t in ((4, "ipv4_addr"), (6, "ipv6_addr")) for d in DIRECTIONS},
}


def elements(plan: Plan) -> dict[str, list[str]]:
    """Set or map -> its elements."""
    out: dict[str, list[str]] = {name: [] for name in SETS}
    out["bridges"] = [_q(b) for b in sorted({n.bridge for n in plan.networks})]
    for net in plan.networks:
        v4, v6 = masquerading(plan, net)
        for version, on, subnet in ((4, v4, net.subnet4), (6, v6, net.subnet6)):
            if on and subnet is not None:
                for d in DIRECTIONS:
                    out[f"masq{version}_{d}"].append(f"{subnet} : {_q(masq_counter(net.id, d))}")
    for pub in plan.published:
        for map_name, key, chain, _ in _count(pub):
            element = f"{key} : jump {chain}"
            if element not in out[map_name]:
                out[map_name].append(element)
    return out


def rules(plan: Plan) -> dict[str, list[str]]:
    """Chain -> its rules, in order."""
    chains: dict[str, list[str]] = {c: [] for c in CHAINS}
    chains["prerouting"].append("fib daddr type local jump publish")
    chains["output"].append("fib daddr type local jump publish")
    # One test per packet sends it on: the conntrack status says which counting applies (a
    # masqueraded connection is SNATed from its first packet's POSTROUTING on, so its first
    # packet is not counted).
    chains["forward"].append("ct status snat jump masq")
    for chain in ("forward", "input", "local_out"):
        chains[chain].append("ct status dnat jump count")
    chains["masq"] += [
        "meta nfproto ipv4 oifname != @bridges counter name ip saddr map @masq4_out",
        "meta nfproto ipv4 iifname != @bridges counter name ip daddr map @masq4_in",
        "meta nfproto ipv6 oifname != @bridges counter name ip6 saddr map @masq6_out",
        "meta nfproto ipv6 iifname != @bridges counter name ip6 daddr map @masq6_in",
    ]
    chains["count"] += [
        "ct direction original meta nfproto ipv4 meta l4proto . ip daddr . th dport vmap @pp4_in",
        "ct direction reply meta nfproto ipv4 meta l4proto . ip saddr . th sport vmap @pp4_out",
        "ct direction original meta nfproto ipv6 meta l4proto . ip6 daddr . th dport vmap @pp6_in",
        "ct direction reply meta nfproto ipv6 meta l4proto . ip6 saddr . th sport vmap @pp6_out",
    ]
    for pub in sorted(plan.published, key=lambda p: (p.mapping, p.endpoint)):
        chains["publish"] += _publish_rules(pub)
        for _, _, chain, rule in _count(pub):
            chains.setdefault(chain, []).append(rule)
    for net in plan.networks:
        v4, v6 = masquerading(plan, net)
        subnets = ([("ip", str(net.subnet4), net.within4)] if v4 else []) + (
            [("ip6", str(net.subnet6), net.within6)] if v6 and net.subnet6 is not None else [])
        for fam, subnet, within in subnets:
            keep = f"{fam} daddr != {within} " if within is not None else ""
            chains["postrouting"].append(f"{fam} saddr {subnet} {keep}oifname != @bridges masquerade")
    published_bridges = sorted({p.bridge for p in plan.published})
    if published_bridges:
        # The host's own traffic to a published port (127.0.0.1 needs route_localnet on the
        # bridge) and hairpin traffic from the port's own network: replies must come back
        # through this host's conntrack to be un-NATed.
        chains["postrouting"].append(f"ct status dnat oifname {_set(published_bridges)} "
                                     "fib saddr type local masquerade")
        for net in plan.networks:
            if net.bridge not in published_bridges:
                continue
            chains["postrouting"].append(f"ct status dnat oifname {_q(net.bridge)} "
                                         f"ip saddr {net.subnet4} masquerade")
            if net.subnet6 is not None:
                chains["postrouting"].append(f"ct status dnat oifname {_q(net.bridge)} "
                                             f"ip6 saddr {net.subnet6} masquerade")
    return chains


# base chains: (type, hook, priority); the others are jumped to
CHAINS: dict[str, tuple[str, str, str] | None] = {
    "prerouting": ("nat", "prerouting", "dstnat"),
    "output": ("nat", "output", "-100"),
    "postrouting": ("nat", "postrouting", "srcnat"),
    "publish": None,
    "forward": ("filter", "forward", "filter"),
    "input": ("filter", "input", "filter"),
    "local_out": ("filter", "output", "filter"),
    "masq": None,
    "count": None,
}


def is_count_chain(name: str) -> bool:
    return name.startswith(("in4_", "in6_", "out4_", "out6_"))


def render(plan: Plan, stale_counters: Sequence[str] = (), stale_chains: Sequence[str] = ()) -> str:
    """The whole transaction: ensure the table, its sets, maps, chains and counters, flush the
    rules and elements, write them again, delete the counters and per-port chains nothing
    uses any more (STALE_*: what the table holds now)."""
    body = rules(plan)
    wanted = counters(plan)
    # counters first: nft 1.0.6 cannot resolve a counter an interval map's element names when
    # the counter is added to the batch after the map
    lines = [f"add table {TABLE_REF}", *(f"add counter {TABLE_REF} {name}" for name in wanted)]
    for name, decl in SETS.items():
        kind = "map" if ":" in decl else "set"
        lines.append(f"add {kind} {TABLE_REF} {name} {{ {decl} }}")
    for chain in body:
        hook = CHAINS.get(chain)
        if hook is None:
            lines.append(f"add chain {TABLE_REF} {chain}")
        else:
            kind, point, prio = hook
            lines.append(f"add chain {TABLE_REF} {chain} "
                         f"{{ type {kind} hook {point} priority {prio}; policy accept; }}")
    lines.append(f"flush table {TABLE_REF}")
    # Sets and maps are made anew rather than flushed: nft 1.0.6 fails (ENOENT) to add elements
    # to an interval map flushed in the same transaction. Nothing refers to them once the rules
    # are flushed, and the whole transaction still commits at once.
    for name, decl in SETS.items():
        kind = "map" if ":" in decl else "set"
        lines += [f"delete {kind} {TABLE_REF} {name}", f"add {kind} {TABLE_REF} {name} {{ {decl} }}"]
    for name, items in elements(plan).items():
        if items:
            lines.append(f"add element {TABLE_REF} {name} {{ {', '.join(items)} }}")
    for chain, chain_rules in body.items():
        lines += [f"add rule {TABLE_REF} {chain} {rule}" for rule in chain_rules]
    for name in sorted(set(stale_chains) - set(body)):
        if is_count_chain(name):
            lines.append(f"delete chain {TABLE_REF} {name}")
    for name in sorted(set(stale_counters) - set(wanted)):
        lines.append(f"delete counter {TABLE_REF} {name}")
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    return f"delete table {TABLE_REF}\n"
