"""The real C side of the binary interface against abi.py: the compiler's checks, the BTF
of the maps bcc creates, and pins written with another layout."""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import replace

import pytest
from bpf_env import pin_dir
from bpfnet.datapath import abi, bpfsys, layout, loader
from bpfnet.datapath import maps as m

pytestmark = pytest.mark.kernel


def swapped_endpoint() -> abi.Struct:
    """struct endpoint with network_id and ifindex trading places: every offset the
    programs use for them moves, the total size does not."""
    f = list(abi.ENDPOINT.fields)
    f[1], f[2] = f[2], f[1]
    return abi.Struct("endpoint", tuple(f))


def drifted_maps() -> tuple[abi.MapDef, ...]:
    bad = swapped_endpoint()
    return tuple(replace(d, value=bad) if d.value is abi.ENDPOINT else d for d in abi.MAPS)


def test_real_c_passes_the_compile_time_checks_and_drift_fails_them() -> None:
    source = loader.render_source().replace("BPF_TABLE_PINNED", "BPF_TABLE_UNPINNED_")
    # unpinned copies of the maps: nothing to clean up, same structs
    source = ("#define BPF_TABLE_UNPINNED_(t, k, v, n, e, p) BPF_TABLE(t, k, v, n, e)\n" + source)
    structs = tuple(swapped_endpoint() if s is abi.ENDPOINT else s for s in abi.STRUCTS)
    with pin_dir() as pins:  # bcc may create the pin directory: one removed afterwards
        flags = loader.cflags(abi.MODE_REDIRECT_PEER, pins, 128)
        loader.compile_checked(source, flags, abi.checks()).cleanup()
        with pytest.raises(layout.AbiMismatch) as e:
            loader.compile_checked(source, flags, abi.checks(structs))
    msg = str(e.value)
    assert "\n" not in msg
    assert "struct endpoint field ifindex offset: C (bpf/maps.h) says 8, abi.py says 4" in msg, msg


def test_limits_have_no_c_defaults() -> None:
    with pin_dir() as pins:
        flags = [f for f in loader.cflags(abi.MODE_REDIRECT_PEER, pins, 128)
                 if not f.startswith("-DMAX_NETWORKS")]
        with pytest.raises(Exception, match="compile") as e:
            loader.compile_checked(loader.render_source(), flags, abi.checks())
    assert not isinstance(e.value, layout.AbiMismatch)


def test_btf_of_the_loaded_maps_matches_abi_and_catches_drift() -> None:
    with pin_dir() as pins:
        progs = loader.load(abi.MODE_REDIRECT_PEER, pins, 128)  # checks the loaded maps itself
        try:
            btfs: dict[int, layout.Btf] = {}
            for spec in m.map_specs(128):
                info = bpfsys.map_info(int(progs.bpf[spec.name.encode()].map_fd))
                assert info.btf_id, f"bcc created {spec.name} without BTF"
                assert m.map_drift(info, spec.abi, btfs) == [], spec.name
            bad = next(d for d in drifted_maps() if d.name == "endpoint_by_id")
            info = bpfsys.map_info(int(progs.bpf[b"endpoint_by_id"].map_fd))
            drift = m.map_drift(info, bad, btfs)
            assert "struct endpoint field network_id offset: C says 4, abi.py says 8" in drift
        finally:
            progs.close()


def test_pins_with_another_layout_are_replaced(caplog: pytest.LogCaptureFixture) -> None:
    with pin_dir() as pins:
        loader.load(abi.MODE_REDIRECT_PEER, pins, 128).close()
        before = {n: os.stat(os.path.join(pins, n)).st_ino for n in os.listdir(pins)}
        with caplog.at_level(logging.WARNING):
            m.check_pins(pins, 128)  # same layout: every pin kept
        assert not caplog.text
        assert {n: os.stat(os.path.join(pins, n)).st_ino for n in os.listdir(pins)} == before

        # an abi.py that disagrees with the pins (as an upgrade that moved a field would):
        # the maps holding struct endpoint go, the others stay
        with caplog.at_level(logging.WARNING):
            m.check_pins(pins, 128, drifted_maps())
        gone = {"endpoint_by_id", "endpoint_by_ifindex"}
        assert set(os.listdir(pins)) == set(before) - gone
        assert ("written with another layout (struct endpoint field ifindex offset: C says 8, "
                "abi.py says 4; 2 more)") in caplog.text


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32)]


class _ObjPinAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


def test_pin_without_btf_is_replaced_and_start_works(caplog: pytest.LogCaptureFixture) -> None:
    """A map of the right shape but without BTF (made by other tools) has an unknown
    layout: replaced, never trusted."""
    with pin_dir() as pins:
        os.makedirs(pins)
        spec = next(s for s in m.map_specs(128) if s.name == "network_by_id")
        fd = bpfsys._bpf(0, _MapCreateAttr(spec.type, spec.key_size, spec.value_size,
                                           spec.max_entries))  # BPF_MAP_CREATE
        try:
            path = ctypes.create_string_buffer(os.path.join(pins, spec.name).encode())
            bpfsys._bpf(6, _ObjPinAttr(ctypes.addressof(path), fd))  # BPF_OBJ_PIN
        finally:
            os.close(fd)
        with caplog.at_level(logging.WARNING):
            progs = loader.load(abi.MODE_REDIRECT_PEER, pins, 128)
        try:
            assert "network_by_id has no BTF" in caplog.text
            info = bpfsys.map_info(int(progs.bpf[b"network_by_id"].map_fd))
            assert info.btf_id
        finally:
            progs.close()
