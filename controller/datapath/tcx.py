"""tcx plumbing for bpfnet's programs: BPF links on a device's ingress/egress hook
(and on a netkit pair's peer hook, which is attached the same way).

Boundary: creating, updating, pinning and removing bpfnet's tcx links
(Linux 6.6+) in the current netns; nothing about maps or cls_bpf filters
(``tc.py``). A link is ours when it is pinned under ``<pin_dir>/links/`` as
``<ifindex>-<direction>``: the pin keeps it attached after the daemon exits,
and a restarted daemon opens it and swaps the program with BPF_LINK_UPDATE,
so the hook never runs without a program (or with two), as a cls_bpf
"replace-filter" does.

When a device goes away the kernel detaches its links but our pin stays,
and the ifindex may later name another device: a pin is live only while
the link's info still reports the ifindex its name carries (a detached
tcx link reports 0). Stale pins are unlinked wherever they are found.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

from . import bpfsys

log = logging.getLogger(__name__)

LINK_DIR = "links"
# "netkit-peer": the program inside the transmit of a netkit pair's peer (see
# ``netkit.py``), attached through the primary's ifindex; the link reports the
# peer's ifindex (in the endpoint's namespace), 0 once the pair is gone.
NETKIT_PEER = "netkit-peer"
# "uplink": the ingress hook of an uplink (uplink_ingress, published ports' fast path),
# pinned under its own name so a restarted daemon finds which devices are uplinks.
TCX_HOOKS = ("ingress", "egress", "uplink")
ATTACH_TYPES = {"ingress": bpfsys.BPF_TCX_INGRESS, "egress": bpfsys.BPF_TCX_EGRESS,
                "uplink": bpfsys.BPF_TCX_INGRESS, NETKIT_PEER: bpfsys.BPF_NETKIT_PEER}
LINK_TYPES = {"ingress": bpfsys.BPF_LINK_TYPE_TCX, "egress": bpfsys.BPF_LINK_TYPE_TCX,
              "uplink": bpfsys.BPF_LINK_TYPE_TCX, NETKIT_PEER: bpfsys.BPF_LINK_TYPE_NETKIT}


def link_dir(pin_dir: str) -> str:
    return os.path.join(pin_dir, LINK_DIR)


def link_path(pin_dir: str, ifindex: int, direction: str) -> str:
    return os.path.join(link_dir(pin_dir), f"{ifindex}-{direction}")


def _obj_get(path: str) -> int | None:
    """fd of the object pinned at path, or None when nothing is pinned there."""
    try:
        return bpfsys.obj_get(path)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def _open_live(path: str, ifindex: int, direction: str) -> int | None:
    """fd of the link pinned at path while it is attached to ifindex/direction;
    None (the stale pin unlinked) otherwise."""
    fd = _obj_get(path)
    if fd is None:
        return None
    try:
        info = bpfsys.link_info(fd)
    except OSError:
        os.close(fd)
        raise
    on_device = info.ifindex != 0 if direction == NETKIT_PEER else info.ifindex == ifindex
    if info.type == LINK_TYPES[direction] and on_device and info.attach_type == ATTACH_TYPES[direction]:
        return fd
    os.close(fd)
    log.info("unpinning stale tcx link %s (its device is gone)", path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return None


def attach(pin_dir: str, ifindex: int, direction: str, prog_fd: int) -> None:
    """Attach prog_fd on ifindex/direction, or atomically swap the program of
    the link already pinned there."""
    path = link_path(pin_dir, ifindex, direction)
    fd = _open_live(path, ifindex, direction)
    if fd is not None:
        try:
            bpfsys.link_update(fd, prog_fd)
        finally:
            os.close(fd)
        return
    fd = bpfsys.link_create(prog_fd, ifindex, ATTACH_TYPES[direction])
    try:
        os.makedirs(link_dir(pin_dir), mode=0o700, exist_ok=True)
        bpfsys.obj_pin(fd, path)
    finally:
        # Pinned: the pin holds the link. Not pinned: closing the only fd detaches it.
        os.close(fd)


def attached(pin_dir: str, ifindex: int, direction: str) -> int | None:
    """Program id on our live link at ifindex/direction, or None."""
    path = link_path(pin_dir, ifindex, direction)
    fd = _open_live(path, ifindex, direction)
    if fd is None:
        return None
    try:
        return bpfsys.link_info(fd).prog_id
    finally:
        os.close(fd)


def detach(pin_dir: str, ifindex: int, directions: tuple[str, ...] | str | None = None) -> None:
    """Remove our links (the given hooks, default all) on ifindex; none there is success."""
    if isinstance(directions, str):
        directions = (directions,)
    for d in ATTACH_TYPES if directions is None else directions:
        _remove(link_path(pin_dir, ifindex, d))


def _remove(path: str) -> None:
    fd = _obj_get(path)
    if fd is None:
        return
    try:
        # Detach now, not when the last holder lets go (a tool may hold an fd).
        bpfsys.link_detach(fd)
    except OSError as e:
        log.debug("detaching %s: %s", path, e)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def pinned(pin_dir: str) -> list[tuple[int, str]]:
    """(ifindex, direction) of every link pin under pin_dir (live or stale)."""
    out = []
    try:
        names = os.listdir(link_dir(pin_dir))
    except FileNotFoundError:
        return []
    for name in names:
        idx, _, d = name.partition("-")  # "12-egress", "12-netkit-peer"
        if idx.isdigit() and d in ATTACH_TYPES:
            out.append((int(idx), d))
        else:
            log.warning("unexpected entry %s in %s", name, link_dir(pin_dir))
    return sorted(out)


def remove_stale(pin_dir: str, keep: set[int]) -> None:
    """Remove link pins whose ifindex is not in keep or whose device is gone."""
    for ifindex, d in pinned(pin_dir):
        if ifindex not in keep:
            log.info("removing stale bpfnet tcx link from ifindex %d/%s", ifindex, d)
            _remove(link_path(pin_dir, ifindex, d))
        else:
            fd = _open_live(link_path(pin_dir, ifindex, d), ifindex, d)
            if fd is not None:
                os.close(fd)


def remove_all(pin_dir: str) -> None:
    """Detach and unpin every link, then drop the links directory."""
    for ifindex, d in pinned(pin_dir):
        _remove(link_path(pin_dir, ifindex, d))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(link_dir(pin_dir))
