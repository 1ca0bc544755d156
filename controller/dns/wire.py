"""DNS messages on the wire (RFC 1035), just what the embedded resolver needs (pure).

Boundary: bytes in, bytes out. Questions are parsed by hand rather than with a DNS library:
the resolver answers an endpoint name by copying the query's header and question and
appending answer records prepared when the names changed, so a lookup costs one question
parse and one dictionary look-up.
"""

from __future__ import annotations

import struct

QTYPE_A = 1
QTYPE_PTR = 12
QTYPE_AAAA = 28
QTYPE_OPT = 41
QTYPE_ANY = 255
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
OPCODE_MASK = 0x7800
HEADER = struct.Struct("!HHHHHH")
UDP_PLAIN_MAX = 512  # a UDP answer's size without EDNS (RFC 1035 4.2.1)
TYPE_NAMES = {QTYPE_A: "A", QTYPE_AAAA: "AAAA", QTYPE_PTR: "PTR", 2: "NS", 5: "CNAME", 6: "SOA", 15: "MX",
              16: "TXT", 33: "SRV", 65: "HTTPS", QTYPE_ANY: "ANY"}
RCODE_NAMES = {RCODE_NOERROR: "noerror", RCODE_FORMERR: "formerr", RCODE_SERVFAIL: "servfail",
               RCODE_NXDOMAIN: "nxdomain", RCODE_NOTIMP: "notimp", RCODE_REFUSED: "refused"}


class Question:
    """The one question of a query: its name lowercased in wire form (the look-up key), its
    text, type and class, and where it ends in the message."""

    __slots__ = ("end", "key", "qclass", "qtype")

    def __init__(self, key: bytes, qtype: int, qclass: int, end: int) -> None:
        self.key = key
        self.qtype = qtype
        self.qclass = qclass
        self.end = end

    @property
    def text(self) -> str:
        return name_text(self.key)

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.qtype, "other")


def parse_question(msg: bytes) -> Question | None:
    """The question of a standard query with exactly one question; None for anything else
    (a response, several questions, a compressed or overlong name, a short message)."""
    if len(msg) < 17:
        return None
    _, flags, qd, _, _, _ = HEADER.unpack_from(msg)
    if flags & FLAG_QR or qd != 1:
        return None
    pos = 12
    end = len(msg)
    while True:
        if pos >= end:
            return None
        n = msg[pos]
        if n == 0:
            pos += 1
            break
        if n > 63 or pos + 1 + n > end:
            return None  # a pointer (0xC0) or a bad length: not in a question we answer
        pos += 1 + n
        if pos - 12 > 255:
            return None
    if pos + 4 > end:
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, pos)
    return Question(msg[12:pos].lower(), qtype, qclass, pos + 4)


def encode_name(name: str) -> bytes:
    """NAME (dotted text, final dot optional) in wire form; lowercased."""
    out = bytearray()
    for label in name.rstrip(".").lower().split("."):
        if label:
            raw = label.encode()
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def name_text(wire: bytes) -> str:
    """A wire-form name without compression back to dotted text (no final dot)."""
    labels = []
    pos = 0
    while pos < len(wire) and wire[pos]:
        n = wire[pos]
        labels.append(wire[pos + 1:pos + 1 + n].decode("ascii", "replace"))
        pos += 1 + n
    return ".".join(labels)


def label_count(wire: bytes) -> int:
    count = 0
    pos = 0
    while pos < len(wire) and wire[pos]:
        count += 1
        pos += 1 + wire[pos]
    return count


def rr(rtype: int, ttl: int, rdata: bytes) -> bytes:
    """An answer record whose owner is the question's name (a pointer to offset 12)."""
    return struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(rdata)) + rdata


def response(query: bytes, q: Question, rcode: int, answers: bytes = b"", ancount: int = 0,
             authoritative: bool = True, truncated: bool = False) -> bytes:
    """An answer to QUERY: its id, opcode and RD bit, QR and RA set, the question copied
    (in the asker's spelling), then ANSWERS."""
    qid, flags = struct.unpack_from("!HH", query)
    out_flags = FLAG_QR | FLAG_RA | (flags & (OPCODE_MASK | FLAG_RD)) | (rcode & 0xF)
    if authoritative:
        out_flags |= FLAG_AA
    if truncated:
        out_flags |= FLAG_TC
    return HEADER.pack(qid, out_flags, 1, ancount, 0, 0) + query[12:q.end] + answers


def error_response(query: bytes, rcode: int) -> bytes | None:
    """A bare error answer (header only) to a message whose question cannot be parsed."""
    if len(query) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", query)
    if flags & FLAG_QR:
        return None  # never answer an answer
    return HEADER.pack(qid, FLAG_QR | FLAG_RA | (flags & (OPCODE_MASK | FLAG_RD)) | rcode, 0, 0, 0, 0)


def udp_limit(msg: bytes, q: Question) -> int:
    """The largest UDP answer the asker takes: its EDNS0 OPT record's size, else 512."""
    arcount = HEADER.unpack_from(msg)[5]
    pos = q.end
    if arcount and pos + 11 <= len(msg) and msg[pos] == 0:
        rtype, size = struct.unpack_from("!HH", msg, pos + 1)
        if rtype == QTYPE_OPT:
            return max(UDP_PLAIN_MAX, int(size))
    return UDP_PLAIN_MAX


def rcode_of(msg: bytes) -> int:
    return int(HEADER.unpack_from(msg)[1]) & 0xF if len(msg) >= 12 else RCODE_SERVFAIL


def is_truncated(msg: bytes) -> bool:
    return len(msg) >= 12 and bool(HEADER.unpack_from(msg)[1] & FLAG_TC)


def with_id(msg: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + msg[2:]


def message_id(msg: bytes) -> int:
    return int(struct.unpack_from("!H", msg)[0])


def truncate(msg: bytes, q: Question) -> bytes:
    """MSG cut to its header and question with TC set: "ask again over TCP"."""
    qid, flags = struct.unpack_from("!HH", msg)
    return HEADER.pack(qid, flags | FLAG_TC, 1, 0, 0, 0) + msg[12:q.end]
