"""The bpfnet daemon: start-up, wiring and shutdown.

Boundary: takes the locks (one daemon per state dir and per managed
namespace), binds listeners in the namespace the daemon was started in, then
enters the namespace it manages (--netns), builds the runtime (store,
datapath, services), hands the services to the API routes (``api.routes``)
and the snapshot to the metrics, and serves until SIGTERM/SIGINT. Stopping
leaves programs, pins, bridges and endpoints in place, so traffic keeps
flowing. A start that fails removes what it made: the namespace it created,
the pins it created, its sockets and its locks.
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

from . import __version__, links, netns
from .api import routes
from .api.server import ApiServer, Request
from .cluster.blocks import BlockStore
from .cluster.model import DEFAULT_TTL, check_advertise_addr, parse_store_url
from .cluster.store import EtcdStore
from .config import DaemonConfig, Listener
from .daemonlock import DaemonLock, NetnsLock, netns_lock, state_dir_lock
from .datapath import Datapath, abi, make_datapath, resolve_endpoint_device, tcx
from .dns import rules as dns_rules
from .dns.service import DnsOptions, DnsService
from .drivers import Drivers
from .drivers.bridge import BridgeDriver
from .drivers.overlay import OverlayDriver
from .drivers.routed import RoutedDriver
from .drivers.underlay import IpvlanDriver, MacvlanDriver
from .endpoints import EndpointService
from .errors import BpfnetError, Conflict, InvalidArgument, StoreUnavailable
from .metrics import build_registry
from .metrics.dns import DnsCollector
from .metrics.outside import OutsideCollector
from .metrics.server import MetricsServer, bind_metrics_socket, serve_metrics
from .netlink import IPRoute
from .networks import NetworkService
from .outside.nft import NftKernel
from .outside.service import OutsideService, OutsideSettings
from .plugins import docker
from .reconcile import migrate_stored_networks, reconcile_all
from .recovery import check_fresh_state
from .runtime import Runtime
from .snapshot import ClusterStats, MetricsSnapshot
from .state import Store, prepare_state_dir
from .stats import take_snapshot
from .tls import daemon_tls

log = logging.getLogger(__name__)
PIN_ROOT = Path("/sys/fs/bpf/bpfnet")


def pin_dir(hostns: str | None) -> str:
    return str(PIN_ROOT / (hostns or "host"))


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.on_request: Callable[[str, str, int], None] = lambda route, method, status: None
        self.locks: list[DaemonLock | NetnsLock] = []
        self.created_netns = False
        self.cleanup_only = False  # --cleanup: no cluster store, nothing but the removal
        self.pins_existed = True

    # start-up ---------------------------------------------------------
    def lock(self) -> None:
        """One daemon per state dir, before anything is made (the namespace's lock
        is taken once the daemon is in it: see _enter_and_build)."""
        prepare_state_dir(self.cfg.state_dir)
        self.locks.append(state_dir_lock(self.cfg.state_dir).acquire())

    def unlock(self) -> None:
        while self.locks:
            self.locks.pop().release()

    def setup(self) -> None:
        cfg = self.cfg
        if os.geteuid() != 0:
            raise BpfnetError("bpfnet daemon must run as root (it creates namespaces, links and BPF programs)")
        with IPRoute() as outer:
            outer_prefixes = links.host_prefixes(outer) if cfg.netns else []
        self.dns_options = read_dns_options(cfg)
        self.router = routes.Router()
        self.metrics_sock: socket.socket | None = None
        self.metrics_server: MetricsServer | None = None
        tls = daemon_tls(tls=cfg.tls, tlsverify=cfg.tlsverify, cacert=cfg.tlscacert, cert=cfg.tlscert,
                         key=cfg.tlskey)
        self.servers = ApiServer(cfg.listeners(), self._app, lambda r, m, s: self.on_request(r, m, s),
                                 tls=tls, group=cfg.group, allow=self.router.allowed)
        self.docker_server: ApiServer | None = None
        self.made_dirs: list[Path] = []  # the plugin socket's directories this daemon created
        try:
            if cfg.docker_plugin_socket:
                self.made_dirs = missing_dirs(Path(cfg.docker_plugin_socket).parent)
                # Bound here, like the API's listeners; answered once the services exist.
                self.docker_server = ApiServer([Listener("unix", path=cfg.docker_plugin_socket)],
                                               self._docker_app, lambda r, m, s: None, group=cfg.group,
                                               content_type=docker.CONTENT_TYPE)
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
            if self.docker_server is not None:
                self.docker_server.close()
            remove_empty_dirs(self.made_dirs)
            if self.metrics_sock is not None:
                self.metrics_sock.close()
            if self.created_netns and cfg.netns:
                netns.remove(cfg.netns)  # a failed start leaves nothing it made
            raise
        self.registry, self.controller_metrics = build_registry(self.snapshot)
        if self.outside is not None:
            self.registry.register(OutsideCollector(self.outside.counters))
        self.registry.register(DnsCollector(self.dns.stats, lambda: self.dns.restarts))
        self.on_request = self.controller_metrics.api_request
        self.rt.observer = self.controller_metrics
        self.rt.outer_prefixes = outer_prefixes
        routes.install(self.router, networks=self.networks, endpoints=self.endpoints,
                       info=self.info, snapshot=self.snapshot,
                       nodes=self.overlay.nodes if self.overlay is not None else None,
                       remove_node=self.overlay.remove_node if self.overlay is not None else None)
        self.docker = docker.DockerPlugin(self.networks, self.endpoints)

    def _app(self, req: Request) -> tuple[int, Any, str]:
        return self.router.dispatch(req.method, req.path, req.body)

    def _docker_app(self, req: Request) -> tuple[int, Any, str]:
        return self.docker.handle(req.method, req.path, req.body)

    def _enter_and_build(self) -> None:
        cfg = self.cfg
        if cfg.netns:
            # Before any thread exists: threads inherit the namespace.
            self.created_netns = netns.enter(cfg.netns)
        self.locks.append(netns_lock(cfg.netns).acquire())
        store = Store(cfg.state_dir)
        try:
            self._check_state_owner(store)
        except BaseException:
            store.close()
            raise
        self.pins_existed = os.path.isdir(pin_dir(cfg.netns))
        try:
            device = resolve_endpoint_device(cfg.endpoint_device, cfg.datapath)
            datapath: Datapath = make_datapath(cfg.datapath, pin_dir(cfg.netns), Runtime.max_endpoints,
                                               cfg.datapath_attach, device)
        except ImportError as exc:
            raise BpfnetError(
                f"--datapath {cfg.datapath} needs Debian's python3-bpfcc ({exc}); "
                "run scripts/setup or pass --datapath bridge"
            ) from None
        except ValueError as exc:  # netkit asked for where it cannot work: name why
            raise InvalidArgument(str(exc)) from None
        self.rt = Runtime(store=store, datapath=datapath, ipr=IPRoute(), hostns=cfg.netns,
                          ndp_proxy_iface=cfg.ndp_proxy_iface, address_pools=cfg.address_pools,
                          ip_forward=cfg.ip_forward, endpoint_device=device)
        self.overlay: OverlayDriver | None = None
        drivers = Drivers(BridgeDriver(self.rt), MacvlanDriver(self.rt), IpvlanDriver(self.rt))
        self.routed = RoutedDriver(self.rt, None, None)  # refuses networks without a cluster store
        if cfg.cluster_store and not self.cleanup_only:  # --cleanup needs no cluster
            self.overlay = self._join_cluster(cfg)
            drivers.add(self.overlay)
            self.routed = RoutedDriver(self.rt, BlockStore(self.overlay.cluster), self.overlay.advertise)
        drivers.add(self.routed)
        self.networks = NetworkService(self.rt, drivers)
        if self.overlay is not None:
            self.overlay.networks = self.networks
        self.endpoints = EndpointService(self.rt, self.networks)
        self.outside: OutsideService | None = None
        nft = NftKernel(self.rt.ipr)
        why_not = nft.unusable()
        if why_not is None:
            self.outside = OutsideService(self.rt, nft, OutsideSettings(cfg.ip_masq, cfg.ip6_masq, cfg.ip_forward,
                                                                          cfg.published_fastpath, cfg.uplinks))
            self.networks.outside = self.endpoints.outside = self.outside
        else:
            log.warning("no masquerading and no published ports: %s", why_not)
        state_dir = Path(cfg.state_dir).resolve()
        self.dns = DnsService(self.rt, self.dns_options, f"state {state_dir}", state_dir / "dns",
                              log_level=cfg.log_level)
        self.networks.dns = self.endpoints.dns = self.dns

    def _join_cluster(self, cfg: DaemonConfig) -> OverlayDriver:
        """Reach etcd and register this node (inside the managed namespace: the underlay is there)."""
        assert cfg.cluster_store and cfg.advertise_addr
        node = cfg.node_name or socket.gethostname()
        ttl = int(os.environ.get("BPFNET_CLUSTER_TTL", DEFAULT_TTL))  # tests shorten the node lease
        store = EtcdStore(parse_store_url(cfg.cluster_store), node, cfg.advertise_addr, ttl=ttl)
        driver = OverlayDriver(self.rt, store, check_advertise_addr(cfg.advertise_addr), node,
                               native=cfg.overlay_encap == "native")
        driver.check_underlay()  # before anything is registered in etcd
        try:
            store.connect()
        except StoreUnavailable as exc:
            raise BpfnetError(f"--cluster-store: {exc.message}") from None
        return driver

    def _check_state_owner(self, store: Store) -> None:
        owner = self.cfg.netns or ""
        recorded = store.claim_meta("hostns", owner)
        if recorded != owner:
            raise Conflict(
                f"--state-dir {self.cfg.state_dir} belongs to a daemon managing "
                f"{recorded or 'its own namespace'!r}, not {owner or 'its own namespace'!r}"
            )

    def reconcile(self) -> dict[str, int]:
        """Bring kernel and state in step after a restart (or a crash): see bpfnet.recovery
        (kernel objects a lost state does not know) and bpfnet.reconcile (the CHECK)."""
        cfg = self.cfg
        migrate_stored_networks(self.rt)
        check_fresh_state(self.rt, cfg.reconcile, pin_dir(cfg.netns), cfg.bridge)
        repairs = reconcile_all(self.rt, self.networks, self.endpoints, cfg.default_network(),
                                delete_leaks=cfg.reconcile != "adopt")
        if self.outside is not None:
            self.outside.start()  # adopts a previous daemon's table: rebuilt in one transaction
        if self.overlay is not None:
            self.overlay.start()  # the tunnel device, then in step with the cluster, then watching
        self.dns.start()  # adopts a previous daemon's resolver; rewrites and checks the endpoints' files
        self.routed.start()  # this node's blocks claimed, routes to the others', then every second
        return repairs

    def undo_failed_start(self) -> None:
        """A start that failed after building: remove the pins and namespace it created."""
        if not self.pins_existed:
            log.info("start failed: removing the pins this start created in %s", pin_dir(self.cfg.netns))
            try:
                self.rt.datapath.cleanup()
            except Exception:
                log.exception("could not remove the pins this start created")
        if self.created_netns and self.cfg.netns:
            netns.remove(self.cfg.netns)

    # what the API and the metrics read ----------------------------------
    def info(self) -> dict[str, Any]:
        doc = routes.info_document(self.cfg, self.rt, self.metrics_server.url if self.metrics_server else None,
                                   self.servers.warnings)
        doc["outside"] = self.outside.info() if self.outside is not None else None
        doc["dns"] = self.dns.info()
        doc["cluster"] = None if self.overlay is None else {
            "store": self.overlay.cluster.url, "node": self.overlay.node, "advertise_addr": str(self.overlay.advertise),
            "connected": self.overlay.cluster.connected, "ttl": self.overlay.cluster.ttl,
            "store_requests": self.overlay.cluster.requests, "store_keepalives": self.overlay.cluster.keepalives,
            "remote_endpoints": len(self.overlay.cluster.view.remote(self.overlay.node)),
            "tunnel": self.rt.datapath.tunnel_counters(),
        }
        return doc

    def snapshot(self) -> MetricsSnapshot:
        cluster = None
        if self.overlay is not None:
            view, me = self.overlay.cluster.view, self.overlay.node
            owners = {e.node for e in view.endpoints.values()}
            cluster = ClusterStats(store_up=self.overlay.cluster.connected, nodes_alive=len(view.nodes),
                                   nodes_down=len(owners - set(view.nodes)),
                                   remote_endpoints=len(view.remote(me)),
                                   store_requests=self.overlay.cluster.requests)
        return take_snapshot(self.rt, self.cfg.datapath, cluster)

    # run --------------------------------------------------------------
    def serve(self) -> None:
        if self.metrics_sock is not None:
            self.metrics_server = serve_metrics(None, self.registry, sock=self.metrics_sock)
            log.info("metrics on %s", self.metrics_server.url)
        self.servers.serve()
        if self.docker_server is not None:
            self.docker_server.serve()
            log.info("Docker network and IPAM driver %s on %s", self.cfg.docker_plugin, self.cfg.docker_plugin_socket)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.dns.watch(self.stop_event)
        log.info("bpfnet %s ready (datapath %s)", __version__, self.rt.datapath.mode)
        for warning in self.servers.warnings:
            log.warning("%s", warning)
        self.stop_event.wait()
        log.info("stopping; programs, pins and endpoints stay in place")

    def close(self) -> None:
        self.dns.flush()  # the resolver serves on after the daemon: with the latest names
        if getattr(self, "overlay", None) is not None:
            assert self.overlay is not None
            self.routed.stop()
            self.overlay.stop()
        self.servers.close()
        if self.docker_server is not None:
            self.docker_server.close()  # unlinks the plugin's socket: dockerd must not find a dead one
        remove_empty_dirs(self.made_dirs)
        if self.metrics_server is not None:
            self.metrics_server.close()
        elif self.metrics_sock is not None:
            self.metrics_sock.close()
        self.rt.datapath.close()
        self.rt.ipr.close()
        self.rt.store.close()
        self.unlock()

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
            # cleanup() removes tcx links and tc filters alike: no need to probe which.
            datapath = EbpfDatapath(mode=abi.MODE_REDIRECT, pin_dir=pin_dir(self.cfg.netns),
                                    max_endpoints=self.rt.max_endpoints, attach=abi.ATTACH_TC)
        datapath.cleanup()
        if self.outside is not None and self.outside.cleanup():
            log.info("removed bpfnet's nftables table")
        if self.dns.stop_resolver():
            log.info("stopped the DNS resolver")
        try:
            PIN_ROOT.rmdir()
        except OSError:
            pass  # other managed namespaces still have pins, or it never existed
        log.info("removed bpfnet's BPF programs, filters and pins")


def run(cfg: DaemonConfig, cleanup: bool = False) -> int:
    daemon = Daemon(cfg)
    if cleanup and cfg.netns and not netns.exists(cfg.netns):
        # Nothing can be attached in a namespace that does not exist; --cleanup never creates one.
        daemon.lock()
        try:
            remove_pins(pin_dir(cfg.netns))
        finally:
            daemon.unlock()
        log.info("network namespace %s does not exist: nothing else to clean up", cfg.netns)
        return 0
    daemon.lock()
    daemon.cleanup_only = cleanup
    try:
        daemon.setup()
    except BaseException:
        daemon.unlock()
        raise
    try:
        if cleanup:
            daemon.cleanup()
            return 0
        try:
            daemon.reconcile()
        except BaseException:
            daemon.undo_failed_start()  # this start's pins and namespace: leave nothing behind
            raise
        daemon.serve()
    finally:
        daemon.close()
    return 0


def read_dns_options(cfg: DaemonConfig) -> DnsOptions:
    """The daemon's DNS settings and the resolv.conf endpoints' files start from: --resolv-conf,
    else /etc/resolv.conf as the namespace the daemon was started in sees it (read before
    entering --netns). A missing default file means no upstreams; a missing --resolv-conf is an error."""
    source = cfg.resolv_conf or "/etc/resolv.conf"
    try:
        text = Path(source).read_text()
    except OSError as exc:
        if cfg.resolv_conf:
            raise InvalidArgument(f"--resolv-conf {source}: {exc.strerror or exc}") from None
        log.warning("cannot read %s (%s): endpoints get no upstream nameserver unless --dns", source, exc)
        text = ""
    settings = dns_rules.settings(cfg.dns, cfg.dns_search, cfg.dns_opt)
    return DnsOptions(settings, dns_rules.parse_resolv_conf(text), source)


def missing_dirs(path: Path) -> list[Path]:
    """PATH and those of its parents that do not exist yet, deepest first."""
    out = []
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_empty_dirs(paths: list[Path]) -> None:
    """Remove the directories (deepest first) a daemon created, those still empty."""
    for path in paths:
        try:
            path.rmdir()
        except OSError:
            return  # not empty (someone else's socket is there) or gone: its parents stay too


def remove_pins(path: str) -> None:
    """Unlink the pins under PATH (its maps, and its tcx links' directory) and PATH itself."""
    if not os.path.isdir(path):
        return
    tcx.remove_all(path)
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isfile(full):
            os.unlink(full)
    try:
        os.rmdir(path)
        PIN_ROOT.rmdir()
    except OSError:
        pass  # not empty: other managed namespaces still have pins
    log.info("removed the pins in %s", path)
