"""The datapath's DNS answers (bpf/dns.h) through BPF_PROG_TEST_RUN: A/AAAA queries to the
network's gateway port 53 for names in dns_names are answered by ep_ingress itself; everything
else to port 53 is passed to the kernel (the resolver process), and counted.

The env fixture (conftest) has net 1 (brA, 10.1.0.1, icc=true: a1, a2) and net 2 (brB, icc=false).
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv6Address

import pytest
from bpf_packets import ETH_IP, eth, ipv4, udp
from bpfnet.dns import wire
from dp_helpers import TC_ACT_OK, TC_ACT_REDIRECT, run

pytestmark = pytest.mark.kernel
WEB4, WEB4B = IPv4Address("10.1.0.9"), IPv4Address("10.1.0.10")
WEB6 = IPv6Address("fd00:1::9")


def query(name: str | bytes, qtype: int = wire.QTYPE_A, qid: int = 0x4242, flags: int = wire.FLAG_RD,
          edns: bool = False, qd: int = 1) -> bytes:
    qname = name if isinstance(name, bytes) else wire.encode_name(name)
    if isinstance(name, str):  # keep the asker's spelling
        qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    msg = wire.HEADER.pack(qid, flags, qd, 0, 0, 1 if edns else 0) + qname + struct.pack("!HH", qtype, 1)
    if edns:
        msg += b"\x00" + struct.pack("!HHIH", wire.QTYPE_OPT, 1232, 0, 0)
    return msg


def packet(env, src, msg: bytes, dst: str = "10.1.0.1", sport: int = 40000, dport: int = 53) -> bytes:
    gw = env.networks["brA"]
    return eth(gw.bridge_mac, src.mac, ETH_IP, ipv4(str(src.ipv4), dst, payload=udp(sport, dport, msg)))


@pytest.fixture
def names(env):
    env.dp.set_dns_names({
        (1, wire.encode_name("web")): ((WEB4.packed, WEB4B.packed), (WEB6.packed,)),
        (1, wire.encode_name("web.bra")): ((WEB4.packed,), ()),
        (2, wire.encode_name("db")): ((IPv4Address("10.2.0.9").packed,), ()),
    })
    yield
    env.dp.set_dns_names({})


def checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    return (~((s & 0xFFFF) + (s >> 16))) & 0xFFFF


def answer(env, src, pkt: bytes) -> bytes:
    """Run ep_ingress on PKT from SRC; expect an answer redirected back into SRC; return its DNS message."""
    before = env.dp.dns_counters().get(1, {})
    r = run(env.dp, "ep_ingress", pkt, src.host_ifindex)
    assert r.verdict == TC_ACT_REDIRECT
    out = r.data
    gw = env.networks["brA"]
    assert out[0:6] == bytes.fromhex(src.mac.replace(":", "")) and out[6:12] == bytes.fromhex(
        gw.bridge_mac.replace(":", ""))
    ip = out[14:34]
    assert ip[12:16] == IPv4Address("10.1.0.1").packed and ip[16:20] == src.ipv4.packed
    assert struct.unpack("!H", ip[2:4])[0] == len(out) - 14 and checksum(ip) == 0
    sport, dport, length, csum = struct.unpack("!HHHH", out[34:42])
    assert (sport, dport, length, csum) == (53, 40000, len(out) - 34, 0)
    after = env.dp.dns_counters().get(1, {})
    assert sum(after.values()) == sum(before.values()) + 1
    return out[42:]


def test_a_query_is_answered_by_the_datapath(env, names):
    a1 = env.endpoints["a1"]
    msg = query("WeB")
    reply = answer(env, a1, packet(env, a1, msg))
    qid, flags, qd, an, ns, ar = wire.HEADER.unpack_from(reply)
    assert (qid, qd, an, ns, ar) == (0x4242, 1, 2, 0, 0)
    assert flags == wire.FLAG_QR | wire.FLAG_AA | wire.FLAG_RD | wire.FLAG_RA
    assert reply[12:len(msg)] == msg[12:]  # the question, in the asker's spelling
    records = reply[len(msg):]
    assert records == wire.rr(wire.QTYPE_A, 600, WEB4.packed) + wire.rr(wire.QTYPE_A, 600, WEB4B.packed)


def test_aaaa_and_edns_and_network_suffix(env, names):
    a1 = env.endpoints["a1"]
    reply = answer(env, a1, packet(env, a1, query("web", wire.QTYPE_AAAA, edns=True)))
    plain = query("web", wire.QTYPE_AAAA)
    assert wire.HEADER.unpack_from(reply)[2:] == (1, 1, 0, 0)  # the EDNS record is left out
    assert reply[len(plain):] == wire.rr(wire.QTYPE_AAAA, 600, WEB6.packed)
    reply = answer(env, a1, packet(env, a1, query("web.BRA", flags=0)))
    assert wire.HEADER.unpack_from(reply)[1] == wire.FLAG_QR | wire.FLAG_AA | wire.FLAG_RA  # RD not asked
    counts = env.dp.dns_counters()[1]
    assert counts["answered_aaaa"] >= 1 and counts["answered_a"] >= 1


@pytest.mark.parametrize("case", ["unknown", "other network's name", "MX", "no AAAA... of db", "to an endpoint",
                                  "two questions", "a response", "pointer", "too long", "cut short",
                                  "not port 53"])
def test_everything_else_goes_to_the_resolver_untouched(env, names, case):
    a1 = env.endpoints["a1"]
    msg = {
        "unknown": query("nothing"),
        "other network's name": query("db"),
        "MX": query("web", 15),
        "no AAAA... of db": query("web.bra", wire.QTYPE_AAAA),
        "to an endpoint": query("web"),
        "two questions": query("web", qd=2),
        "a response": query("web", flags=wire.FLAG_QR),
        "pointer": query(b"\xc0\x0c"),
        "too long": query(".".join(["a" * 60] * 2)),
        "cut short": query("web")[:-3],
        "not port 53": query("web"),
    }[case]
    pkt = packet(env, a1, msg, dst="10.1.0.3" if case == "to an endpoint" else "10.1.0.1",
                 dport=5353 if case == "not port 53" else 53)
    before = env.dp.dns_counters().get(1, {}).get("passed", 0)
    r = run(env.dp, "ep_ingress", pkt, a1.host_ifindex)
    if case == "to an endpoint":
        assert r.verdict == TC_ACT_REDIRECT and r.data[42:] == msg  # the fast path, not DNS
        return
    assert r.verdict == TC_ACT_OK and r.data == pkt
    passed = env.dp.dns_counters().get(1, {}).get("passed", 0)
    assert passed == before + (0 if case == "not port 53" else 1)


def test_names_are_written_as_differences(env):
    env.dp.set_dns_names({(1, wire.encode_name("x")): ((WEB4.packed,), ())})
    env.dp.set_dns_names({(1, wire.encode_name("y")): ((WEB4.packed,), ()),
                          (1, wire.encode_name("z" * 120)): ((WEB4.packed,), ())})  # too long: left out
    a1 = env.endpoints["a1"]
    r = run(env.dp, "ep_ingress", packet(env, a1, query("x")), a1.host_ifindex)
    assert r.verdict == TC_ACT_OK  # removed
    answer(env, a1, packet(env, a1, query("y")))
    env.dp.set_dns_names({})
