"""netkit device pairs (Linux 6.7+): creation through raw rtnetlink, and the probe.

Boundary: the RTM_NEWLINK message that makes a netkit pair, the probe that
tells whether this kernel has netkit, and the attach types of its BPF hooks.
Nothing about which programs go where (``ebpf.py``) or the rest of an
endpoint's set-up (``bpfnet.links``).

Why raw rtnetlink: pyroute2 0.9 has no netkit link kind (no encoder for
IFLA_NETKIT_*), and the message is small: struct ifinfomsg, IFLA_IFNAME,
IFLA_MTU, IFLA_MASTER and IFLA_LINKINFO { IFLA_INFO_KIND "netkit",
IFLA_INFO_DATA { IFLA_NETKIT_MODE, IFLA_NETKIT_PEER_INFO { ifinfomsg, the
peer's IFLA_IFNAME, IFLA_ADDRESS, IFLA_MTU, IFLA_NET_NS_FD } } }
(include/uapi/linux/if_link.h).

bpfnet makes netkit pairs in L2 mode: the devices have MAC addresses and
carry Ethernet frames, so the primary (host) end is a bridge port like a
host veth and ARP/ND, broadcasts and everything the programs hand to the
kernel take the bridge as before. Both ends keep netkit's default policy
(pass): without a program the pair behaves as a plain device pair.

Where programs run (drivers/net/netkit.c, ``netkit_xmit``): a program
attached with BPF_NETKIT_PEER runs inside the transmit of the peer (the
endpoint's eth0): it sees every packet the endpoint sends, as a host veth's
tc ingress does, with ``skb->dev`` already switched to the primary, so
``skb->ifindex`` is the host end's ifindex. A bpf_redirect() from there
transmits straight out of the target's primary device: the extra veth hop
(the backlog queue between a veth's transmit and its peer's receive) is gone.
Both attach types are created on the PRIMARY's ifindex (the kernel refuses
the peer's); netkit links exist only as BPF links, never as tc filters.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
from functools import lru_cache

log = logging.getLogger(__name__)

# enum bpf_attach_type / enum bpf_link_type (include/uapi/linux/bpf.h)
BPF_NETKIT_PRIMARY = 54
BPF_NETKIT_PEER = 55
BPF_LINK_TYPE_NETKIT = 13

# rtnetlink
NETLINK_ROUTE = 0
RTM_NEWLINK = 16
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_NETKIT_PEER_INFO, IFLA_NETKIT_MODE = 1, 5
NLA_F_NESTED = 0x8000
NETKIT_L2, NETKIT_L3 = 0, 1
IFF_UP = 0x1
AF_UNSPEC = 0
KIND = "netkit"


class NetkitUnavailable(RuntimeError):
    """This kernel cannot make netkit devices."""


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _ifinfomsg(flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("=BxHiII", AF_UNSPEC, 0, 0, flags, change)


def _mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def newlink_message(host: str, peer_ifname: str, mtu: int, *, master: int = 0,
                    peer_mac: str | None = None, peer_ns_fd: int | None = None,
                    up: bool = False, seq: int = 1, mode: int = NETKIT_L2) -> bytes:
    """The RTM_NEWLINK request creating netkit pair HOST (primary) <-> PEER_IFNAME."""
    peer = _ifinfomsg() + _attr(IFLA_IFNAME, peer_ifname.encode() + b"\0") + _attr(IFLA_MTU, struct.pack("=I", mtu))
    if peer_mac:
        peer += _attr(IFLA_ADDRESS, _mac(peer_mac))
    if peer_ns_fd is not None:
        peer += _attr(IFLA_NET_NS_FD, struct.pack("=I", peer_ns_fd))
    data = _nested(IFLA_INFO_DATA, _attr(IFLA_NETKIT_MODE, struct.pack("=I", mode)),
                   _attr(IFLA_NETKIT_PEER_INFO, peer))
    body = (_ifinfomsg(IFF_UP if up else 0, IFF_UP if up else 0)
            + _attr(IFLA_IFNAME, host.encode() + b"\0") + _attr(IFLA_MTU, struct.pack("=I", mtu))
            + (_attr(IFLA_MASTER, struct.pack("=I", master)) if master else b"")
            + _nested(IFLA_LINKINFO, _attr(IFLA_INFO_KIND, KIND.encode() + b"\0"), data))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, flags, seq, 0) + body


def _request(msg: bytes) -> None:
    """Send one rtnetlink request from the calling thread's namespace; raise its error."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as s:
        s.bind((0, 0))
        s.sendto(msg, (0, 0))
        seq = struct.unpack_from("=I", msg, 8)[0]
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _, mseq, _ = struct.unpack_from("=IHHII", data, off)
                if kind == NLMSG_ERROR and mseq == seq:
                    err = -struct.unpack_from("=i", data, off + 16)[0]
                    if err:
                        raise OSError(err, f"RTM_NEWLINK netkit: {os.strerror(err)}")
                    return
                off += (length + 3) & ~3
                if length == 0:
                    break


def _ns_fd(peer_ns: str) -> int:
    path = peer_ns if peer_ns.startswith("/") else f"/run/netns/{peer_ns}"
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def create_pair(host: str, peer_ns: str, peer_ifname: str, peer_mac: str | None, mtu: int,
                master: int = 0, up: bool = False) -> None:
    """Create the L2 netkit pair HOST (primary, in the calling thread's namespace, a port of
    MASTER when non-zero) <-> PEER_IFNAME in PEER_NS (a namespace name, a namespace file's
    path, or "": beside HOST). NetkitUnavailable when the kernel has no netkit."""
    fd = _ns_fd(peer_ns) if peer_ns else None
    try:
        _request(newlink_message(host, peer_ifname, mtu, master=master, peer_mac=peer_mac,
                                 peer_ns_fd=fd, up=up))
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            # rtnetlink's answer to an unknown link kind (no netkit module, CONFIG_NETKIT=n)
            raise NetkitUnavailable(
                f"this kernel ({os.uname().release}) has no netkit devices (Linux 6.7+ built with "
                f"CONFIG_NETKIT): use --endpoint-device veth") from e
        raise
    finally:
        if fd is not None:
            os.close(fd)


def _probe_pair() -> None:
    create_pair("bpfnet-nkp", "", "bpfnet-nkq", None, 1500)
    # The namespace dies with the probe thread and takes the pair with it; delete anyway.
    idx = socket.if_nametoindex("bpfnet-nkp")
    with contextlib.suppress(OSError):
        _delete(idx)


def _delete(ifindex: int) -> None:
    RTM_DELLINK = 17
    body = struct.pack("=BxHiII", AF_UNSPEC, 0, ifindex, 0, 0)
    _request(struct.pack("=IHHII", 16 + len(body), RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)


@lru_cache(maxsize=1)
def netkit_available() -> bool:
    """Whether this kernel makes netkit pairs: one is created (and deleted) in a
    throwaway namespace, never in one in use."""
    from .probe import in_throwaway_netns

    try:
        in_throwaway_netns(_probe_pair)
    except NetkitUnavailable as e:
        log.info("%s", e)
        return False
    except OSError as e:
        log.info("netkit devices not available (%s): endpoints get veth pairs", e)
        return False
    return True
