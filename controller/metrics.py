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
loopback unless explicitly allowed otherwise; the response body is made by
:mod:`bpfnet.exposition`, into which the collector writes its families as text
directly (see :class:`BpfnetCollector`). See the README's Metrics section for
the reference of every series.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import ipaddress
import logging
import platform
import socket
import threading
import time
import urllib.parse
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

from . import exposition

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


@dataclass(frozen=True)
class _Family:
    """One metric family the collector exports: OpenMetrics name (no ``_total``
    / ``_info``), kind (``counter``, ``gauge`` or ``info``), HELP and label names."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()


def _family_specs() -> dict[str, _Family]:
    f: dict[str, _Family] = {}
    path_help = "by datapath path (fast = eBPF redirect, kernel = handed to the Linux bridge/stack)."
    for _, word in DIRECTIONS:
        past = _PAST[word]
        f[f"{word}_bytes"] = _Family(
            f"bpfnet_endpoint_{word}_bytes", "counter",
            f"Bytes the endpoint {past} (fast and kernel path).", _EP_LABELS,
        )
        f[f"{word}_packets"] = _Family(
            f"bpfnet_endpoint_{word}_packets", "counter",
            f"Packets the endpoint {past} (fast and kernel path).", _EP_LABELS,
        )
        f[f"{word}_path_bytes"] = _Family(
            f"bpfnet_endpoint_{word}_path_bytes", "counter",
            f"Bytes the endpoint {past}, {path_help}", (*_EP_LABELS, "path"),
        )
        f[f"{word}_path_packets"] = _Family(
            f"bpfnet_endpoint_{word}_path_packets", "counter",
            f"Packets the endpoint {past}, {path_help}", (*_EP_LABELS, "path"),
        )
    f["drops"] = _Family(
        "bpfnet_endpoint_drops", "counter",
        "Packets the datapath dropped, by direction and reason.",
        (*_EP_LABELS, "direction", "reason"),
    )
    f["ipam"] = _Family(
        "bpfnet_network_ipam_addresses", "gauge",
        "Addresses in the network's IPAM pool (excluding network, broadcast "
        "and gateway as the pool defines them).",
        ("network", "family"),
    )
    f["ipam_in_use"] = _Family(
        "bpfnet_network_ipam_addresses_in_use", "gauge",
        "Addresses of the network's IPAM pool currently allocated.",
        ("network", "family"),
    )
    f["endpoints"] = _Family(
        "bpfnet_network_endpoints", "gauge", "Endpoints attached to the network.", ("network",)
    )
    f["datapath"] = _Family(
        "bpfnet_datapath", "info",
        "Datapath in use: mode is the running mode, requested_mode the configured one.",
        ("mode", "requested_mode"),
    )
    f["program"] = _Family(
        "bpfnet_program", "info",
        "eBPF programs the datapath has loaded, with kernel id, tag and attach point.",
        ("name", "id", "tag", "attach"),
    )
    f["scrape_success"] = _Family(
        "bpfnet_scrape_success", "gauge",
        "1 if the daemon state snapshot for this scrape succeeded, else 0.",
    )
    f["scrape_duration"] = _Family(
        "bpfnet_scrape_duration_seconds", "gauge",
        "Time taken to take and convert the snapshot for this scrape.",
    )
    f["build"] = _Family(
        "bpfnet_build", "info", "bpfnet version and the Python it runs on.",
        ("version", "python_version"),
    )
    return f


_FAMILIES = _family_specs()
_METRIC_CLASS: dict[str, Callable[..., Metric]] = {
    "counter": CounterMetricFamily,
    "gauge": GaugeMetricFamily,
    "info": InfoMetricFamily,
}
_ENDPOINT_FAMILIES = tuple(k for k, s in _FAMILIES.items() if s.labels[:2] == _EP_LABELS)

#: Counter keys of one direction, in the order the direct writer unpacks them
#: (PATHS order, bytes before packets).
_DIR_KEYS = {
    short: tuple(f"{short}_{path}_{unit}" for path in PATHS for unit in ("bytes", "packets"))
    for short, _ in DIRECTIONS
}

# Drop reasons are a handful of names; escape each once.
_escape_reason = functools.lru_cache(maxsize=256)(exposition.escape)

#: family key -> [(label values in the family's order, value)] of the non-endpoint families.
_StateSamples = dict[str, list[tuple[tuple[str, ...], float]]]


class BpfnetCollector(Collector):
    """Custom collector: one snapshot call per scrape, metric families out.

    If the snapshot callable raises, the scrape still succeeds with
    ``bpfnet_scrape_success 0`` and the build info (the error is logged), so a
    broken daemon state shows up as data rather than as a failed scrape.

    When the served ``/metrics`` is being rendered (:mod:`bpfnet.exposition`)
    the collector writes its exposition text directly instead of returning
    families: the per-endpoint samples are most of a scrape and formatting them
    one by one through prometheus_client costs ~70% of it. Both paths export
    the same samples; ``tests/test_metrics_exposition.py`` compares them.
    """

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot
        # (network, endpoint) -> 'network="…",endpoint="…"', escaped once per
        # endpoint and rebuilt from the endpoints of each scrape, so it never
        # holds endpoints that are gone.
        self._labels: dict[tuple[str, str], str] = {}
        # (family key, label values) -> sample line body of an info family, likewise.
        self._info_bodies: dict[tuple[str, tuple[str, ...]], str] = {}

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
        writer = exposition.direct_render()
        if writer is not None:
            self._write(writer, snap, start)
            return []
        fams = self._families()
        if snap is not None:
            self._fill(fams, snap)
        for key, samples in _state_samples(snap, start).items():
            fam = fams[key]
            for values, value in samples:
                if isinstance(fam, InfoMetricFamily):
                    fam.add_metric([], dict(zip(_FAMILIES[key].labels, values, strict=True)))
                else:
                    _add_gauge(fam, values, value)
        return list(fams.values())

    @staticmethod
    def _families() -> dict[str, Metric]:
        return {
            key: _METRIC_CLASS[s.kind](s.name, s.help, labels=s.labels)
            for key, s in _FAMILIES.items()
        }

    @staticmethod
    def _fill(f: dict[str, Metric], snap: MetricsSnapshot) -> None:
        for ep, c in _endpoint_rows(snap):
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

    def _write(self, w: exposition.Writer, snap: MetricsSnapshot | None, start: float) -> None:
        """Write every family as :meth:`collect` would return it, in the same order.

        Counter values are written as integers (exact for any u64, and what
        the kernel counted); gauges as prometheus_client spells floats.
        """
        bodies: dict[str, list[str]] = {key: [] for key in _ENDPOINT_FAMILIES}
        if snap is not None:
            self._endpoint_bodies(snap, bodies)
        for key, lines in bodies.items():
            spec = _FAMILIES[key]
            w.samples(w.family(spec.name, spec.kind, spec.help), lines)
        old, info = self._info_bodies, {}
        for key, samples in _state_samples(snap, start).items():
            spec = _FAMILIES[key]
            lines = []
            for values, value in samples:
                if spec.kind == "info":
                    # Info lines never change for a label set: with programs
                    # attached per endpoint they are thousands per scrape.
                    body = old.get((key, values)) or exposition.sample_body(
                        zip(spec.labels, values, strict=True), "1.0"
                    )
                    info[(key, values)] = body
                else:
                    body = exposition.sample_body(
                        zip(spec.labels, values, strict=True), exposition.gauge_value(value)
                    )
                lines.append(body)
            w.samples(w.family(spec.name, spec.kind, spec.help), lines)
        self._info_bodies = info

    def _endpoint_bodies(self, snap: MetricsSnapshot, bodies: dict[str, list[str]]) -> None:
        """Append ``{labels} value\\n`` of every per-endpoint sample to bodies[family]."""
        old = self._labels
        labels: dict[tuple[str, str], str] = {}
        drops_out = bodies["drops"]
        per_dir = [
            (
                _DIR_KEYS[short],
                bodies[f"{word}_bytes"],
                bodies[f"{word}_packets"],
                bodies[f"{word}_path_bytes"],
                bodies[f"{word}_path_packets"],
            )
            for short, word in DIRECTIONS
        ]
        esc = exposition.escape
        fast, kernel = (f',path="{path}"' for path in PATHS)
        for ep, c in _endpoint_rows(snap):
            key = (ep.network, ep.name)
            lbl = old.get(key) or f'network="{esc(ep.network)}",endpoint="{esc(ep.name)}"'
            labels[key] = lbl
            get = c.get
            for (kfb, kfp, kkb, kkp), nbytes, npkts, pbytes, ppkts in per_dir:
                fb, fp = int(get(kfb, 0)), int(get(kfp, 0))
                kb, kp = int(get(kkb, 0)), int(get(kkp, 0))
                nbytes.append(f"{{{lbl}}} {fb + kb}\n")
                npkts.append(f"{{{lbl}}} {fp + kp}\n")
                pbytes.append(f"{{{lbl}{fast}}} {fb}\n")
                pbytes.append(f"{{{lbl}{kernel}}} {kb}\n")
                ppkts.append(f"{{{lbl}{fast}}} {fp}\n")
                ppkts.append(f"{{{lbl}{kernel}}} {kp}\n")
            drops = get("drops") or {}
            for short, word in DIRECTIONS:
                for reason, n in sorted((drops.get(short) or {}).items()):
                    why = _escape_reason(str(reason))
                    drops_out.append(f'{{{lbl},direction="{word}",reason="{why}"}} {int(n)}\n')
        self._labels = labels


def _endpoint_rows(snap: MetricsSnapshot) -> list[tuple[EndpointRef, Mapping[str, Any]]]:
    """Endpoints that have counters, each (network, name) once (a duplicate is
    logged and skipped: two series with the same labels would break the scrape)."""
    seen: set[tuple[str, str]] = set()
    rows: list[tuple[EndpointRef, Mapping[str, Any]]] = []
    for ep in snap.endpoints:
        c = snap.counters.get(ep.id)
        if c is None:
            continue
        key = (ep.network, ep.name)
        if key in seen:
            log.warning("duplicate endpoint %s/%s in metrics snapshot", *key)
            continue
        seen.add(key)
        rows.append((ep, c))
    return rows


def _state_samples(snap: MetricsSnapshot | None, start: float) -> _StateSamples:
    """Samples of the families that are not per endpoint (networks, datapath,
    programs, scrape and build), labels in each family's order. Call it last:
    ``bpfnet_scrape_duration_seconds`` is measured from start to now."""
    out: _StateSamples = {
        key: [] for key in ("ipam", "ipam_in_use", "endpoints", "datapath", "program")
    }
    if snap is not None:
        for net in snap.networks:
            out["ipam"].append(((net.name, "ipv4"), net.ipv4_total))
            out["ipam_in_use"].append(((net.name, "ipv4"), net.ipv4_in_use))
            if net.ipv6_total is not None:
                out["ipam"].append(((net.name, "ipv6"), float(net.ipv6_total)))
                out["ipam_in_use"].append(((net.name, "ipv6"), net.ipv6_in_use or 0))
            out["endpoints"].append(((net.name,), net.endpoints))
        info = snap.datapath_info
        mode = str(info.get("mode", ""))
        if mode:
            out["datapath"].append(((mode, snap.requested_mode or mode), 1))
        for prog in info.get("programs") or ():
            get = prog.get
            labels = (str(get("name", "")), str(get("id", "")), str(get("tag", "")))
            out["program"].append(((*labels, str(get("attach", ""))), 1))
    out["scrape_success"] = [((), 1.0 if snap is not None else 0.0)]
    out["scrape_duration"] = [((), time.perf_counter() - start)]
    out["build"] = [((_version(), platform.python_version()), 1)]
    return out


def _add_counter(fam: Metric, labels: Sequence[str], value: float) -> None:
    assert isinstance(fam, CounterMetricFamily)
    fam.add_metric(list(labels), value)


def _add_gauge(fam: Metric, labels: Sequence[str], value: float) -> None:
    assert isinstance(fam, GaugeMetricFamily)
    fam.add_metric(list(labels), value)


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
            # GET is rendered here; the rest (OPTIONS, 405, ?name[]= filtering)
            # is rare and left to prometheus_client's app.
            query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            if environ.get("REQUEST_METHOD") == "GET" and "name[]" not in query:
                headers, body = exposition.render(
                    registry, environ.get("HTTP_ACCEPT"), environ.get("HTTP_ACCEPT_ENCODING")
                )
                start_response("200 OK", headers)
                return [body]
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
