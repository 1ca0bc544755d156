"""The served ``/metrics`` body: content negotiation, direct text rendering, gzip.

Boundary: this module knows the Prometheus text format 0.0.4 and OpenMetrics
1.0 and nothing about bpfnet's series. prometheus_client formats every sample
generically (label names validated and every label value escaped per sample),
which dominates a scrape with thousands of per-endpoint samples. A collector
that can write its own exposition text faster (``collector.BpfnetCollector``)
asks :func:`direct_render` during ``collect()``; if a :func:`render` is in
progress it appends its text through a :class:`Writer` and returns no
families, otherwise it returns ordinary families. Everything else in the
registry (controller metrics, process and GC collectors) is formatted by
prometheus_client, so a registry stays the single source of what is exported
and ``generate_latest(registry)`` keeps working unchanged.

The format is chosen by prometheus_client's own ``choose_encoder`` from the
``Accept`` header; direct rendering is used only for the formats it writes
(text 0.0.4 / 1.0.0 and OpenMetrics 1.0.0, with legacy metric names), any
other negotiation is served entirely by prometheus_client.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import gzip
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# Metric and label names written directly are legacy names ([a-zA-Z_:][a-zA-Z0-9_:]*),
# which these two name-escaping schemes leave untouched.
_DIRECT_ESCAPINGS = (openmetrics.UNDERSCORES, openmetrics.ALLOWUTF8)

# Level 9 (gzip.compress's default, used by prometheus_client) costs several
# times level 6 on a 2 MB body for a few percent of size.
GZIP_LEVEL = 6


class Format(enum.Enum):
    """The exposition formats :class:`Writer` produces."""

    TEXT = "text"  # Prometheus text format 0.0.4 (identical samples in 1.0.0)
    OPENMETRICS = "openmetrics"  # OpenMetrics 1.0.0


def escape(value: str) -> str:
    """A label value as it goes between double quotes (both formats)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@dataclass
class Writer:
    """Accumulates exposition text for one format.

    Families are written whole (header, then every sample), as both formats
    require. Counter and info families are named as in OpenMetrics (without
    ``_total`` / ``_info``); the writer adds the suffix where the format wants it.
    """

    format: Format
    parts: list[str] = field(default_factory=list)

    def family(self, name: str, kind: str, help_text: str) -> str:
        """Write the HELP and TYPE lines; return the name samples must carry."""
        sample = name + _SAMPLE_SUFFIX.get(kind, "")
        if self.format is Format.OPENMETRICS:
            self.parts.append(f"# HELP {name} {escape(help_text)}\n# TYPE {name} {kind}\n")
        else:
            doc = help_text.replace("\\", r"\\").replace("\n", r"\n")
            text_kind = "gauge" if kind == "info" else kind
            self.parts.append(f"# HELP {sample} {doc}\n# TYPE {sample} {text_kind}\n")
        return sample

    def samples(self, sample: str, bodies: list[str]) -> None:
        """Write lines ``sample + body`` for each body (``{labels} value\\n``).

        Joining on the name avoids building one more string per sample.
        """
        if bodies:
            self.parts.append(sample)
            self.parts.append(sample.join(bodies))

    def text(self) -> str:
        return "".join(self.parts)


_SAMPLE_SUFFIX = {"counter": "_total", "info": "_info"}


def sample_body(labels: Iterable[tuple[str, str]], value: str) -> str:
    """``{name="value",…} value\\n`` (label values escaped here) for :meth:`Writer.samples`."""
    text = ",".join(f'{k}="{escape(v)}"' for k, v in labels)
    return f"{{{text}}} {value}\n" if text else f" {value}\n"


# prometheus_client's spelling of floats (+Inf, NaN, Go-style exponents); untyped there.
gauge_value: Callable[[float], str] = floatToGoString


# The Writer of the render in progress in this thread, if any.
_DIRECT: contextvars.ContextVar[Writer | None] = contextvars.ContextVar(
    "bpfnet_direct_render", default=None
)


def direct_render() -> Writer | None:
    """For collectors: the writer to append to instead of returning families,
    or None when prometheus_client is formatting (e.g. ``generate_latest``)."""
    return _DIRECT.get()


def _direct_format(encoder: object) -> Format | None:
    """The Format choose_encoder() picked, if the Writer can produce it."""
    if encoder is generate_latest:
        return Format.TEXT
    if not isinstance(encoder, functools.partial):
        return None
    if encoder.keywords.get("escaping") not in _DIRECT_ESCAPINGS:
        return None
    if encoder.func is generate_latest:
        return Format.TEXT
    if encoder.func is openmetrics.generate_latest and encoder.keywords.get("version") == "1.0.0":
        return Format.OPENMETRICS
    return None


def render(
    registry: Collector, accept: str | None, accept_encoding: str | None
) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of ``GET /metrics`` for these request headers.

    Directly rendered families come first, then prometheus_client's output for
    the rest of the registry (which ends with ``# EOF`` in OpenMetrics).
    """
    encoder, content_type = choose_encoder(accept or "")
    fmt = _direct_format(encoder)
    if fmt is None:
        body = encoder(registry)
    else:
        writer = Writer(fmt)
        token = _DIRECT.set(writer)
        try:
            rest = encoder(registry)
        finally:
            _DIRECT.reset(token)
        body = writer.text().encode() + rest
    headers = [("Content-Type", content_type)]
    if gzip_accepted(accept_encoding or ""):
        body = gzip.compress(body, compresslevel=GZIP_LEVEL)
        headers.append(("Content-Encoding", "gzip"))
    return headers, body
