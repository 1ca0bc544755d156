"""Minimal packet builders for the BPF tests (no scapy on the machine).

Checksums are left at zero (bpfnet's programs never look at them), except in ip_l4(),
whose packets the published ports' fast path rewrites: parse_l4() checks them again with
its own (RFC 1071) arithmetic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

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


# -- packets with real checksums (the published ports' fast path rewrites them) ---------------
def inet_csum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def ip_l4(src: str, dst: str, proto: int, sport: int, dport: int, flags: int = 0x10,
          payload: bytes = b"data", ttl: int = 64, udp_no_csum: bool = False) -> bytes:
    """An IPv4 or IPv6 packet (by the addresses' family) carrying TCP (flags) or UDP, with
    every checksum right (an IPv4 UDP checksum of 0 with udp_no_csum)."""
    s, d = ip_address(src).packed, ip_address(dst).packed
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1000, 2000, 5 << 4, flags, 512, 0, 0) + payload
        at = 16
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        at = 6
    if not (udp_no_csum and proto == 17 and len(s) == 4):
        c = inet_csum(_pseudo(s, d, proto, len(l4)) + l4)
        if proto == 17 and c == 0:
            c = 0xFFFF
        l4 = l4[:at] + struct.pack("!H", c) + l4[at + 2:]
    if len(s) == 16:
        return ipv6(src, dst, proto, l4, hlim=ttl)
    hdr = bytearray(ipv4(src, dst, proto, l4, ttl=ttl)[:20])
    struct.pack_into("!H", hdr, 10, inet_csum(bytes(hdr)))
    return bytes(hdr) + l4


@dataclass
class Parsed:
    """What a reference parser reads back from an Ethernet frame built as ip_l4() does."""

    dst_mac: str
    src_mac: str
    src: str
    dst: str
    sport: int
    dport: int
    ttl: int
    ip_csum_ok: bool
    l4_csum: int
    l4_csum_ok: bool
    payload: bytes


def parse_l4(frame: bytes) -> Parsed:
    dst_mac = ":".join(f"{b:02x}" for b in frame[:6])
    src_mac = ":".join(f"{b:02x}" for b in frame[6:12])
    (etype,) = struct.unpack_from("!H", frame, 12)
    ip = frame[14:]
    if etype == ETH_IP:
        ihl = (ip[0] & 0xF) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        proto, ttl = ip[9], ip[8]
        s, d = ip[12:16], ip[16:20]
        ip_ok = inet_csum(ip[:ihl]) == 0
        l4 = ip[ihl:total]
    else:
        proto, ttl = ip[6], ip[7]
        s, d = ip[8:24], ip[24:40]
        ip_ok = True  # IPv6 has no header checksum
        l4 = ip[40:40 + struct.unpack_from("!H", ip, 4)[0]]
    at = 16 if proto == 6 else 6
    (c,) = struct.unpack_from("!H", l4, at)
    ok = (c == 0 and proto == 17 and len(s) == 4) or inet_csum(_pseudo(s, d, proto, len(l4)) + l4) == 0
    sport, dport = struct.unpack_from("!HH", l4, 0)
    hdr = 20 if proto == 6 else 8
    return Parsed(dst_mac, src_mac, str(ip_address(s)), str(ip_address(d)), sport, dport, ttl, ip_ok, c, ok,
                  l4[hdr:])
