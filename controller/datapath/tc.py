"""tc clsact plumbing for bpfnet's programs, through pyroute2 in the current netns.

Boundary: attaching, replacing and removing bpfnet's direct-action bpf
filters; nothing about maps. A filter is ours when its TCA_BPF_NAME starts
with FILTER_PREFIX. Every attach uses the same prio and handle, so a
"replace-filter" swaps the program atomically: a restarting daemon never
leaves a window without a program (or with two).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ..netlink import IPRoute

log = logging.getLogger(__name__)

FILTER_PREFIX = "bpfnet:"
PRIO = 1
HANDLE = 1
PARENTS = {"ingress": "ffff:fff2", "egress": "ffff:fff3"}

# "device is gone" answers: a removed veth takes its filters with it.
_GONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)


def ensure_clsact(ipr: IPRoute, ifindex: int) -> None:
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def attach(ipr: IPRoute, ifindex: int, direction: str, prog_fd: int, name: str) -> None:
    """Attach (or atomically replace) our filter on ifindex/direction."""
    attach_all(ipr, ifindex, [(direction, prog_fd, name)])


def attach_all(ipr: IPRoute, ifindex: int, filters: list[tuple[str, int, str]]) -> None:
    """Attach (or atomically replace) our (direction, prog_fd, name) filters on one device.

    One clsact request for all of them: a second "add clsact" is only an
    EEXIST answer, but pyroute2 takes ~1 ms to raise and catch it.
    """
    ensure_clsact(ipr, ifindex)
    for direction, prog_fd, name in filters:
        ipr.tc("replace-filter", "bpf", ifindex, HANDLE, fd=prog_fd, name=FILTER_PREFIX + name,
               parent=PARENTS[direction], classid=1, direct_action=True, prio=PRIO)


def _filter_name(msg: Any) -> str | None:
    opts = msg.get_attr("TCA_OPTIONS")
    if not opts:
        return None
    name = opts.get_attr("TCA_BPF_NAME")
    return str(name) if name is not None else None


def our_filters(ipr: IPRoute, ifindex: int) -> list[tuple[str, int, int, str]]:
    """(direction, prio, handle, name) of bpfnet's filters on one device."""
    out = []
    for direction, parent in PARENTS.items():
        try:
            msgs = ipr.get_filters(index=ifindex, parent=parent)
        except NetlinkError as e:
            if e.code in _GONE:
                continue
            raise
        for m in msgs:
            name = _filter_name(m)
            if name and name.startswith(FILTER_PREFIX) and m["handle"]:
                out.append((direction, m["info"] & 0xFFFF0000, m["handle"], name))
    return out


def detach(ipr: IPRoute, ifindex: int, direction: str | None = None) -> None:
    """Remove our filters (one direction or both); a missing device is success.
    Drops the clsact qdisc when nothing else is left on it."""
    try:
        for d, info, handle, _name in our_filters(ipr, ifindex):
            if direction is not None and d != direction:
                continue
            try:
                ipr.tc("del-filter", "bpf", ifindex, handle, parent=PARENTS[d],
                       prio=info >> 16)
            except NetlinkError as e:
                if e.code not in _GONE:
                    raise
        _drop_empty_clsact(ipr, ifindex)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def _drop_empty_clsact(ipr: IPRoute, ifindex: int) -> None:
    for parent in PARENTS.values():
        if any(m["handle"] for m in ipr.get_filters(index=ifindex, parent=parent)):
            return
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as e:
        if e.code not in _GONE:
            raise


def filter_hooks_by_device(ipr: IPRoute) -> dict[int, set[str]]:
    """{ifindex: directions with a bpfnet filter} for every device of this namespace."""
    found: dict[int, set[str]] = {}
    for q in ipr.get_qdiscs():
        if q.get_attr("TCA_KIND") == "clsact":
            hooks = {d for d, _, _, _ in our_filters(ipr, q["index"])}
            if hooks:
                found[q["index"]] = hooks
    return found


def devices_with_our_filters(ipr: IPRoute) -> list[int]:
    """ifindexes in this namespace that carry a bpfnet filter (one qdisc dump,
    then a filter dump per device with a clsact qdisc)."""
    found = []
    for q in ipr.get_qdiscs():
        if q.get_attr("TCA_KIND") == "clsact" and our_filters(ipr, q["index"]):
            found.append(q["index"])
    return found
