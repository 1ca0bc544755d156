"""bpfnet's own metric families: one snapshot per scrape, rendered as exposition text.

Boundary: never talks to the kernel, the datapath or the daemon state. The
daemon hands :class:`BpfnetCollector` a callable returning a
:class:`~bpfnet.snapshot.MetricsSnapshot`; the collector calls it exactly once
per scrape (no polling thread, no mirrored Counters, so removed endpoints and
networks vanish from the next scrape). Counter key names come from
:mod:`bpfnet.datapath.counters`.

One renderer, one fallback. The served ``/metrics`` is written by
:meth:`BpfnetCollector._write` directly as text through
:mod:`bpfnet.metrics.exposition`: the per-endpoint samples are most of a
scrape, and formatting them one by one through prometheus_client's generic
families cost most of it (writing them directly took a scrape at 1000
endpoints from 92 ms to 8 ms). That writer is THE renderer of bpfnet's
families. The family path
(:meth:`BpfnetCollector._fill`) remains only as the fallback for callers that
let prometheus_client format a registry (``generate_latest``, exotic
negotiations, ``?name[]=`` filters); ``tests/test_metrics_exposition.py``
checks that both export the same families, HELP texts and samples. The
README's Metrics section is the reference of every series.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..datapath import counters
from ..datapath.counters import PATHS
from ..snapshot import EndpointRef, MetricsSnapshot, SnapshotFn
from . import exposition

log = logging.getLogger(__name__)


def _version() -> str:
    """bpfnet's version (the package attribute, else the installed metadata)."""
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:  # e.g. a stale editable install seeing a namespace package
        try:
            return importlib.metadata.version("bpfnet")
        except importlib.metadata.PackageNotFoundError:
            return "unknown"


#: Direction in the counters dict (``datapath.counters.DIRECTIONS``) -> value
#: of the ``direction`` label and the word used in metric names.
DIRECTIONS = (("rx", "receive"), ("tx", "transmit"))
_PAST = {"receive": "received", "transmit": "transmitted"}


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
    path_help = ("by datapath path (fast = eBPF redirect to a local endpoint, tunnel = eBPF encapsulation to / "
                 "decapsulation from another host of an overlay network, routed = eBPF redirect to / from another "
                 "host of a routed network, bridge bypassed, kernel = handed to the Linux bridge/stack).")
    for _, word in DIRECTIONS:
        past = _PAST[word]
        f[f"{word}_bytes"] = _Family(
            f"bpfnet_endpoint_{word}_bytes", "counter",
            f"Bytes the endpoint {past} (every path).", _EP_LABELS,
        )
        f[f"{word}_packets"] = _Family(
            f"bpfnet_endpoint_{word}_packets", "counter",
            f"Packets the endpoint {past} (every path).", _EP_LABELS,
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
    f["network_info"] = _Family(
        "bpfnet_network", "info", "One series per network: its driver (bridge, overlay, ...).",
        ("network", "driver"),
    )
    f["tunnel_rx"] = _Family(
        "bpfnet_tunnel_received_packets", "counter",
        "Packets that arrived through the overlay tunnel (VXLAN), by outcome: delivered to a local "
        "endpoint, unknown (no network for the VNI or no endpoint for the address), not_ip (ARP, "
        "broadcast, multicast: not carried across hosts).", ("outcome",),
    )
    f["tunnel_rx_bytes"] = _Family(
        "bpfnet_tunnel_received_bytes", "counter",
        "Bytes that arrived through the overlay tunnel and were delivered to a local endpoint.", (),
    )
    f["tunnel_native"] = _Family(
        "bpfnet_tunnel_native_packets", "counter",
        "Overlay packets whose VXLAN headers the eBPF programs wrote (direction encap) or stripped "
        "(decap) themselves, without the VXLAN device (--overlay-encap native).", ("direction",),
    )
    f["cluster_nodes"] = _Family(
        "bpfnet_cluster_nodes", "gauge",
        "Nodes of the cluster: alive (lease held) or down (lease expired, endpoints kept in the store).",
        ("state",),
    )
    f["cluster_remote"] = _Family(
        "bpfnet_cluster_remote_endpoints", "gauge",
        "Endpoints on other live nodes this node's datapath forwards to.", (),
    )
    f["cluster_store_up"] = _Family(
        "bpfnet_cluster_store_up", "gauge", "1 while the cluster store (etcd) answers, else 0.", (),
    )
    f["cluster_requests"] = _Family(
        "bpfnet_cluster_store_requests", "counter", "Requests this daemon sent to the cluster store.", (),
    )
    f["datapath"] = _Family(
        "bpfnet_datapath", "info",
        "Datapath in use: mode is the running mode, requested_mode the configured one, "
        "attach how its programs are attached (tcx, tc; none without programs), endpoint_device "
        "what endpoints' device pairs are (veth, netkit).",
        ("mode", "requested_mode", "attach", "endpoint_device"),
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
    short: tuple(counters.key(short, path, unit) for path in PATHS for unit in ("bytes", "packets"))
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

    When the served ``/metrics`` is being rendered (:mod:`bpfnet.metrics.exposition`)
    the collector writes its exposition text directly instead of returning
    families (see the module docstring for why); the families are the fallback
    for prometheus_client's own formatting. Both paths export the same
    samples; ``tests/test_metrics_exposition.py`` compares them.
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
                    b = int(c.get(counters.key(short, path, "bytes"), 0))
                    p = int(c.get(counters.key(short, path, "packets"), 0))
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
        fast, kernel, tunnel, routed = (f',path="{path}"' for path in PATHS)
        for ep, c in _endpoint_rows(snap):
            key = (ep.network, ep.name)
            lbl = old.get(key) or f'network="{esc(ep.network)}",endpoint="{esc(ep.name)}"'
            labels[key] = lbl
            get = c.get
            for (kfb, kfp, kkb, kkp, ktb, ktp, krb, krp), nbytes, npkts, pbytes, ppkts in per_dir:
                fb, fp = int(get(kfb, 0)), int(get(kfp, 0))
                kb, kp = int(get(kkb, 0)), int(get(kkp, 0))
                tb, tp = int(get(ktb, 0)), int(get(ktp, 0))
                rb, rp = int(get(krb, 0)), int(get(krp, 0))
                nbytes.append(f"{{{lbl}}} {fb + kb + tb + rb}\n")
                npkts.append(f"{{{lbl}}} {fp + kp + tp + rp}\n")
                pbytes.append(f"{{{lbl}{fast}}} {fb}\n")
                pbytes.append(f"{{{lbl}{kernel}}} {kb}\n")
                ppkts.append(f"{{{lbl}{fast}}} {fp}\n")
                ppkts.append(f"{{{lbl}{kernel}}} {kp}\n")
                pbytes.append(f"{{{lbl}{tunnel}}} {tb}\n")
                ppkts.append(f"{{{lbl}{tunnel}}} {tp}\n")
                pbytes.append(f"{{{lbl}{routed}}} {rb}\n")
                ppkts.append(f"{{{lbl}{routed}}} {rp}\n")
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
        key: [] for key in ("ipam", "ipam_in_use", "endpoints", "network_info", "datapath", "program",
                            "tunnel_rx", "tunnel_rx_bytes", "tunnel_native", "cluster_nodes", "cluster_remote", "cluster_store_up",
                            "cluster_requests")
    }
    if snap is not None:
        for net in snap.networks:
            out["ipam"].append(((net.name, "ipv4"), net.ipv4_total))
            out["ipam_in_use"].append(((net.name, "ipv4"), net.ipv4_in_use))
            if net.ipv6_total is not None:
                out["ipam"].append(((net.name, "ipv6"), float(net.ipv6_total)))
                out["ipam_in_use"].append(((net.name, "ipv6"), net.ipv6_in_use or 0))
            out["endpoints"].append(((net.name,), net.endpoints))
            out["network_info"].append(((net.name, net.driver), 1))
        if snap.tunnel:
            t = snap.tunnel
            for outcome, k in (("delivered", "rx_packets"), ("unknown", "rx_unknown"), ("not_ip", "rx_not_ip")):
                out["tunnel_rx"].append(((outcome,), float(t.get(k, 0))))
            out["tunnel_rx_bytes"].append(((), float(t.get("rx_bytes", 0))))
            for direction, k in (("encap", "tx_native"), ("decap", "rx_native")):
                out["tunnel_native"].append(((direction,), float(t.get(k, 0))))
        if snap.cluster is not None:
            cl = snap.cluster
            out["cluster_nodes"] += [(("alive",), cl.nodes_alive), (("down",), cl.nodes_down)]
            out["cluster_remote"].append(((), cl.remote_endpoints))
            out["cluster_store_up"].append(((), 1.0 if cl.store_up else 0.0))
            out["cluster_requests"].append(((), cl.store_requests))
        info = snap.datapath_info
        mode = str(info.get("mode", ""))
        if mode:
            attach = str(info.get("attach") or "none")
            device = str(info.get("endpoint_device") or "veth")
            out["datapath"].append(((mode, snap.requested_mode or mode, attach, device), 1))
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

