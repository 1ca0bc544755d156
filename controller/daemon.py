"""The bpfnet daemon: start-up, wiring and shutdown.

Boundary: builds the runtime (store, datapath, services), binds listeners in
the namespace the daemon was started in, then enters the namespace it manages
(--netns), hands the services to the API routes (``api.routes``) and the
snapshot to the metrics, and serves until SIGTERM/SIGINT. Stopping leaves
programs, pins, bridges and endpoints in place, so traffic keeps flowing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from . import __version__, links, netns
from .api import routes
from .api.server import ApiServers
from .config import DaemonConfig, default_network_config
from .datapath import Datapath, abi, make_datapath
from .endpoints import EndpointService
from .errors import BpfnetError, Conflict, InvalidArgument
from .metrics import build_registry
from .metrics.server import MetricsServer, bind_metrics_socket, serve_metrics
from .networks import NetworkService
from .reconcile import reconcile_all
from .runtime import Runtime
from .snapshot import MetricsSnapshot
from .state import Store
from .stats import take_snapshot

log = logging.getLogger(__name__)
PIN_ROOT = Path("/sys/fs/bpf/bpfnet")


def pin_dir(hostns: str | None) -> str:
    return str(PIN_ROOT / (hostns or "host"))


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.on_request: Callable[[str, str, int], None] = lambda route, method, status: None

    # start-up ---------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise BpfnetError("bpfnet daemon must run as root (it creates namespaces, links and BPF programs)")
        with IPRoute() as outer:
            outer_prefixes = links.host_prefixes(outer) if cfg.netns else []
        self.router = routes.Router()
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
        self.rt.observer = self.controller_metrics
        self.rt.outer_prefixes = outer_prefixes
        routes.install(self.router, networks=self.networks, endpoints=self.endpoints,
                       info=self.info, snapshot=self.snapshot)

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
        recorded = store.claim_meta("hostns", owner)
        if recorded != owner:
            raise Conflict(
                f"--state-dir {self.cfg.state_dir} belongs to a daemon managing "
                f"{recorded or 'its own namespace'!r}, not {owner or 'its own namespace'!r}"
            )

    def reconcile(self) -> dict[str, int]:
        """Bring kernel and state in step after a restart (or a crash): see bpfnet.reconcile."""
        cfg = self.cfg
        return reconcile_all(self.rt, self.networks, self.endpoints, default_network_config(
            bridge=cfg.bridge, bip=cfg.bip, fixed_cidr=cfg.fixed_cidr, ipv6=cfg.ipv6,
            fixed_cidr_v6=cfg.fixed_cidr_v6, default_gateway=cfg.default_gateway,
            default_gateway_v6=cfg.default_gateway_v6, mtu=cfg.mtu, icc=cfg.icc,
        ))

    # what the API and the metrics read ----------------------------------
    def info(self) -> dict[str, Any]:
        return routes.info_document(self.cfg, self.rt, self.metrics_server.url if self.metrics_server else None)

    def snapshot(self) -> MetricsSnapshot:
        return take_snapshot(self.rt, self.cfg.datapath)

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
        if datapath.mode == abi.MODE_BRIDGE:
            try:
                from .datapath.ebpf import EbpfDatapath
            except ImportError:
                log.info("bcc is not importable: no bpfnet programs can exist here")
                return
            datapath = EbpfDatapath(mode=abi.MODE_REDIRECT, pin_dir=pin_dir(self.cfg.netns),
                                    max_endpoints=self.rt.max_endpoints)
        datapath.cleanup()
        try:
            PIN_ROOT.rmdir()
        except OSError:
            pass  # other managed namespaces still have pins, or it never existed
        log.info("removed bpfnet's BPF programs, filters and pins")


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
