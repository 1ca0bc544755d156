"""The bpfnet daemon: wiring, start-up reconciliation, and the API routes.

Boundary: builds the runtime (store, datapath, services), binds listeners in
the namespace the daemon was started in, then enters the namespace it manages
(--netns) and serves until SIGTERM/SIGINT. Stopping leaves programs, pins,
bridges and endpoints in place, so traffic keeps flowing.
"""

from __future__ import annotations

import logging
import os
import platform
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from . import __version__, links, netns
from .api import ApiServers, Router
from .config import DaemonConfig, NetworkConfig, default_network_config
from .datapath import Datapath, make_datapath
from .endpoints import EndpointService
from .errors import BpfnetError, Conflict, InvalidArgument
from .metrics import (
    EndpointRef,
    MetricsServer,
    MetricsSnapshot,
    NetworkStats,
    bind_metrics_socket,
    build_registry,
    serve_metrics,
    stats_document,
)
from .networks import NetworkService, pools
from .runtime import Runtime
from .state import Store

log = logging.getLogger(__name__)
PIN_ROOT = Path("/sys/fs/bpf/bpfnet")


def pin_dir(hostns: str | None) -> str:
    return str(PIN_ROOT / (hostns or "host"))


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.on_request: Callable[[str, str, int], None] = lambda route, method, status: None
        self.extra_routes: list[tuple[str, str, Any]] = []

    # start-up ---------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise BpfnetError("bpfnet daemon must run as root (it creates namespaces, links and BPF programs)")
        with IPRoute() as outer:
            outer_prefixes = links.host_prefixes(outer) if cfg.netns else []
        self.router = Router()
        self.metrics_sock: socket.socket | None = None
        self.created_netns = False
        self.metrics_server: MetricsServer | None = None
        self.servers = ApiServers(cfg.listeners(), self.router, lambda r, m, s: self.on_request(r, m, s))
        try:
            if cfg.metrics_addr:
                try:
                    self.metrics_sock = bind_metrics_socket(cfg.metrics_addr, allow_public=cfg.allow_public_metrics)
                except ValueError as exc:
                    raise InvalidArgument(f"--metrics-addr {cfg.metrics_addr}: {exc}") from None
                except OSError as exc:
                    raise BpfnetError(f"--metrics-addr {cfg.metrics_addr}: {exc.strerror or exc}") from None
            self._enter_and_build()
        except BaseException:
            self.servers.close()
            if self.metrics_sock is not None:
                self.metrics_sock.close()
            if self.created_netns and cfg.netns:
                netns.remove(cfg.netns)  # a failed start leaves nothing it made
            raise
        self.registry, self.controller_metrics = build_registry(self.snapshot)
        self.on_request = self.controller_metrics.api_request
        self.rt.hooks.update({
            "endpoint_add": self.controller_metrics.observe_endpoint_add,
            "endpoint_remove": self.controller_metrics.observe_endpoint_remove,
            "reconcile_error": self.controller_metrics.reconcile_error,
        })
        self.rt.outer_prefixes = outer_prefixes
        self._add_routes()

    def _enter_and_build(self) -> None:
        cfg = self.cfg
        if cfg.netns:
            # Before any thread exists: threads inherit the namespace.
            self.created_netns = netns.enter(cfg.netns)
        store = Store(cfg.state_dir)
        self._check_state_owner(store)
        try:
            datapath: Datapath = make_datapath(cfg.datapath, pin_dir(cfg.netns), Runtime.max_endpoints)
        except ImportError as exc:
            raise BpfnetError(
                f"--datapath {cfg.datapath} needs Debian's python3-bpfcc ({exc}); "
                "run scripts/setup or pass --datapath bridge"
            ) from None
        self.rt = Runtime(store=store, datapath=datapath, ipr=IPRoute(), hostns=cfg.netns,
                          ndp_proxy_iface=cfg.ndp_proxy_iface)
        self.networks = NetworkService(self.rt)
        self.endpoints = EndpointService(self.rt, self.networks)

    def _check_state_owner(self, store: Store) -> None:
        owner = self.cfg.netns or ""
        with store.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'hostns'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('hostns', ?)", (owner,))
            elif row[0] != owner:
                raise Conflict(
                    f"--state-dir {self.cfg.state_dir} belongs to a daemon managing "
                    f"{row[0] or 'its own namespace'!r}, not {owner or 'its own namespace'!r}"
                )

    def reconcile(self) -> dict[str, int]:
        """Bring kernel and state in step after a restart (or a crash).

        Order matters: bridges first (programs attach to them), then the
        datapath adopts its pinned maps and replaces its programs in place for
        every live endpoint, then half-made or vanished endpoints are torn down
        (which removes their map entries), then the default network follows
        the flags (which may attach a new bridge program).
        """
        rt, cfg = self.rt, self.cfg
        for row in rt.store.networks():
            self.networks.ensure_present(row)
        nets = [self.networks.spec(r) for r in rt.store.networks()]
        live = [spec for spec in self.endpoints.specs() if spec.host_ifindex]
        try:
            rt.datapath.start(nets, live)
        except Exception as exc:
            if "compile" not in str(exc).lower():
                raise
            raise BpfnetError(
                f"bcc could not compile bpf/ ({exc}): kernel headers for {platform.release()} are not "
                f"findable in /lib/modules/{platform.release()}/build; run scripts/setup, "
                "or pass --datapath bridge"
            ) from None
        stats = self.endpoints.reconcile()
        self.networks.update_default(default_network_config(
            bridge=cfg.bridge, bip=cfg.bip, fixed_cidr=cfg.fixed_cidr, ipv6=cfg.ipv6,
            fixed_cidr_v6=cfg.fixed_cidr_v6, default_gateway=cfg.default_gateway,
            default_gateway_v6=cfg.default_gateway_v6, mtu=cfg.mtu, icc=cfg.icc,
        ))
        if cfg.ndp_proxy_iface:
            self._ndp_proxy()
        log.info("reconciled: %s; datapath mode %s", stats, rt.datapath.mode)
        return stats

    def _ndp_proxy(self) -> None:
        iface = self.cfg.ndp_proxy_iface
        assert iface
        index = links.link_index(self.rt.ipr, iface)
        if index is None:
            raise InvalidArgument(f"--ndp-proxy-iface {iface}: no such interface in the managed namespace")
        netns.write_sysctls({f"net/ipv6/conf/{iface}/proxy_ndp": "1"})
        want = {IPv6Address(lease.address) for lease in self.rt.store.leases() if lease.family == 6}
        ours = [IPv6Network(r.config["subnet6"]) for r in self.rt.store.networks() if r.config.get("subnet6")]
        for text in links.proxy_neighbours(self.rt.ipr, index):
            address = IPv6Address(text)
            if address not in want and any(address in net for net in ours):
                links.remove_proxy_neighbour(self.rt.ipr, index, address)  # left by a removed endpoint
        for address in want:
            links.ensure_proxy_neighbour(self.rt.ipr, index, address)

    # API --------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        u = platform.uname()
        return {
            "version": __version__,
            "kernel": u.release,
            "hostname": u.node,
            "host_netns": self.cfg.netns,
            "state_dir": self.cfg.state_dir,
            "listeners": [str(listener) for listener in self.cfg.listeners()],
            "metrics_url": self.metrics_server.url if self.metrics_server else None,
            "datapath": self.rt.datapath.info(),
            "networks": len(self.rt.store.networks()),
            "endpoints": len(self.rt.store.endpoints()),
        }

    def snapshot(self) -> MetricsSnapshot:
        """What one scrape (or GET /v1/stats) exports: state rows plus one batch read per BPF map."""
        store = self.rt.store
        leases = store.leases()
        endpoints = [e for e in store.endpoints() if e.state == "ready"]
        # One pass over leases and endpoints, not one per network.
        in_use = Counter((lease.network, lease.family) for lease in leases)
        attached = Counter(e.network for e in endpoints)
        networks = []
        for row in store.networks():
            cfg = NetworkConfig.from_json(row.config)
            p4, p6 = pools(cfg)
            networks.append(NetworkStats(
                name=row.name,
                ipv4_total=p4.capacity(),
                ipv4_in_use=in_use[(row.name, 4)],
                endpoints=attached[row.name],
                ipv6_total=float(p6.capacity()) if p6 else (0.0 if cfg.ipv6 else None),
                ipv6_in_use=in_use[(row.name, 6)] if cfg.ipv6 else None,
            ))
        return MetricsSnapshot(
            networks=tuple(networks),
            endpoints=tuple(EndpointRef(e.name, e.network, e.id) for e in endpoints),
            datapath_info=self.rt.datapath.info(),
            counters=self.rt.datapath.counters(),
            requested_mode=self.cfg.datapath,
        )

    def stats(self) -> dict[str, Any]:
        """Counters per endpoint; endpoints without counters (bridge mode) are listed with null."""
        snap = self.snapshot()
        doc = stats_document(snap)
        listed = {(e["network"], e["name"]) for e in doc["endpoints"]}
        doc["endpoints"] += [{"name": e.name, "network": e.network, "counters": None}
                             for e in snap.endpoints if (e.network, e.name) not in listed]
        return {"mode": self.rt.datapath.mode, **doc}

    def _add_routes(self) -> None:
        r = self.router
        nets, eps = self.networks, self.endpoints
        ok = HTTPStatus.OK
        r.add("GET", "/v1/info", lambda p, b: (ok, self.info()))
        r.add("GET", "/v1/stats", lambda p, b: (ok, self.stats()))
        r.add("GET", "/v1/networks", lambda p, b: (ok, nets.list_all()))
        r.add("POST", "/v1/networks", lambda p, b: (HTTPStatus.CREATED, nets.create(_body(b))))
        r.add("GET", "/v1/networks/{name}", lambda p, b: (ok, nets.describe(nets.config(p["name"])[0])))
        r.add("DELETE", "/v1/networks/{name}", lambda p, b: _no_content(nets.remove, p["name"]))
        r.add("GET", "/v1/endpoints", lambda p, b: (ok, eps.list_all()))
        r.add("POST", "/v1/endpoints", lambda p, b: (HTTPStatus.CREATED, eps.add(_body(b))))
        r.add("GET", "/v1/endpoints/{name}", lambda p, b: (ok, eps.inspect(p["name"])))
        r.add("DELETE", "/v1/endpoints/{name}", lambda p, b: _no_content(eps.remove, p["name"]))
        for method, pattern, handler in self.extra_routes:
            r.add(method, pattern, handler)

    # run --------------------------------------------------------------
    def serve(self) -> None:
        if self.metrics_sock is not None:
            self.metrics_server = serve_metrics(None, self.registry, sock=self.metrics_sock)
            log.info("metrics on %s", self.metrics_server.url)
        self.servers.serve()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        log.info("bpfnet %s ready (datapath %s)", __version__, self.rt.datapath.mode)
        self.stop_event.wait()
        log.info("stopping; programs, pins and endpoints stay in place")

    def close(self) -> None:
        self.servers.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        elif self.metrics_sock is not None:
            self.metrics_sock.close()
        self.rt.datapath.close()
        self.rt.ipr.close()
        self.rt.store.close()

    def cleanup(self) -> None:
        """--cleanup: remove every program, filter, map entry and pin bpfnet made.

        Works whatever mode this daemon would pick: pins and filters of an
        earlier eBPF run are found by name, nothing is compiled.
        """
        datapath = self.rt.datapath
        if datapath.mode == "bridge":
            try:
                from .datapath.ebpf import EbpfDatapath
            except ImportError:
                log.info("bcc is not importable: no bpfnet programs can exist here")
                return
            datapath = EbpfDatapath(mode="redirect", pin_dir=pin_dir(self.cfg.netns))
        datapath.cleanup()
        try:
            PIN_ROOT.rmdir()
        except OSError:
            pass  # other managed namespaces still have pins, or it never existed
        log.info("removed bpfnet's BPF programs, filters and pins")


def _no_content(action: Callable[[str], None], name: str) -> tuple[int, None]:
    action(name)
    return HTTPStatus.NO_CONTENT, None


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("expected a JSON object in the request body")
    return body


def run(cfg: DaemonConfig, cleanup: bool = False) -> int:
    daemon = Daemon(cfg)
    daemon.setup()
    try:
        if cleanup:
            daemon.cleanup()
            return 0
        try:
            daemon.reconcile()
        except BaseException:
            if daemon.created_netns and cfg.netns:
                netns.remove(cfg.netns)  # this start made it: leave nothing behind
            raise
        daemon.serve()
    finally:
        daemon.close()
    return 0
