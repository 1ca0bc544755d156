"""Links stacked on a physical interface: 802.1q sub-interfaces, macvlan and ipvlan devices.

Boundary: kernel objects only, as ``bpfnet.links`` (no state, no policy); the underlay drivers
(``bpfnet.drivers.underlay``) decide what to make, through ``bpfnet.kernel``. A kind the running
kernel lacks (no 8021q, no ipvlan: ``Unknown device type``, EOPNOTSUPP after the kernel's own
module request) is reported as ``KindMissing`` naming the kind, so that the driver can say what
to do about it; nothing is left behind by a failed creation.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import netns
from .links import GONE, link_index_here
from .netlink import IPRoute

# "Unknown device type": no rtnl_link_ops for the kind, even after request_module()
MISSING = (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EAFNOSUPPORT)
# the kernel's module for each kind, for messages
MODULES = {"vlan": "8021q", "macvlan": "macvlan", "ipvlan": "ipvlan"}


class KindMissing(RuntimeError):
    """The running kernel has no KIND links (the module is neither built in nor loadable)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"this kernel ({os.uname().release}) has no {kind} support "
                         f"(module {MODULES.get(kind, kind)} neither built in nor loadable)")
        self.kind = kind


def _create(ipr: Any, kind: str, **kwargs: Any) -> None:
    try:
        ipr.link("add", kind=kind, **kwargs)
    except NetlinkError as exc:
        if exc.code in MISSING:
            raise KindMissing(kind) from None
        raise


def ensure_vlan(ipr: Any, name: str, parent: int, vlan: int) -> tuple[int, bool]:
    """802.1q sub-interface NAME (VLAN on PARENT), up: (ifindex, made now?). An existing
    link of that name is taken as it is (a sub-interface the host already has)."""
    index = link_index_here(name)
    created = index is None
    if index is None:
        _create(ipr, "vlan", ifname=name, link=parent, vlan_id=vlan)
        index = link_index_here(name)
        if index is None:
            raise RuntimeError(f"created vlan {name}, but it is not there")
    ipr.link("set", index=index, state="up")
    return index, created


def probe(ipr: Any, kind: str, parent: int, name: str, **kwargs: Any) -> None:
    """Raise ``KindMissing`` when KIND links cannot be made on PARENT; made and deleted at once."""
    _create(ipr, kind, ifname=name, link=parent, **kwargs)
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as exc:
        if exc.code not in GONE:
            raise


def create_in(ipr: Any, kind: str, parent: int, ns: str, ifname: str, mtu: int, mac: str | None,
              **kwargs: Any) -> int:
    """A KIND link on PARENT (in IPR's namespace), made straight inside namespace NS as IFNAME
    (IFLA_NET_NS_FD: it never exists beside the parent); returns its ifindex inside NS. NS "":
    made beside the parent."""
    extra: dict[str, Any] = {"address": mac} if mac else {}
    if ns:
        extra["net_ns_fd"] = ns
    _create(ipr, kind, ifname=ifname, link=parent, mtu=mtu, **extra, **kwargs)
    # NS "": beside the parent (a handed-off endpoint's link, which its runtime moves)
    index = netns.run_in(ns, lambda: link_index_here(ifname)) if ns else link_index_here(ifname)
    if index is None:
        raise RuntimeError(f"created {kind} {ifname} in {ns}, but it is not there")
    return index


def delete_in(ns: str, ifname: str) -> None:
    """Delete IFNAME inside namespace NS; gone (or NS gone) counts as done."""
    if not netns.exists(ns):
        return

    def body() -> None:
        with IPRoute() as ipr:
            try:
                ipr.link("del", ifname=ifname)
            except NetlinkError as exc:
                if exc.code not in GONE:
                    raise

    netns.run_in(ns, body)

