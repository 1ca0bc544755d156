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


def _count_rules(pub: PublishPlan) -> list[str]:
    """Packets and bytes of one published port, both directions, after DNAT (the endpoint's
    address and port), told apart from other ports of the same endpoint by the original
    destination port (and address)."""
    m = pub.mapping
    out: list[str] = []
    for fam, ep in (("ip", pub.ipv4), ("ip6", pub.ipv6)):
        version = 4 if fam == "ip" else 6
        if ep is None or version not in m.families:
            continue
        orig = f" ct original {fam} daddr {m.host_ip}" if m.host_ip is not None else ""
        base = f"ct status dnat meta l4proto {m.proto} ct original proto-dst {m.host_port}{orig}"
        out.append(f"{base} ct direction original {fam} daddr {ep} counter name {_q(port_counter(m, 'in'))}")
        out.append(f"{base} ct direction reply {fam} saddr {ep} counter name {_q(port_counter(m, 'out'))}")
    return out


def rules(plan: Plan) -> dict[str, list[str]]:
    """Chain -> its rules, in order."""
    bridges = sorted({n.bridge for n in plan.networks})
    not_bridges = f"!= {_set(bridges)}" if bridges else None
    chains: dict[str, list[str]] = {c: [] for c in CHAINS}
    chains["prerouting"].append("fib daddr type local jump publish")
    chains["output"].append("fib daddr type local jump publish")
    for chain in ("forward", "input", "local_out"):
        chains[chain].append("jump count")
    for pub in sorted(plan.published, key=lambda p: (p.mapping, p.endpoint)):
        chains["publish"] += _publish_rules(pub)
        chains["count"] += _count_rules(pub)
    for net in plan.networks:
        v4, v6 = masquerading(plan, net)
        subnets = ([("ip", str(net.subnet4))] if v4 else []) + (
            [("ip6", str(net.subnet6))] if v6 and net.subnet6 is not None else [])
        for fam, subnet in subnets:
            assert not_bridges is not None
            chains["postrouting"].append(f"{fam} saddr {subnet} oifname {not_bridges} masquerade")
            chains["forward"].insert(0, f"{fam} saddr {subnet} oifname {not_bridges} "
                                        f"counter name {_q(masq_counter(net.id, 'out'))}")
            chains["forward"].insert(0, f"{fam} daddr {subnet} iifname {not_bridges} ct status snat "
                                        f"counter name {_q(masq_counter(net.id, 'in'))}")
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
    "count": None,
}


def render(plan: Plan, stale_counters: Sequence[str] = ()) -> str:
    """The whole transaction: ensure the table, chains and counters, flush the rules, write
    them again, delete counters no rule uses any more."""
    lines = [f"add table {TABLE_REF}"]
    for chain, hook in CHAINS.items():
        if hook is None:
            lines.append(f"add chain {TABLE_REF} {chain}")
        else:
            kind, point, prio = hook
            lines.append(f"add chain {TABLE_REF} {chain} "
                         f"{{ type {kind} hook {point} priority {prio}; policy accept; }}")
    lines.append(f"flush table {TABLE_REF}")
    wanted = counters(plan)
    for name in wanted:
        lines.append(f"add counter {TABLE_REF} {name}")
    for chain, body in rules(plan).items():
        lines += [f"add rule {TABLE_REF} {chain} {rule}" for rule in body]
    for name in sorted(set(stale_counters) - set(wanted)):
        lines.append(f"delete counter {TABLE_REF} {name}")
    return "\n".join(lines) + "\n"


def delete_script() -> str:
    return f"delete table {TABLE_REF}\n"
