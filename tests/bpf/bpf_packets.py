"""Minimal packet builders for the BPF tests (no scapy on the machine).

Checksums are left at zero: bpfnet's programs never look at them.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

BROADCAST = "ff:ff:ff:ff:ff:ff"
ETH_IP, ETH_IPV6, ETH_ARP, ETH_VLAN = 0x0800, 0x86DD, 0x0806, 0x8100


def mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def eth(dst: str, src: str, ethertype: int, payload: bytes = b"") -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def vlan(dst: str, src: str, vid: int, inner_type: int, payload: bytes) -> bytes:
    return (mac(dst) + mac(src) + struct.pack("!HHH", ETH_VLAN, vid, inner_type) + payload)


def ipv4(src: str, dst: str, proto: int = 17, payload: bytes = b"", frag: int = 0,
         ihl: int = 5, ttl: int = 64) -> bytes:
    opts = b"\x01" * (ihl * 4 - 20)
    total = ihl * 4 + len(payload)
    return (struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, ttl, proto, 0,
                        IPv4Address(src).packed, IPv4Address(dst).packed) + opts + payload)


def ipv6(src: str, dst: str, nexthdr: int = 17, payload: bytes = b"", hlim: int = 64) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), nexthdr, hlim)
            + IPv6Address(src).packed + IPv6Address(dst).packed + payload)


def udp(sport: int = 1234, dport: int = 5678, payload: bytes = b"hello") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp_echo(payload: bytes = b"ping") -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload


def icmp6(type_: int, payload: bytes = b"\x00" * 20) -> bytes:
    return struct.pack("!BBH", type_, 0, 0) + payload


def arp(op: int, sha: str, spa: str, tha: str, tpa: str) -> bytes:
    return (struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + mac(sha) + IPv4Address(spa).packed
            + mac(tha) + IPv4Address(tpa).packed)


def sk_buff_ctx(ifindex: int, ingress_ifindex: int = 0, cb: tuple[int, ...] = (),
                gso_segs: int = 0, gso_size: int = 0) -> bytes:
    """struct __sk_buff for BPF_PROG_TEST_RUN: only the fields the kernel accepts."""
    ctx = bytearray(192)
    struct.pack_into("=I", ctx, 36, ingress_ifindex)
    struct.pack_into("=I", ctx, 40, ifindex)
    for i, v in enumerate(cb[:5]):
        struct.pack_into("=I", ctx, 48 + 4 * i, v)
    struct.pack_into("=I", ctx, 164, gso_segs)
    struct.pack_into("=I", ctx, 176, gso_size)
    return bytes(ctx)


def ctx_cb(ctx: bytes) -> tuple[int, ...]:
    return struct.unpack_from("=5I", ctx, 48)
