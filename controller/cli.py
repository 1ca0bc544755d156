"""The ``bpfnet`` command line: the daemon's flags and a thin API client.

Boundary: argument parsing, output formatting (tables or --json) and exit
codes. Every command but ``daemon`` and ``demo`` is one or two API calls; an
error prints one line to stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .client import Client, ClientError, client_from_env_and_args, object_path
from .config import DEFAULT_SOCKET, OVERLAY_ENCAPS, RECONCILE_MODES
from .datapath.abi import REQUESTABLE_ATTACHES, REQUESTABLE_ENDPOINT_DEVICES, REQUESTABLE_MODES
from .errors import BpfnetError
from .tables import stats_table, table


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


# command handlers --------------------------------------------------------
def cmd_info(args: argparse.Namespace, c: Client) -> None:
    info = c.get("/v1/info")
    dp = info["datapath"]
    lines = [
        f"Version:      {info['version']}",
        f"Kernel:       {info['kernel']}",
        f"Host netns:   {info['host_netns'] or '(the daemon’s own)'}",
        f"State dir:    {info['state_dir']}",
        f"Listeners:    {', '.join(info['listeners'])}",
        f"Metrics:      {info.get('metrics_url') or '-'}",
        f"Datapath:     {dp['mode']}" + (f" (attached with {dp['attach']})" if dp.get("attach") else ""),
        f"Endpoint device: {dp.get('endpoint_device') or 'veth'}",
        f"Default bridge: {info.get('default_bridge') or 'none'}",
        f"Address pools: {', '.join(info.get('address_pools', []))}",
        f"Networks:     {info['networks']}",
        f"Endpoints:    {info['endpoints']}",
    ]
    for s in info.get("subnets", []):
        lines.append(f"  network {s['network']}: {s['subnet4']} ({s['subnet_source'] or 'source not recorded'})"
                     + (f", {s['subnet6']} ({s['subnet6_source'] or 'source not recorded'})" if s.get("subnet6") else ""))
    for warning in info.get("warnings", []):
        lines.append(f"WARNING:      {warning}")
    for prog in dp.get("programs", []):
        lines.append(f"  program {prog['name']} id={prog['id']} tag={prog['tag']} on {prog['attach']}"
                     + (f" ({prog['via']})" if prog.get("via") else ""))
    out = info.get("outside")
    if out:
        lines.append(f"Outside:      {out['mechanism']}; ip-masq {'on' if out['ip_masq'] else 'off'}, "
                     f"ip6-masq {'on' if out['ip6_masq'] else 'off'}, ip-forward "
                     f"{'on' if out['ip_forward'] else 'off'}; {out['published_ports']} published port(s)")
        fast = out.get("fastpath") or {}
        if fast.get("enabled"):
            lines.append(f"  fast path:  uplink_ingress on {', '.join(fast['uplinks']) or 'no uplink yet'}; "
                         f"{fast['flows']} flow direction(s), {fast['established']} established")
    dns = info.get("dns")
    if dns:
        lines.append(f"DNS:          resolver pid {dns['resolver_pid'] or '- (not running)'}, upstreams "
                     f"{' '.join(dns['upstreams']) or 'none'} (from {dns['resolv_conf']} and --dns)")
    emit(args, info, "\n".join(lines))


def cmd_network_create(args: argparse.Namespace, c: Client) -> None:
    body: dict[str, Any] = {"name": args.name, "icc": args.icc}
    for key, value in (("subnet4", args.subnet), ("bridge", args.bridge), ("gateway4", args.gateway), ("ip_range4", args.ip_range), ("subnet6", args.subnet6),
                       ("gateway6", args.gateway6), ("ip_range6", args.ip_range6), ("mtu", args.mtu),
                       ("parent", args.parent), ("ipvlan_mode", args.ipvlan_mode),
                       ("host_prefix", args.host_prefix), ("host_prefix6", args.host_prefix6)):
        if value is not None:
            body[key] = value
    if args.ipv6:
        body["ipv6"] = True
    if args.internal:
        body["internal"] = True
    if not args.masquerade:
        body["masquerade"] = False
    if args.driver != "bridge":
        body["driver"] = args.driver
    if args.vni is not None:
        body["vni"] = args.vni
    net = c.post("/v1/networks", body)
    emit(args, net, net["name"])


def _net_rows(nets: list[dict[str, Any]]) -> str:
    rows = []
    for n in nets:
        v6 = n["ipam"].get("ipv6") or {}
        rows.append([n["name"], n.get("driver", "bridge"), n["bridge"], n["ipam"]["ipv4"]["subnet"],
                     v6.get("subnet") or "-", len(n["endpoints"]), "yes" if n["icc"] else "no"])
    return table(rows, ["NAME", "DRIVER", "BRIDGE", "SUBNET", "SUBNET6", "ENDPOINTS", "ICC"])


def cmd_network_ls(args: argparse.Namespace, c: Client) -> None:
    nets = c.get("/v1/networks")
    emit(args, nets, _net_rows(nets))


def cmd_network_inspect(args: argparse.Namespace, c: Client) -> None:
    net = c.get(object_path("networks", args.name))
    print(json.dumps(net, indent=2))


def _remove_each(kind: str, args: argparse.Namespace, c: Client) -> None:
    paths = [object_path(kind, name) for name in args.names]  # every name checked before any is removed
    for name, path in zip(args.names, paths):
        c.delete(path)
        if not args.json:
            print(name)


def cmd_network_rm(args: argparse.Namespace, c: Client) -> None:
    _remove_each("networks", args, c)


def cmd_endpoint_add(args: argparse.Namespace, c: Client) -> None:
    body: dict[str, Any] = {"name": args.name}
    for key, value in (("network", args.network), ("ip", args.ip), ("ip6", args.ip6), ("mac", args.mac),
                       ("netns", args.netns), ("publish", args.publish), ("dns", args.dns),
                       ("dns_search", args.dns_search), ("dns_opt", args.dns_opt), ("aliases", args.alias),
                       ("hostname", args.hostname)):
        if value is not None:
            body[key] = value
    ep = c.post("/v1/endpoints", body)
    emit(args, ep, _ep_rows([ep]))


def _ep_rows(eps: list[dict[str, Any]]) -> str:
    rows = [[e["name"], e["network"], e["netns"], e["host_ifname"], e["mac"], e["ipv4"],
             ", ".join(e.get("ipv6") or []) or "-", _ports(e.get("published") or [])] for e in eps]
    return table(rows, ["NAME", "NETWORK", "NETNS", "HOST VETH", "MAC", "IPV4", "IPV6", "PORTS"])


def _ports(published: list[dict[str, Any]]) -> str:
    """As docker ps: 0.0.0.0:8080->80/tcp ([::]: for IPv6)."""
    out = []
    for p in published:
        host = p["host_ip"] or "*"
        host = f"[{host}]" if ":" in host else host
        out.append(f"{host}:{p['host_port']}->{p['endpoint_port']}/{p['proto']}")
    return ", ".join(out) or "-"


def cmd_endpoint_ls(args: argparse.Namespace, c: Client) -> None:
    eps = c.get("/v1/endpoints")
    emit(args, eps, _ep_rows(eps))


def cmd_endpoint_inspect(args: argparse.Namespace, c: Client) -> None:
    print(json.dumps(c.get(object_path("endpoints", args.name)), indent=2))


def cmd_endpoint_rm(args: argparse.Namespace, c: Client) -> None:
    _remove_each("endpoints", args, c)


def cmd_node_rm(args: argparse.Namespace, c: Client) -> None:
    _remove_each("nodes", args, c)


def cmd_node_ls(args: argparse.Namespace, c: Client) -> None:
    nodes = c.get("/v1/nodes")
    rows = [[n["name"] + (" *" if n.get("self") else ""), n.get("address") or "-", n["state"], n.get("endpoints", 0)]
            for n in nodes]
    emit(args, nodes, table(rows, ["NODE", "ADDRESS", "STATE", "ENDPOINTS"]))


def cmd_stats(args: argparse.Namespace, c: Client) -> None:
    stats = c.get("/v1/stats")
    emit(args, stats, stats_table(stats))


def cmd_top(args: argparse.Namespace, c: Client) -> None:
    from rich.console import Console

    from .top import run_top

    if args.interval <= 0:
        raise ClientError("--interval must be positive")
    run_top(lambda: c.get("/v1/stats"), args.interval, args.iterations, Console())


def cmd_daemon(args: argparse.Namespace) -> int:
    from .config import load_daemon_config
    from .daemon import run

    overrides = {
        "hosts": args.host, "allow_public_api": args.allow_public_api or None, "netns": args.netns,
        "state_dir": args.state_dir, "bridge": args.bridge, "bip": args.bip, "fixed_cidr": args.fixed_cidr,
        "ipv6": args.ipv6, "fixed_cidr_v6": args.fixed_cidr_v6, "default_gateway": args.default_gateway,
        "default_gateway_v6": args.default_gateway_v6, "mtu": args.mtu, "icc": args.icc,
        "ndp_proxy_iface": args.ndp_proxy_iface, "datapath": args.datapath,
        "datapath_attach": args.datapath_attach, "endpoint_device": args.endpoint_device, "metrics_addr": args.metrics_addr,
        "allow_public_metrics": args.allow_public_metrics or None, "log_level": args.log_level,
        "group": args.group, "tls": args.tls or None, "tlsverify": args.tlsverify or None,
        "tlscacert": args.tlscacert, "tlscert": args.tlscert, "tlskey": args.tlskey,
        "reconcile": args.reconcile, "default_address_pool": args.default_address_pool,
        "ip_masq": args.ip_masq, "ip6_masq": args.ip6_masq, "ip_forward": args.ip_forward,
        "published_fastpath": args.published_fastpath, "uplinks": args.uplink,
        "docker_plugin": args.docker_plugin, "docker_plugin_dir": args.docker_plugin_dir,
        "cluster_store": args.cluster_store, "advertise_addr": args.advertise_addr, "node_name": args.node_name,
        "overlay_encap": args.overlay_encap,
        "dns": args.dns, "dns_search": args.dns_search, "dns_opt": args.dns_opt, "resolv_conf": args.resolv_conf,
    }
    cfg = load_daemon_config(args.config, overrides)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("pyroute2", "asyncio"):  # their debug lines (every netlink message) drown bpfnet's
        logging.getLogger(chatty).setLevel(max(logging.INFO, logging.getLogger().level))
    return run(cfg, cleanup=args.cleanup)


# parser ------------------------------------------------------------------
def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _bool_flag(p: argparse.ArgumentParser, name: str, help_text: str) -> None:
    """dockerd's boolean flags: --NAME, --NAME=false, and --no-NAME."""
    dest = name.replace("-", "_")
    p.add_argument(f"--{name}", dest=dest, nargs="?", const=True, type=_boolean, default=None,
                   metavar="BOOL", help=help_text)
    p.add_argument(f"--no-{name}", dest=dest, action="store_false", help=f"same as --{name}=false")



def _dns_flags(p: argparse.ArgumentParser, whose: str) -> None:
    """--dns, --dns-search, --dns-opt: of the daemon (every endpoint) or of one endpoint."""
    p.add_argument("--dns", action="append", metavar="IP",
                   help=f"{whose} upstream nameserver, where the embedded resolver forwards other names "
                        "(repeatable, IPv4 or IPv6)")
    p.add_argument("--dns-search", action="append", metavar="DOMAIN",
                   help=f"{whose} search domain (repeatable; '.' for none)")
    p.add_argument("--dns-opt", action="append", metavar="OPT",
                   help=f"{whose} resolv.conf option (repeatable, e.g. ndots:2)")


def _tls_client_options(p: argparse.ArgumentParser, after_command: bool) -> None:
    """docker's client TLS options, accepted before the command (dest global_*) and after it."""
    prefix = "" if after_command else "global_"
    p.add_argument("--tls", dest=prefix + "tls", action="store_true",
                   help="use TLS; implied by --tlsverify")
    p.add_argument("--tlsverify", dest=prefix + "tlsverify", action="store_true",
                   help="use TLS and verify the daemon ($BPFNET_TLS_VERIFY)")
    p.add_argument("--tlscacert", dest=prefix + "tlscacert", metavar="FILE",
                   help="trust daemons signed by this CA (default $BPFNET_CERT_PATH/ca.pem)")
    p.add_argument("--tlscert", dest=prefix + "tlscert", metavar="FILE",
                   help="client certificate (default $BPFNET_CERT_PATH/cert.pem)")
    p.add_argument("--tlskey", dest=prefix + "tlskey", metavar="FILE",
                   help="client key (default $BPFNET_CERT_PATH/key.pem)")


def build_parser() -> argparse.ArgumentParser:
    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument("-H", "--host", default=None,
                             help=f"daemon to talk to (default {DEFAULT_SOCKET}, or $BPFNET_HOST)")
    client_opts.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _tls_client_options(client_opts, after_command=True)

    p = argparse.ArgumentParser(prog="bpfnet", description="Docker-style bridge networking with an eBPF fast path")
    p.add_argument("--version", action="version", version=f"bpfnet {__version__}")
    p.add_argument("-H", "--host", dest="global_host", default=None, metavar="HOST",
                   help="daemon to talk to, as with docker -H (also accepted after the command)")
    _tls_client_options(p, after_command=False)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("daemon", help="run the controller daemon")
    d.add_argument("-H", "--host", action="append", help="listen on unix:///path or tcp://127.0.0.1:PORT (repeatable)")
    d.add_argument("--allow-public-api", action="store_true", help="allow a non-loopback TCP API address")
    d.add_argument("--config", help="TOML file with the same settings (flags win)")
    d.add_argument("--netns", help="manage this named network namespace (created if missing) as the host side")
    d.add_argument("--state-dir", help="where state lives (default /var/lib/bpfnet)")
    d.add_argument("-b", "--bridge", help="bridge of the default network (default bpfnet0); an existing bridge is "
                                          "adopted (its address defines the network); 'none': no default network")
    d.add_argument("--bip", help="bridge IPv4 address and prefix, e.g. 172.17.0.1/16")
    d.add_argument("--fixed-cidr", help="limit the default network's IPv4 range, e.g. 172.17.1.0/25")
    d.add_argument("--ipv6", action="store_true", default=None, help="dual-stack default network")
    d.add_argument("--fixed-cidr-v6", help="IPv6 subnet of the default network, e.g. 1553:ba3:2::/64")
    d.add_argument("--default-gateway", help="endpoints' IPv4 default gateway (default: the bridge)")
    d.add_argument("--default-gateway-v6", help="endpoints' IPv6 default gateway (default: fe80::1)")
    d.add_argument("--mtu", type=int, help="MTU of the default network (default: an existing bridge's, else 1500)")
    d.add_argument("--default-address-pool", action="append", metavar="base=CIDR,size=N",
                   help="where networks without a subnet get one (repeatable; default 172.17.0.0/16 ... "
                        "172.31.0.0/16 as /16s, then 192.168.0.0/16 in /20s)")
    d.add_argument("--icc", dest="icc", action="store_true", default=None,
                   help="allow traffic between endpoints of the default network (default)")
    d.add_argument("--no-icc", dest="icc", action="store_false", help="isolate endpoints from each other")
    _bool_flag(d, "ip-masq", "masquerade IPv4 traffic of networks leaving the host (default true)")
    _bool_flag(d, "ip6-masq", "masquerade IPv6 traffic of networks leaving the host (default false)")
    _bool_flag(d, "ip-forward", "turn on IPv4/IPv6 forwarding in the managed namespace (default true)")
    _bool_flag(d, "published-fastpath", "translate established flows to published ports in BPF on the "
                                        "uplinks, skipping conntrack, routing and the bridge (default true)")
    d.add_argument("--uplink", action="append", metavar="IFNAME",
                   help="an interface that carries published-port traffic from outside (repeatable; default: "
                        "every interface of the managed namespace with an address that is not bpfnet's)")
    d.add_argument("--ndp-proxy-iface", help="answer NDP for endpoint IPv6 addresses on this interface")
    d.add_argument("--datapath", choices=REQUESTABLE_MODES,
                   help="force a datapath mode (default auto: the best the kernel offers)")
    d.add_argument("--datapath-attach", choices=REQUESTABLE_ATTACHES,
                   help="how the eBPF programs attach: tcx links, tc (clsact + cls_bpf filters), "
                        "or auto (tcx where the kernel has it, the default)")
    d.add_argument("--endpoint-device", choices=REQUESTABLE_ENDPOINT_DEVICES,
                   help="endpoints' device pairs: veth, netkit (Linux 6.7+, datapath mode redirect), "
                        "or auto (netkit where the kernel has it, the default)")
    d.add_argument("--metrics-addr", help="Prometheus /metrics address (default 127.0.0.1:9523)")
    d.add_argument("--allow-public-metrics", action="store_true", help="allow a non-loopback metrics address")
    d.add_argument("--log-level", help="debug, info (default), warning, error")
    d.add_argument("--docker-plugin", metavar="NAME",
                   help="serve Docker's network and IPAM driver API as plugin NAME (docker network create "
                        "-d NAME --ipam-driver NAME)")
    d.add_argument("--docker-plugin-dir", metavar="DIR",
                   help="where the plugin's socket NAME.sock goes (default /run/docker/plugins, where dockerd "
                        "looks)")
    d.add_argument("--cluster-store", metavar="etcd://HOST:PORT[,HOST:PORT...]",
                   help="join a cluster: overlay networks, their addresses and endpoints live in this etcd")
    d.add_argument("--advertise-addr", metavar="IP",
                   help="with --cluster-store: this host's IPv4 address the other hosts send VXLAN to (the VTEP)")
    d.add_argument("--node-name", metavar="NAME", help="with --cluster-store: this host's name in the cluster "
                                                       "(default: the host name)")
    d.add_argument("--overlay-encap", choices=OVERLAY_ENCAPS,
                   help="who writes and strips overlay packets' VXLAN headers: the eBPF programs (native, the "
                        "default) or the kernel's VXLAN device (device); both put the same packets on the wire")
    _dns_flags(d, "the endpoints' (replacing the host resolv.conf's)")
    d.add_argument("--resolv-conf", metavar="PATH",
                   help="the resolv.conf endpoints' files start from (default /etc/resolv.conf of the namespace "
                        "the daemon starts in)")
    d.add_argument("--cleanup", action="store_true",
                   help="remove every BPF program, filter, map entry and pin bpfnet made, then exit")
    d.add_argument("--reconcile", choices=RECONCILE_MODES,
                   help="kernel objects the state does not know: check (default: refuse to start when the "
                        "state is new or empty but bpfnet's links and pins exist), adopt (rebuild the state "
                        "from them) or wipe (delete them)")
    d.add_argument("-G", "--group", help="group owning the Unix API sockets (mode 0660; default root)")
    d.add_argument("--tls", action="store_true", help="serve tcp:// listeners over TLS (clients not verified)")
    d.add_argument("--tlsverify", action="store_true",
                   help="TLS, and require client certificates signed by --tlscacert")
    d.add_argument("--tlscacert", metavar="FILE", help="CA for client certificates (default /etc/bpfnet/ca.pem)")
    d.add_argument("--tlscert", metavar="FILE", help="the daemon's certificate (default /etc/bpfnet/cert.pem)")
    d.add_argument("--tlskey", metavar="FILE", help="the daemon's key (default /etc/bpfnet/key.pem)")

    i = sub.add_parser("info", parents=[client_opts], help="daemon version, kernel, datapath mode")
    i.set_defaults(func=cmd_info)

    net = sub.add_parser("network", help="manage networks").add_subparsers(dest="sub", required=True)
    nc = net.add_parser("create", parents=[client_opts], help="create a network")
    nc.add_argument("name")
    nc.add_argument("-d", "--driver", default="bridge",
                    help="network driver: bridge (default; this host), overlay (every host of the cluster), "
                         "routed (a block per node, routes between nodes), macvlan, ipvlan (endpoints on a physical interface: --parent)")
    nc.add_argument("--parent", metavar="IFACE[.VLAN]",
                    help="macvlan, ipvlan: the physical interface; IFACE.VLAN makes an 802.1q sub-interface "
                         "(removed with the last network on it)")
    nc.add_argument("--ipvlan-mode", choices=("l2", "l3"), help="ipvlan: l2 (default) or l3")
    nc.add_argument("--host-prefix", type=int, metavar="N",
                    help="routed: each node's block of --subnet is a /N (default 24)")
    nc.add_argument("--host-prefix6", type=int, metavar="N",
                    help="routed: each node's block of --subnet6 is a /N (default 80)")
    nc.add_argument("--vni", type=int, help="overlay: the VXLAN network identifier (default: the lowest free "
                                            "one from 4096)")
    nc.add_argument("--subnet", help="IPv4 subnet, e.g. 10.10.0.0/24 (default: the first free one of the "
                                     "daemon's address pools)")
    nc.add_argument("--gateway", help="IPv4 gateway on the bridge (default: first address)")
    nc.add_argument("--ip-range", help="allocate IPv4 addresses only from this sub-range")
    nc.add_argument("--ipv6", action="store_true",
                    help="dual stack (without --subnet6: the next free /64 of this host's ULA prefix)")
    nc.add_argument("--subnet6", help="IPv6 subnet, e.g. 1553:ba3:3::/64")
    nc.add_argument("--gateway6", help="global IPv6 gateway on the bridge (default: first address)")
    nc.add_argument("--ip-range6", help="allocate IPv6 addresses only from this sub-range")
    nc.add_argument("--bridge", help="bridge name (default br-NAME)")
    nc.add_argument("--mtu", type=int, help="MTU (default 1500)")
    nc.add_argument("--icc", dest="icc", action="store_true", default=True, help="allow endpoint-to-endpoint traffic (default)")
    nc.add_argument("--no-icc", dest="icc", action="store_false", help="isolate endpoints from each other")
    nc.add_argument("--internal", action="store_true",
                    help="no traffic leaves or enters the network (no masquerading, no published ports)")
    nc.add_argument("--no-masquerade", dest="masquerade", action="store_false", default=True,
                    help="do not masquerade the network's traffic leaving the host")
    nc.set_defaults(func=cmd_network_create)
    nl = net.add_parser("ls", parents=[client_opts], help="list networks")
    nl.set_defaults(func=cmd_network_ls)
    ni = net.add_parser("inspect", parents=[client_opts], help="show one network as JSON")
    ni.add_argument("name")
    ni.set_defaults(func=cmd_network_inspect)
    nr = net.add_parser("rm", parents=[client_opts], help="remove networks (refused while endpoints are attached)")
    nr.add_argument("names", nargs="+")
    nr.set_defaults(func=cmd_network_rm)

    ep = sub.add_parser("endpoint", help="manage endpoints").add_subparsers(dest="sub", required=True)
    ea = ep.add_parser("add", parents=[client_opts], help="create a namespace joined to a network")
    ea.add_argument("name")
    ea.add_argument("--network", help="network to join (default: the default network)")
    ea.add_argument("--ip", help="static IPv4 address")
    ea.add_argument("--ip6", help="static IPv6 address")
    ea.add_argument("--mac", help="MAC address (default 02:42 + the IPv4 address)")
    ea.add_argument("--netns", help="adopt this existing namespace instead of creating NAME")
    ea.add_argument("-p", "--publish", action="append", metavar="[HOST_IP:]HOST_PORT:PORT[/tcp|/udp]",
                    help="publish a port of the endpoint on the host, as docker run -p (repeatable; ranges "
                         "8000-8003:80-83; an IPv6 host address in brackets)")
    _dns_flags(ea, "this endpoint's (replacing the daemon's)")
    ea.add_argument("--alias", action="append", metavar="NAME",
                    help="another name the endpoint answers to in its network's DNS (repeatable)")
    ea.add_argument("--hostname", help="the endpoint's hostname in DNS and its hosts file (default: its name)")
    ea.set_defaults(func=cmd_endpoint_add)
    el = ep.add_parser("ls", parents=[client_opts], help="list endpoints")
    el.set_defaults(func=cmd_endpoint_ls)
    ei = ep.add_parser("inspect", parents=[client_opts], help="show one endpoint as JSON")
    ei.add_argument("name")
    ei.set_defaults(func=cmd_endpoint_inspect)
    er = ep.add_parser("rm", parents=[client_opts], help="remove endpoints")
    er.add_argument("names", nargs="+")
    er.set_defaults(func=cmd_endpoint_rm)

    node = sub.add_parser("node", help="the cluster's nodes (--cluster-store)").add_subparsers(dest="sub",
                                                                                              required=True)
    nl2 = node.add_parser("ls", parents=[client_opts], help="list the cluster's nodes and their state")
    nl2.set_defaults(func=cmd_node_ls)
    nr2 = node.add_parser("rm", parents=[client_opts],
                          help="forget nodes that are gone for good (down): their endpoints' records, address leases "
                               "and routed blocks leave the cluster store")
    nr2.add_argument("names", nargs="+")
    nr2.set_defaults(func=cmd_node_rm)

    st = sub.add_parser("stats", parents=[client_opts], help="per-endpoint counters from the BPF maps")
    st.set_defaults(func=cmd_stats)

    tp = sub.add_parser("top", parents=[client_opts], help="live per-endpoint rates until Ctrl-C (like iftop)")
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    tp.add_argument("--iterations", type=int, default=None, help="stop after N refreshes (default: until Ctrl-C)")
    tp.set_defaults(func=cmd_top)

    dm = sub.add_parser("demo", help="start a daemon in a fresh namespace, add endpoints, ping, clean up")
    dm.add_argument("--cluster", action="store_true",
                    help="two hosts, etcd and an overlay network instead (make demo-cluster)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "daemon":
            return cmd_daemon(args)
        if args.cmd == "demo":
            if args.cluster:
                from .demo_cluster import run_cluster_demo

                return int(run_cluster_demo())
            from .demo import run_demo

            return int(run_demo())
        client = client_from_env_and_args(
            args.host or args.global_host, tls=args.tls or args.global_tls,
            tlsverify=args.tlsverify or args.global_tlsverify,
            tlscacert=args.tlscacert or args.global_tlscacert, tlscert=args.tlscert or args.global_tlscert,
            tlskey=args.tlskey or args.global_tlskey)
        args.func(args, client)
        return 0
    except (ClientError, BpfnetError) as exc:
        print(f"bpfnet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
