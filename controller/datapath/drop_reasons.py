"""Why the datapath dropped a packet: the Python mirror of ``bpf/drop_reasons.h``.

Boundary: names and numbers only. The C header's X-macro list is what the
programs use; the numbers index the ``drops[]`` array of every endpoint
counter (its length comes from here through ``abi.PATH_COUNTERS``). The two
lists are checked against each other at every load (``abi.ENUMS``: each
DROP_* value and DROP_REASON_COUNT, compiled into the programs' checks) and by
``tests/test_drop_reasons.py``.
"""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    """One value per X(...) entry of BPFNET_DROP_REASONS, same name, same number."""

    SPOOFED_SOURCE = 0
    POLICY = 1
    INTERNAL = 2
    TUNNEL_SOURCE = 3

    @property
    def label(self) -> str:
        """Name used in counters() and metrics: lower case, e.g. "spoofed_source"."""
        return self.name.lower()


DROP_REASON_LABELS: tuple[str, ...] = tuple(r.label for r in DropReason)
