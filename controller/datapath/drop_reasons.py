"""Why the datapath dropped a packet: the Python mirror of ``bpf/drop_reasons.h``.

Boundary: names and numbers only. The C header is the source of truth; the
numbers index the ``drops[]`` array of every endpoint counter, and
``tests/test_drop_reasons.py`` fails when the two lists disagree.
"""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    """One value per X(...) entry of BPFNET_DROP_REASONS, same name, same number."""

    SPOOFED_SOURCE = 0
    POLICY = 1

    @property
    def label(self) -> str:
        """Name used in counters() and metrics: lower case, e.g. "spoofed_source"."""
        return self.name.lower()


DROP_REASON_LABELS: tuple[str, ...] = tuple(r.label for r in DropReason)
