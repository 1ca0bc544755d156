"""DNS for endpoints: the policy (what each endpoint's files hold, what the resolver knows).

Boundary: entered from the endpoint and network services (``check`` before an endpoint is
made, ``added`` as its last step, ``removed`` in its teardown, ``changed`` after any change of
networks or endpoints) and from the daemon (``start`` after the reconcile, ``watch``,
``stop_resolver`` for --cleanup). Reads the store; writes files through ``files`` and hands
the resolver its state through ``supervisor``. A resolver that dies is started again within
a second by ``watch`` (not at the next change); one a previous daemon left is adopted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import NetworkConfig
from ..datapath.abi import MODE_BRIDGE
from ..errors import Conflict, InvalidArgument
from ..rollback import Rollback
from ..runtime import Runtime
from ..state import EndpointRow
from . import records, rules
from .files import ETC_NETNS, EndpointFiles
from .supervisor import ResolverProcess

log = logging.getLogger(__name__)
WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class DnsOptions:
    """The daemon's DNS settings: --dns, --dns-search, --dns-opt and the parsed --resolv-conf."""

    settings: rules.DnsSettings = field(default_factory=rules.DnsSettings)
    host: rules.ResolvConf = field(default_factory=rules.ResolvConf)
    source: str = "/etc/resolv.conf"


@dataclass(frozen=True)
class EndpointDns:
    """One endpoint's own DNS settings (endpoint add --hostname/--alias/--dns...)."""

    hostname: str = ""
    aliases: tuple[str, ...] = ()
    settings: rules.DnsSettings = field(default_factory=rules.DnsSettings)

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "aliases": list(self.aliases), **self.settings.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EndpointDns:
        def opt(key: str) -> tuple[str, ...] | None:
            value = data.get(key)
            return None if value is None else tuple(value)
        return cls(str(data.get("hostname") or ""), tuple(data.get("aliases") or ()),
                   rules.DnsSettings(opt("dns"), opt("dns_search"), opt("dns_opt")))


def listen_addresses(cfg: NetworkConfig) -> tuple[str, ...]:
    """Where a network's endpoints find the resolver: its IPv4 gateway and global IPv6 gateway."""
    out = [str(cfg.gateway4)]
    if cfg.ipv6 and cfg.gateway6 is not None:
        out.append(str(cfg.gateway6))
    return tuple(out)


def has_files(row: EndpointRow) -> bool:
    """Only named namespaces get /etc/netns files (a runtime's namespace, by path, is the runtime's)."""
    return bool(row.netns) and not row.netns.startswith("/") and not row.handoff


class DnsService:
    def __init__(self, rt: Runtime, options: DnsOptions, owner: str, directory: Path,
                 files_root: Path = ETC_NETNS, log_level: str = "info") -> None:
        self.rt = rt
        self.options = options
        self.owner = owner
        self.files = EndpointFiles(owner, files_root)
        self.resolver = ResolverProcess(directory, log_level)
        self.lock = threading.Lock()  # one state push at a time
        self.restarts = 0
        self._pending: dict[str, Any] | None = None  # state for the resolver, not handed over yet
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._watching = False

    # --- checks before anything is made ----------------------------------------------------
    def check(self, name: str, network: str, data: dict[str, Any]) -> EndpointDns:
        """The endpoint's DNS settings from an add's fields, refused (nothing made) when a value
        is malformed or an alias collides with another endpoint's name. Call with rt.lock held."""
        settings = rules.settings(data.get("dns"), data.get("dns_search"), data.get("dns_opt"))
        hostname = rules.check_hostname(data["hostname"]) if data.get("hostname") else ""
        aliases = rules.check_list(data.get("aliases"), rules.check_domain, "--alias") or ()
        aliases = tuple(dict.fromkeys(a for a in aliases if a != name.lower()))
        suffix = "." + network.lower()
        for alias in aliases:
            for candidate in (alias, alias[:-len(suffix)] if alias.endswith(suffix) else ""):
                other = self.rt.store.endpoint_named(network, candidate) if candidate else None
                if other is not None and other != name:
                    raise Conflict(f"--alias {alias}: endpoint {other!r} of network {network} has that name")
        owner = self.rt.store.alias_owner(network, name.lower(), other_than=name)
        if owner is not None:
            raise Conflict(f"endpoint name {name!r} is an alias of endpoint {owner!r} in network {network}")
        return EndpointDns(hostname, aliases, settings)

    # --- changes ---------------------------------------------------------------------------
    def added(self, row: EndpointRow, dns: EndpointDns, rb: Rollback) -> None:
        """The endpoint's settings stored, its files written, the resolver told: one rollback unit."""
        self.rt.store.set_endpoint_dns(row.name, row.network, dns.to_json(), list(dns.aliases))
        rb.push("DNS settings", lambda: self.rt.store.remove_endpoint_dns(row.name))
        if has_files(row):
            self.files.write(row.netns, self.contents(row, dns))
            rb.push(f"/etc/netns/{row.netns} files", lambda: self.files.remove(row.netns))
        self.changed()

    def removed(self, row: EndpointRow) -> None:
        """Teardown: the endpoint's files (its settings go with its store row)."""
        if has_files(row):
            self.files.remove(row.netns)

    def changed(self) -> None:
        """Something the resolver answers changed: hand it the new state (and wait until loaded),
        and the datapath the names it answers itself."""
        state = self.state()
        try:
            self.rt.datapath.set_dns_names(records.datapath_names(state))
        except (OSError, RuntimeError) as exc:
            log.warning("could not give the datapath its DNS names (the resolver answers them): %s", exc)
        # With the eBPF datapath the new names answer (A/AAAA) as soon as dns_names has them, so
        # an endpoint add does not also wait for the resolver: the watch thread hands it the
        # latest state, several changes at once when they come fast (1000 adds in a row). Without
        # programs the resolver is the only answer: the add waits until it has loaded the state.
        if self.rt.datapath.mode != MODE_BRIDGE and self._watching:
            with self._pending_lock:
                self._pending = state
            self._wake.set()
            return
        self._push(state, wait=self.rt.datapath.mode == MODE_BRIDGE)

    def _push(self, state: dict[str, Any], wait: bool) -> None:
        try:
            with self.lock:
                self.resolver.push(state, wait=wait)
        except OSError as exc:
            log.warning("could not hand the DNS resolver its state: %s", exc)

    def flush(self) -> None:
        """Hand the resolver the state a change left pending (at daemon stop: it serves on with it)."""
        with self._pending_lock:
            state, self._pending = self._pending, None
        if state is not None:
            self._push(state, wait=False)

    # --- files -----------------------------------------------------------------------------
    def endpoint_dns(self, name: str) -> EndpointDns:
        doc = self.rt.store.endpoint_dns(name).get(name)
        return EndpointDns.from_json(doc) if doc else EndpointDns()

    def resolv_conf(self, dns: EndpointDns) -> rules.ResolvConf:
        return rules.effective(self.options.host, self.options.settings, dns.settings)

    def contents(self, row: EndpointRow, dns: EndpointDns) -> dict[str, str]:
        net = self.rt.store.network(row.network)
        if net is None:
            raise InvalidArgument(f"network {row.network!r} not found")
        cfg = NetworkConfig.from_json(net.config)
        names = list(dict.fromkeys([dns.hostname or row.name, row.name, *dns.aliases]))
        addresses = [lease.address for lease in self.rt.store.endpoint_leases(row.name)]
        return {
            "resolv.conf": rules.render_resolv_conf(self.owner, listen_addresses(cfg), self.resolv_conf(dns)),
            "hosts": rules.render_hosts(self.owner, [(a, names) for a in addresses]),
        }

    # --- the resolver's state --------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        networks = []
        for net in self.rt.store.networks():
            cfg = NetworkConfig.from_json(net.config)
            subnets = (str(cfg.subnet4),) + ((str(cfg.subnet6),) if cfg.subnet6 is not None else ())
            networks.append(records.NetworkView(net.id, net.name, listen_addresses(cfg), subnets))
        configs = self.rt.store.endpoint_dns()
        addresses: dict[str, list[str]] = {}
        for lease in self.rt.store.leases():
            if not lease.address.lower().startswith("fe80:"):  # link-local: not for DNS
                addresses.setdefault(lease.endpoint, []).append(lease.address)
        endpoints = []
        for row in self.rt.store.endpoints():
            if row.state == "removing":
                continue
            dns = EndpointDns.from_json(configs[row.name]) if row.name in configs else EndpointDns()
            upstreams = self.resolv_conf(dns).nameservers if dns.settings.dns is not None else None
            endpoints.append(records.EndpointView(row.name, row.network, tuple(addresses.get(row.name, ())),
                                                  dns.hostname, dns.aliases, upstreams))
        upstreams = rules.effective(self.options.host, self.options.settings, rules.DnsSettings()).nameservers
        return records.State(0, self.owner, upstreams, networks, endpoints, self.rt.hostns).to_json()

    # --- daemon life -----------------------------------------------------------------------
    def start(self) -> None:
        """At daemon start, after the reconcile: adopt or start the resolver, rewrite every
        endpoint's files (the flags may have changed), remove the files of endpoints that are
        gone (a crash between removal and cleanup), hand the resolver its state."""
        try:
            with self.lock:
                pid, started = self.resolver.ensure()
            log.info("DNS resolver: %s pid %d", "started" if started else "adopted", pid)
        except (OSError, RuntimeError) as exc:
            # Not fatal: the datapath still answers endpoint names, and watch() keeps trying.
            log.error("DNS resolver: %s", exc)
        upstreams = rules.effective(self.options.host, self.options.settings, rules.DnsSettings()).nameservers
        if not upstreams:
            log.warning("DNS: no upstream nameserver an endpoint could use (from %s and --dns): the resolver "
                        "answers endpoint names only, other names fail (SERVFAIL)", self.options.source)
        live = set()
        for row in self.rt.store.endpoints():
            if row.state != "ready" or not has_files(row):
                continue
            live.add(row.netns)
            try:
                self.files.write(row.netns, self.contents(row, self.endpoint_dns(row.name)))
            except OSError as exc:
                log.warning("endpoint %s: cannot write its DNS files: %s", row.name, exc)
        for netns in self.files.mine():
            if netns not in live:
                log.info("removing the DNS files of %s (no such endpoint any more)", netns)
                self.files.remove(netns)
        self.changed()

    def watch(self, stop: threading.Event) -> threading.Thread:
        """A thread that hands the resolver pending state, and starts it again (with its state)
        within WATCH_INTERVAL when it dies."""
        def body() -> None:
            while not stop.is_set():
                self._wake.wait(WATCH_INTERVAL)
                self._wake.clear()
                try:
                    self.flush()
                    with self.lock:
                        if self.resolver.pid() is not None:
                            continue
                        log.warning("the DNS resolver is gone: starting it again")
                        self.resolver.ensure()
                        self.restarts += 1
                        self.resolver.push(self.state())
                except Exception:
                    log.exception("could not start the DNS resolver again")

        self._watching = True
        t = threading.Thread(target=body, name="dns-watch", daemon=True)
        t.start()
        return t

    def stop_resolver(self) -> bool:
        with self.lock:
            return self.resolver.stop()

    # --- what the API and metrics read -----------------------------------------------------
    def describe(self, row: EndpointRow) -> dict[str, Any]:
        dns = self.endpoint_dns(row.name)
        net = self.rt.store.network(row.network)
        conf = self.resolv_conf(dns)
        out: dict[str, Any] = {
            **dns.to_json(), "hostname": dns.hostname or row.name,
            "nameservers": list(listen_addresses(NetworkConfig.from_json(net.config))) if net else [],
            "upstreams": list(conf.nameservers), "search": list(conf.search), "options": list(conf.options),
            "files": [str(self.files.directory(row.netns) / n) for n in ("resolv.conf", "hosts")]
            if has_files(row) else [],
        }
        return out

    def info(self) -> dict[str, Any]:
        stats = self.resolver.stats() or {}
        return {"resolver_pid": self.resolver.pid(), "resolv_conf": self.options.source,
                "upstreams": list(rules.effective(self.options.host, self.options.settings,
                                                  rules.DnsSettings()).nameservers),
                "generation": stats.get("generation"), "restarts": self.restarts}

    def stats(self) -> dict[str, Any]:
        """What the resolver last wrote, whether it runs now, and the datapath's answers
        (result "datapath", by network and type) read from its counters now."""
        doc = {**(self.resolver.stats() or {}), "running": self.resolver.pid() is not None}
        try:
            counts = self.rt.datapath.dns_counters()
        except (OSError, RuntimeError):
            counts = {}
        if counts:
            names = {net.id: net.name for net in self.rt.store.networks()}
            rows = list(doc.get("queries", []))
            for network_id, c in sorted(counts.items()):
                for qtype, key in (("A", "answered_a"), ("AAAA", "answered_aaaa")):
                    if c.get(key) and network_id in names:
                        rows.append([names[network_id], qtype, "datapath", c[key]])
            doc["queries"] = rows
        return doc
