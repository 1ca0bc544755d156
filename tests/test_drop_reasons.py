"""bpf/drop_reasons.h (the X-macro list) and bpfnet.datapath.drop_reasons agree."""

from __future__ import annotations

import re
from pathlib import Path

from bpfnet.datapath.drop_reasons import DROP_REASON_LABELS, DropReason

HEADER = Path(__file__).resolve().parents[1] / "bpf" / "drop_reasons.h"


def header_reasons() -> list[tuple[str, int]]:
    text = HEADER.read_text()
    body = text[text.index("#define BPFNET_DROP_REASONS(X)"):]
    body = body[: body.index("\n\n")]
    return [(name, int(num)) for name, num in re.findall(r"X\((\w+),\s*(\d+),", body)]


def test_header_and_python_agree() -> None:
    c = header_reasons()
    assert c, "no X(...) entries found in drop_reasons.h"
    assert c == [(r.name, r.value) for r in DropReason]


def test_numbers_are_dense_from_zero() -> None:
    # they index drops[] in the counter map
    assert [num for _, num in header_reasons()] == list(range(len(DropReason)))


def test_labels() -> None:
    assert DROP_REASON_LABELS == ("spoofed_source", "policy", "internal", "tunnel_source")
