"""The datapath's binary interface (bpfnet.datapath.abi) and its checks, without a kernel.

The real C side is compared in tests/bpf/test_bpf_abi.py; here the derivations and the
comparison logic are checked against hand-made inputs: a clang diagnostic, and BTF
blobs encoded below exactly as the kernel returns them.
"""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from bpfnet.datapath import abi, bpfsys, counters, layout, maps
from bpfnet.datapath.drop_reasons import DropReason
from bpfnet.model import EndpointSpec, NetworkSpec


# -- layouts derived from the declarations ----------------------------------------------------
def test_struct_layouts_are_c_layouts() -> None:
    # the numbers bpf/maps.h's structs have on every ABI bpfnet runs on (checked for real
    # against the compiler and BTF in tests/bpf)
    assert abi.ENDPOINT.size == 88 and abi.ENDPOINT.offsets["ipv4"] == 20
    assert abi.ENDPOINT.offsets["ipv6"] == 24
    assert abi.NETWORK.size == 84 and abi.NETWORK.offsets["internal"] == 52 and abi.NETWORK.offsets["gateway4"] == 16
    assert abi.NETWORK.offsets["vni"] == 56 and abi.NETWORK.offsets["routed4"] == 60
    assert abi.NETWORK.offsets["routed6"] == 64 and abi.NETWORK.offsets["routed4_plen"] == 80
    assert (abi.EP_IPV4_KEY.size, abi.EP_IPV6_KEY.size) == (8, 20)
    assert abi.PATH_COUNTERS.size == 8 * (8 + len(DropReason))
    # the overlay's tables (bpf/tunnel.h)
    assert abi.REMOTE_ENDPOINT.size == 12 and abi.REMOTE_ENDPOINT.offsets["mac"] == 4
    assert abi.TUNNEL_CONFIG.size == 16 and abi.TUNNEL_CONFIG.offsets["uplink_ifindex"] == 8
    assert abi.TUNNEL_COUNTERS.size == 48 and abi.TUNNEL_COUNTERS.offsets["rx_native"] == 40
    assert abi.ENDPOINT_COUNTERS.size == 2 * abi.PATH_COUNTERS.size
    for s in abi.STRUCTS:
        assert s.codec.size == s.size, s.name


def test_c_padding_rules() -> None:
    s = abi.Struct("t", (abi.Field("a", abi.U8), abi.Field("b", abi.U64), abi.Field("c", abi.U32)))
    assert s.offsets == {"a": 0, "b": 8, "c": 16} and s.size == 24
    assert s.codec.format == "=B7xQI4x"


def test_pack_by_name_and_round_trip() -> None:
    ep = EndpointSpec(name="e", id=7, network="n", network_id=3, host_ifname="h", host_ifindex=42,
                      mac="02:42:0a:00:00:07", ipv4=IPv4Address("10.0.0.7"),
                      ipv6=(IPv6Address("fd00::7"),))
    raw = maps.pack_endpoint(ep)
    assert len(raw) == abi.ENDPOINT.size
    assert struct.unpack_from("=I", raw, abi.ENDPOINT.offsets["ifindex"])[0] == 42
    assert raw[abi.ENDPOINT.offsets["ipv4"]:][:4] == IPv4Address("10.0.0.7").packed
    e = maps.unpack_endpoint(raw)
    assert (e.id, e.network_id, e.ifindex, e.ipv4) == (7, 3, 42, ep.ipv4)
    assert e.ipv6[0] == IPv6Address("fd00::7") and len(e.ipv6) == 2  # + EUI-64 link-local
    with pytest.raises(TypeError, match="missing or unknown"):
        abi.EP_IPV4_KEY.pack(network_id=1)
    net = NetworkSpec(name="n", id=3, bridge="br", bridge_ifindex=9, bridge_mac="02:00:00:00:00:01",
                      gateway4=IPv4Address("10.0.0.1"), gateway6=(IPv6Address("fd00::1"),))
    raw = maps.pack_network(net)
    assert len(raw) == abi.NETWORK.size
    assert raw[abi.NETWORK.offsets["gateway6"]:][:16] == IPv6Address("fd00::1").packed


def test_map_specs_come_from_abi() -> None:
    specs = {s.name: s for s in maps.map_specs(128)}
    assert [s.name for s in specs.values()] == [m.name for m in abi.MAPS]
    assert specs["endpoint_by_id"].value_size == abi.ENDPOINT.size
    assert specs["endpoint_id_by_ipv6"].max_entries == 128 * abi.MAX_EP_IPV6
    assert specs["network_by_id"].max_entries == abi.MAX_NETWORKS
    assert specs["endpoint_counters"].type == bpfsys.BPF_MAP_TYPE_PERCPU_ARRAY
    assert specs["remote_by_ipv4"].value_size == abi.REMOTE_ENDPOINT.size
    assert specs["remote_by_ipv6"].key_size == abi.EP_IPV6_KEY.size
    assert specs["remote_by_ipv6"].max_entries == 128 * abi.MAX_EP_IPV6
    assert specs["tunnel_config"].max_entries == 1 and specs["network_by_vni"].max_entries == abi.MAX_NETWORKS


def test_limits_and_mode_reach_c_only_as_cflags() -> None:
    flags = abi.cflags(abi.MODE_REDIRECT, 128)
    assert "-DMAX_ENDPOINTS=128" in flags and f"-DMAX_NETWORKS={abi.MAX_NETWORKS}" in flags
    assert f"-DMAX_EP_IPV6={abi.MAX_EP_IPV6}" in flags and "-DBPFNET_REDIRECT_PEER=0" in flags
    with pytest.raises(ValueError, match="no eBPF programs"):
        abi.cflags(abi.MODE_BRIDGE, 128)
    for bad in (0, abi.MAX_ENDPOINTS_LIMIT + 1):
        with pytest.raises(ValueError, match="max_endpoints"):
            abi.cflags(abi.MODE_REDIRECT, bad)


def test_one_max_endpoints_and_one_mode_list() -> None:
    from bpfnet.cli import build_parser
    from bpfnet.datapath import make_datapath
    from bpfnet.datapath.ebpf import EbpfDatapath
    from bpfnet.runtime import Runtime

    assert Runtime.max_endpoints == abi.DEFAULT_MAX_ENDPOINTS
    assert EbpfDatapath(pin_dir="/x").max_endpoints == abi.DEFAULT_MAX_ENDPOINTS
    dp = make_datapath(abi.MODE_REDIRECT, pin_dir="/x", max_endpoints=256)
    assert isinstance(dp, EbpfDatapath) and dp.max_endpoints == 256  # passed on, not defaulted
    for mode in abi.REQUESTABLE_MODES:
        assert build_parser().parse_args(["daemon", "--datapath", mode]).datapath == mode
    with pytest.raises(SystemExit):
        build_parser().parse_args(["daemon", "--datapath", "turbo"])


# -- compile-time checks -------------------------------------------------------------------------
def test_every_field_is_checked_at_compile_time() -> None:
    checks = abi.checks()
    whats = {c.what for c in checks}
    for s in abi.STRUCTS:
        assert f"struct {s.name} size" in whats
        for f in s.fields:
            assert {f"struct {s.name} field {f.name} offset",
                    f"struct {s.name} field {f.name} size"} <= whats
    assert "enumerator DROP_REASON_COUNT" in whats and "enumerator DIR_RX" in whats
    text = abi.compile_checks(checks).splitlines()
    assert text[0] == f'#line 1 "{abi.CHECK_FILE}"' and len(text) == len(checks) + 1
    i = next(i for i, c in enumerate(checks) if c.what == "struct endpoint field ipv6 offset")
    assert "__builtin_offsetof(struct endpoint, ipv6)" in text[i + 1] and "[24];" in text[i + 1]


def test_compiler_diagnostics_name_struct_field_and_both_values() -> None:
    checks = abi.checks()
    i = next(i for i, c in enumerate(checks) if c.what == "struct endpoint field ipv6 offset")
    diag = (f"{abi.CHECK_FILE}:{i + 1}:80: error: typedef redefinition with different types "
            "('char[24]' vs 'char[28]')\ntypedef char ...\n1 error generated.\n")
    problems = layout.drift_from_compiler(diag, checks)
    assert problems == ["struct endpoint field ipv6 offset: C (bpf/maps.h) says 28, abi.py says 24"]
    msg = str(layout.mismatch(problems + ["x"], "the C structs"))
    assert "\n" not in msg and "(and 1 more)" in msg and "compile" not in msg.lower()
    assert layout.drift_from_compiler("main.c:1:1: error: something else", checks) == []


# -- BTF -------------------------------------------------------------------------------------------
class BtfWriter:
    """Encodes BTF as the kernel hands it out (include/uapi/linux/btf.h)."""

    def __init__(self) -> None:
        self.types = b""
        self.strings = b"\0"
        self.next_id = 1

    def _name(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes) -> int:
        self.types += struct.pack("=III", self._name(name), (kind << 24) | vlen, size_or_type)
        self.types += extra
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name: str, size: int) -> int:
        return self._add(name, 1, 0, size, struct.pack("=I", size * 8))

    def typedef(self, name: str, tid: int) -> int:
        return self._add(name, 8, 0, tid, b"")

    def array(self, elem: int, n: int, index: int) -> int:
        return self._add("", 3, 0, 0, struct.pack("=III", elem, index, n))

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]]) -> int:
        extra = b"".join(struct.pack("=III", self._name(n), t, off * 8) for n, t, off in members)
        return self._add(name, 4, len(members), size, extra)

    def blob(self) -> bytes:
        hdr = struct.pack("=HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + self.types + self.strings


def endpoint_btf(swap: bool = False) -> tuple[bytes, int, int]:
    """BTF of __u32 and struct endpoint as bpf/maps.h declares it; swap: network_id and
    ifindex trade places (an older build, say), total size unchanged."""
    w = BtfWriter()
    u8 = w.typedef("__u8", w.int_("unsigned char", 1))
    u32 = w.typedef("__u32", w.int_("unsigned int", 4))
    be32 = w.typedef("__be32", u32)
    mac = w.array(u8, 6, u32)
    v6 = w.array(w.array(u32, 4, u32), abi.MAX_EP_IPV6, u32)
    a, b = ("ifindex", "network_id") if swap else ("network_id", "ifindex")
    ep = w.struct_("endpoint", 88, [("id", u32, 0), (a, u32, 4), (b, u32, 8), ("mac", mac, 12),
                                    ("n_ipv6", u8, 18), ("pad", u8, 19), ("ipv4", be32, 20),
                                    ("ipv6", v6, 24)])
    return w.blob(), u32, ep


def test_btf_of_the_declared_layout_matches() -> None:
    raw, key, value = endpoint_btf()
    m = next(m for m in abi.MAPS if m.name == "endpoint_by_id")
    assert layout.map_drift(layout.Btf(raw), key, value, m) == []


def test_btf_offset_drift_with_equal_size_is_found() -> None:
    raw, key, value = endpoint_btf(swap=True)
    m = next(m for m in abi.MAPS if m.name == "endpoint_by_id")
    drift = layout.map_drift(layout.Btf(raw), key, value, m)
    assert "struct endpoint field network_id offset: C says 8, abi.py says 4" in drift
    assert "struct endpoint field ifindex offset: C says 4, abi.py says 8" in drift
    assert not any("struct endpoint size" in d for d in drift)  # same total size


def test_wrong_python_layout_is_found_against_the_same_btf() -> None:
    raw, key, value = endpoint_btf()
    fields = list(abi.ENDPOINT.fields)
    fields[1], fields[2] = fields[2], fields[1]
    drifted = replace(next(m for m in abi.MAPS if m.name == "endpoint_by_id"),
                      value=abi.Struct("endpoint", tuple(fields)))
    drift = layout.map_drift(layout.Btf(raw), key, value, drifted)
    assert any("field ifindex offset: C says 8, abi.py says 4" in d for d in drift), drift


def test_map_without_btf_is_a_difference() -> None:
    m = abi.MAPS[0]
    assert layout.map_drift(None, 0, 0, m) == [f"map {m.name} has no BTF, its layout cannot be checked"]


# -- counter keys -----------------------------------------------------------------------------------
def test_counter_keys_and_layout_follow_abi() -> None:
    assert counters.COUNTER_KEYS == (
        "tx_fast_packets", "tx_fast_bytes", "tx_kernel_packets", "tx_kernel_bytes", "tx_tunnel_packets",
        "tx_tunnel_bytes", "tx_routed_packets", "tx_routed_bytes", "rx_fast_packets", "rx_fast_bytes",
        "rx_kernel_packets", "rx_kernel_bytes", "rx_tunnel_packets", "rx_tunnel_bytes", "rx_routed_packets",
        "rx_routed_bytes")
    assert set(counters.EndpointCounters.__annotations__) == {*counters.COUNTER_KEYS, "drops"}
    n = abi.ENDPOINT_COUNTERS.size // 8
    c = counters.decode(list(range(n)))
    per_dir = abi.PATH_COUNTERS.size // 8
    assert c["tx_fast_packets"] == 0 and c["rx_fast_packets"] == per_dir
    assert c["rx_kernel_bytes"] == per_dir + abi.PATH_COUNTERS.offsets["kernel_bytes"] // 8
    assert c["rx_tunnel_bytes"] == per_dir + abi.PATH_COUNTERS.offsets["tunnel_bytes"] // 8
    first_drop = abi.PATH_COUNTERS.offsets["drops"] // 8
    assert c["drops"]["rx"]["spoofed_source"] == per_dir + first_drop
    assert counters.empty() == counters.decode([0] * n)


def test_counter_helpers() -> None:
    c = counters.decode([0] * (abi.ENDPOINT_COUNTERS.size // 8))
    c["rx_fast_packets"], c["rx_kernel_packets"], c["rx_fast_bytes"] = 3, 4, 100
    c["drops"]["tx"]["policy"], c["drops"]["rx"]["spoofed_source"] = 2, 5
    assert counters.total_packets(c, "rx") == 7 and counters.total_bytes(c, "rx") == 100
    assert counters.total_packets({}, "tx") == 0  # tolerant of partial documents
    assert counters.total_drops(c, "tx") == 2 and counters.total_drops(c) == 7
    assert counters.key("tx", "kernel", "bytes") == "tx_kernel_bytes"
    with pytest.raises(KeyError):
        counters.key("up", "fast", "packets")


# -- bpf(2) syscall number --------------------------------------------------------------------------
def test_syscall_number_is_never_guessed() -> None:
    assert bpfsys.syscall_number("x86_64") == 321
    assert bpfsys.syscall_number("aarch64") == 280
    with pytest.raises(bpfsys.UnknownMachine, match="sparc64"):
        bpfsys.syscall_number("sparc64")


def test_unreadable_btf_counts_as_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfsys, "btf_data", lambda _id: b"\x00" * 32)  # wrong magic
    info = bpfsys.MapInfo(2, 1, 4, abi.ENDPOINT.size, 128, "endpoint_by_id", 7, 1, 2)
    drift = maps.map_drift(info, abi.MAPS[3], {})
    assert drift and "BTF cannot be read" in drift[0]
