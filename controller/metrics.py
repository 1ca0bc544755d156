"""Prometheus metrics for bpfnet: the scrape-time collector, the controller's
own instrumentation and the ``/metrics`` HTTP server.

Boundary: this module never talks to the kernel, the datapath or the daemon
state directly. The daemon hands :class:`BpfnetCollector` a callable that
returns a :class:`MetricsSnapshot`; the collector calls it exactly once per
scrape and turns it into metric families (no polling thread, no mirrored
Counters, so removed endpoints and networks vanish from the next scrape).
:class:`ControllerMetrics` holds ordinary prometheus_client metrics that the
controller updates itself (API requests, endpoint add/remove latency,
reconcile errors). :func:`serve_metrics` exposes a registry over HTTP, on
loopback unless explicitly allowed otherwise. See the README's Metrics section for the
reference of every series.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import ipaddress
import logging
import platform
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import Counter, Histogram, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)


def _version() -> str:
    """bpfnet's version (the package attribute, else the installed metadata)."""
    try:
        from . import __version__

        return str(__version__)
    except ImportError:  # e.g. a stale editable install seeing a namespace package
        try:
            return importlib.metadata.version("bpfnet")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


#: Default TCP port of the metrics endpoint. Not allocated to any exporter on
#: https://github.com/prometheus/prometheus/wiki/Default-port-allocations at the
#: time of writing (9100 node, 9090 prometheus, 9093 alertmanager are taken).
DEFAULT_PORT = 9523
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"

#: Keys of the per-endpoint counters dict produced by ``Datapath.counters()``.
COUNTER_KEYS = (
    "tx_fast_packets",
    "tx_fast_bytes",
    "tx_kernel_packets",
    "tx_kernel_bytes",
    "rx_fast_packets",
    "rx_fast_bytes",
    "rx_kernel_packets",
    "rx_kernel_bytes",
)

#: Direction prefix in the counters dict -> value of the ``direction`` label
#: and the word used in metric names.
DIRECTIONS = (("rx", "receive"), ("tx", "transmit"))
PATHS = ("fast", "kernel")
_PAST = {"receive": "received", "transmit": "transmitted"}

# Buckets for endpoint add/remove: netlink, veth creation and BPF attach take
# milliseconds; a slow kernel or a loaded host may take seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# --------------------------------------------------------------------------
# Snapshot: what the daemon hands the collector on every scrape.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkStats:
    """IPAM and endpoint count of one network at scrape time.

    ``ipv6_total`` may be astronomically large (a /64 holds 2**64 addresses),
    so it is exported as a float; ``None`` means the network has no IPv6.
    """

    name: str
    ipv4_total: int
    ipv4_in_use: int
    endpoints: int
    ipv6_total: float | None = None
    ipv6_in_use: int | None = None


@dataclass(frozen=True)
class EndpointRef:
    """The names of one endpoint and its slot id in the datapath counters."""

    name: str
    network: str
    id: int

    @classmethod
    def from_spec(cls, spec: Any) -> EndpointRef:
        """Build from a :class:`bpfnet.model.EndpointSpec` (or anything with
        ``name``, ``network`` and ``id``)."""
        return cls(name=str(spec.name), network=str(spec.network), id=int(spec.id))


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything one scrape exports, taken from the daemon's state.

    ``counters`` is ``Datapath.counters()`` verbatim (keyed by endpoint id) and
    ``datapath_info`` is ``Datapath.info()``. Counters of ids that no endpoint
    in ``endpoints`` owns are ignored; endpoints without counters (bridge mode)
    get no traffic series. ``requested_mode`` is the datapath mode the operator
    configured; when it differs from ``datapath_info["mode"]`` the datapath
    fell back (exported as a label of ``bpfnet_datapath_info``).
    """

    networks: tuple[NetworkStats, ...] = ()
    endpoints: tuple[EndpointRef, ...] = ()
    datapath_info: Mapping[str, Any] = field(default_factory=dict)
    counters: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    requested_mode: str | None = None


SnapshotFn = Callable[[], MetricsSnapshot]


def stats_document(snap: MetricsSnapshot) -> dict[str, Any]:
    """The JSON document the API serves for ``bpfnet top``:
    ``{"endpoints": [{"name", "network", "counters"}]}`` (JSON-safe)."""
    out: list[dict[str, Any]] = []
    for ep in sorted(snap.endpoints, key=lambda e: (e.network, e.name)):
        c = snap.counters.get(ep.id)
        if c is None:
            continue
        counters: dict[str, Any] = {k: int(c.get(k, 0)) for k in COUNTER_KEYS}
        drops = c.get("drops") or {}
        counters["drops"] = {
            d: {str(r): int(v) for r, v in (drops.get(d) or {}).items()} for d in ("tx", "rx")
        }
        out.append({"name": ep.name, "network": ep.network, "counters": counters})
    return {"endpoints": out}


# --------------------------------------------------------------------------
# Collector
# --------------------------------------------------------------------------

_EP_LABELS = ("network", "endpoint")


class BpfnetCollector(Collector):
    """Custom collector: one snapshot call per scrape, metric families out.

    If the snapshot callable raises, the scrape still succeeds with
    ``bpfnet_scrape_success 0`` and the build info (the error is logged), so a
    broken daemon state shows up as data rather than as a failed scrape.
    """

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        """Names without samples, so registering never calls the snapshot."""
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        start = time.perf_counter()
        try:
            snap = self._snapshot()
        except Exception:  # report, don't fail the scrape
            log.exception("metrics snapshot failed")
            snap = None
        fams = self._families()
        if snap is not None:
            self._fill(fams, snap)
        _add_gauge(fams["scrape_success"], [], 1.0 if snap is not None else 0.0)
        _add_gauge(fams["scrape_duration"], [], time.perf_counter() - start)
        _add_info(
            fams["build"], {"version": _version(), "python_version": platform.python_version()}
        )
        return list(fams.values())

    @staticmethod
    def _families() -> dict[str, Metric]:
        f: dict[str, Metric] = {}
        for _, word in DIRECTIONS:
            past = _PAST[word]
            f[f"{word}_bytes"] = CounterMetricFamily(
                f"bpfnet_endpoint_{word}_bytes",
                f"Bytes the endpoint {past} (fast and kernel path).",
                labels=_EP_LABELS,
            )
            f[f"{word}_packets"] = CounterMetricFamily(
                f"bpfnet_endpoint_{word}_packets",
                f"Packets the endpoint {past} (fast and kernel path).",
                labels=_EP_LABELS,
            )
            f[f"{word}_path_bytes"] = CounterMetricFamily(
                f"bpfnet_endpoint_{word}_path_bytes",
                f"Bytes the endpoint {past}, by datapath path (fast = eBPF redirect, "
                "kernel = handed to the Linux bridge/stack).",
                labels=(*_EP_LABELS, "path"),
            )
            f[f"{word}_path_packets"] = CounterMetricFamily(
                f"bpfnet_endpoint_{word}_path_packets",
                f"Packets the endpoint {past}, by datapath path (fast = eBPF redirect, "
                "kernel = handed to the Linux bridge/stack).",
                labels=(*_EP_LABELS, "path"),
            )
        f["drops"] = CounterMetricFamily(
            "bpfnet_endpoint_drops",
            "Packets the datapath dropped, by direction and reason.",
            labels=(*_EP_LABELS, "direction", "reason"),
        )
        f["ipam"] = GaugeMetricFamily(
            "bpfnet_network_ipam_addresses",
            "Addresses in the network's IPAM pool (excluding network, broadcast "
            "and gateway as the pool defines them).",
            labels=("network", "family"),
        )
        f["ipam_in_use"] = GaugeMetricFamily(
            "bpfnet_network_ipam_addresses_in_use",
            "Addresses of the network's IPAM pool currently allocated.",
            labels=("network", "family"),
        )
        f["endpoints"] = GaugeMetricFamily(
            "bpfnet_network_endpoints",
            "Endpoints attached to the network.",
            labels=("network",),
        )
        f["datapath"] = InfoMetricFamily(
            "bpfnet_datapath",
            "Datapath in use: mode is the running mode, requested_mode the configured one.",
            labels=("mode", "requested_mode"),
        )
        f["program"] = InfoMetricFamily(
            "bpfnet_program",
            "eBPF programs the datapath has loaded, with kernel id, tag and attach point.",
            labels=("name", "id", "tag", "attach"),
        )
        f["scrape_success"] = GaugeMetricFamily(
            "bpfnet_scrape_success",
            "1 if the daemon state snapshot for this scrape succeeded, else 0.",
        )
        f["scrape_duration"] = GaugeMetricFamily(
            "bpfnet_scrape_duration_seconds",
            "Time taken to take and convert the snapshot for this scrape.",
        )
        f["build"] = InfoMetricFamily(
            "bpfnet_build",
            "bpfnet version and the Python it runs on.",
            labels=("version", "python_version"),
        )
        return f

    @staticmethod
    def _fill(f: dict[str, Metric], snap: MetricsSnapshot) -> None:
        seen: set[tuple[str, str]] = set()
        for ep in snap.endpoints:
            c = snap.counters.get(ep.id)
            key = (ep.network, ep.name)
            if c is None or key in seen:
                if key in seen:
                    log.warning("duplicate endpoint %s/%s in metrics snapshot", *key)
                continue
            seen.add(key)
            lv = [ep.network, ep.name]
            for short, word in DIRECTIONS:
                nbytes = npkts = 0
                for path in PATHS:
                    b = int(c.get(f"{short}_{path}_bytes", 0))
                    p = int(c.get(f"{short}_{path}_packets", 0))
                    nbytes += b
                    npkts += p
                    _add_counter(f[f"{word}_path_bytes"], [*lv, path], b)
                    _add_counter(f[f"{word}_path_packets"], [*lv, path], p)
                _add_counter(f[f"{word}_bytes"], lv, nbytes)
                _add_counter(f[f"{word}_packets"], lv, npkts)
            drops = c.get("drops") or {}
            for short, word in DIRECTIONS:
                for reason, n in sorted((drops.get(short) or {}).items()):
                    _add_counter(f["drops"], [*lv, word, str(reason)], int(n))

        for net in snap.networks:
            _add_gauge(f["ipam"], [net.name, "ipv4"], net.ipv4_total)
            _add_gauge(f["ipam_in_use"], [net.name, "ipv4"], net.ipv4_in_use)
            if net.ipv6_total is not None:
                _add_gauge(f["ipam"], [net.name, "ipv6"], float(net.ipv6_total))
                _add_gauge(f["ipam_in_use"], [net.name, "ipv6"], net.ipv6_in_use or 0)
            _add_gauge(f["endpoints"], [net.name], net.endpoints)

        info = snap.datapath_info
        mode = str(info.get("mode", ""))
        if mode:
            _add_info(f["datapath"], {"mode": mode, "requested_mode": snap.requested_mode or mode})
        for prog in info.get("programs") or ():
            _add_info(
                f["program"],
                {
                    "name": str(prog.get("name", "")),
                    "id": str(prog.get("id", "")),
                    "tag": str(prog.get("tag", "")),
                    "attach": str(prog.get("attach", "")),
                },
            )


def _add_counter(fam: Metric, labels: Sequence[str], value: float) -> None:
    assert isinstance(fam, CounterMetricFamily)
    fam.add_metric(list(labels), value)


def _add_gauge(fam: Metric, labels: Sequence[str], value: float) -> None:
    assert isinstance(fam, GaugeMetricFamily)
    fam.add_metric(list(labels), value)


def _add_info(fam: Metric, value: dict[str, str]) -> None:
    assert isinstance(fam, InfoMetricFamily)
    fam.add_metric([], value)


# --------------------------------------------------------------------------
# The controller's own instrumentation
# --------------------------------------------------------------------------


class ControllerMetrics:
    """Direct instrumentation of the controller's work, in a given registry.

    ``route`` must be the route *template* (``/networks/{name}``), never the
    raw path, to keep label cardinality bounded.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.api_requests = Counter(
            "bpfnet_api_requests",
            "API requests handled, by route template, method and HTTP status.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.endpoint_add_duration = Histogram(
            "bpfnet_endpoint_add_duration_seconds",
            "Time to add an endpoint (links, addresses, datapath), by result.",
            ("result",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.endpoint_remove_duration = Histogram(
            "bpfnet_endpoint_remove_duration_seconds",
            "Time to remove an endpoint, by result.",
            ("result",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.reconcile_errors = Counter(
            "bpfnet_reconcile_errors",
            "Errors while bringing kernel state in step with the daemon's state.",
            registry=registry,
        )
        # Pre-create the label sets that always exist so that rate() works
        # from the first increment.
        for hist in (self.endpoint_add_duration, self.endpoint_remove_duration):
            for result in ("success", "error"):
                hist.labels(result)

    def api_request(self, route: str, method: str, status: int | str) -> None:
        """Count one handled API request."""
        self.api_requests.labels(route, method.upper(), str(status)).inc()

    def observe_endpoint_add(self, seconds: float, ok: bool = True) -> None:
        self.endpoint_add_duration.labels("success" if ok else "error").observe(seconds)

    def observe_endpoint_remove(self, seconds: float, ok: bool = True) -> None:
        self.endpoint_remove_duration.labels("success" if ok else "error").observe(seconds)

    @contextlib.contextmanager
    def time_endpoint_add(self) -> Iterator[None]:
        """``with m.time_endpoint_add(): ...`` observes the duration; an
        exception is recorded as ``result="error"`` and re-raised."""
        with _timed(self.observe_endpoint_add):
            yield

    @contextlib.contextmanager
    def time_endpoint_remove(self) -> Iterator[None]:
        with _timed(self.observe_endpoint_remove):
            yield

    def reconcile_error(self) -> None:
        """Count one reconcile error."""
        self.reconcile_errors.inc()


@contextlib.contextmanager
def _timed(observe: Callable[[float, bool], None]) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        observe(time.perf_counter() - start, False)
        raise
    observe(time.perf_counter() - start, True)


def build_registry(
    snapshot: SnapshotFn, *, process: bool = True
) -> tuple[CollectorRegistry, ControllerMetrics]:
    """A private registry with the bpfnet collector, the controller metrics and
    (if ``process``) the standard process/platform/GC collectors."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    registry.register(BpfnetCollector(snapshot))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry, ControllerMetrics(registry)


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------


def parse_address(addr: str) -> tuple[str, int]:
    """Parse ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces).

    Raises ValueError on anything else. Port 0 means "any free port".
    """
    text = addr.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"bad metrics address {addr!r}: expected [ipv6]:port")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad metrics address {addr!r}: {host!r} is not IPv6") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad metrics address {addr!r}: expected host:port")
        if ":" in host:
            raise ValueError(f"bad metrics address {addr!r}: write IPv6 as [addr]:port")
        host = host or "0.0.0.0"
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"bad metrics address {addr!r}: port must be 0..65535")
    return host, int(port_s)


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """First address of ``host`` and its family (hostnames are resolved)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise ValueError(f"cannot resolve metrics host {host!r}") from None
        fam, _, _, _, sockaddr = infos[0]
        return fam, str(sockaddr[0])
    return (socket.AF_INET6 if ip.version == 6 else socket.AF_INET), str(ip)


def _check_loopback(host: str, allow_public: bool, what: str) -> None:
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if ip.is_loopback:
        return
    if not allow_public:
        raise ValueError(
            f"refusing to serve metrics on non-loopback address {what}; "
            "pass allow_public=True to expose them"
        )
    log.warning(
        "serving metrics on non-loopback address %s: anyone who can reach it can read them", what
    )


def bind_metrics_socket(
    addr: str = DEFAULT_ADDRESS, *, allow_public: bool = False
) -> socket.socket:
    """Create, bind and listen on a TCP socket for :func:`serve_metrics`.

    Useful when the socket must be made before the daemon enters another
    network namespace. Refuses non-loopback addresses unless ``allow_public``.
    """
    host, port = parse_address(addr)
    family, ip = _resolve(host, port)
    _check_loopback(ip, allow_public, addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and ip == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((ip, port))
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """A running ``/metrics`` server; :meth:`close` stops it and frees the port."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        name = self._server.socket.getsockname()
        return str(name[0]), int(name[1])

    @property
    def url(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _app(registry: Collector) -> Callable[..., Iterable[bytes]]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            result: Iterable[bytes] = metrics(environ, start_response)
            return result
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [b'<html><body><a href="/metrics">bpfnet metrics</a></body></html>\n']
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found; metrics are at /metrics\n"]

    return app


def serve_metrics(
    addr: str | None,
    registry: Collector,
    *,
    allow_public: bool = False,
    sock: socket.socket | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``http://addr/metrics`` from a daemon thread.

    Text format 0.0.4 by default, OpenMetrics when the Accept header asks for
    it, gzip when accepted. ``addr`` is ``host:port`` / ``[v6]:port``
    (default port :data:`DEFAULT_PORT` if ``None``); non-loopback addresses
    raise ValueError unless ``allow_public`` (then a warning is logged).
    Alternatively pass an already bound (and possibly listening) ``sock``
    with ``addr=None``; the server takes ownership of it.
    """
    if sock is not None:
        if addr is not None:
            raise ValueError("pass either addr or sock, not both")
        bound = sock.getsockname()
        _check_loopback(str(bound[0]), allow_public, f"{bound[0]}:{bound[1]}")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.listen(64)
    else:
        sock = bind_metrics_socket(addr or DEFAULT_ADDRESS, allow_public=allow_public)

    family = sock.family

    class _Server(ThreadingWSGIServer):
        address_family = family

    try:
        server = _Server(sock.getsockname()[:2], _QuietHandler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        host, port = sock.getsockname()[:2]
        server.server_name = str(host)  # no reverse DNS lookup
        server.server_port = port
        server.setup_environ()
        server.set_app(_app(registry))
    except BaseException:
        sock.close()
        raise
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="bpfnet-metrics",
        daemon=True,
    )
    thread.start()
    log.info("serving metrics on %s", sock.getsockname()[:2])
    return MetricsServer(server, thread)
