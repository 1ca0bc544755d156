"""netkit endpoints: the probe, the refusals where netkit cannot work, and (on a
kernel with netkit: `make vm-test KERNEL=6.12`) the programs' hooks on a netkit
pair: ep_ingress as a BPF_NETKIT_PEER link made through the primary (pinned),
ep_egress as a cls_bpf filter on the primary's egress hook, swapped atomically on restart,
checked, removed with the endpoint and by cleanup. Packets between netkit
endpoints: test_bpf_integration.py (its "redirect+netkit" parameter).

What the kernel has attached is read with BPF_PROG_QUERY, never from our pins."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest
from bpf_env import inside, make_links, netns, pin_dir
from bpfnet.datapath import abi, bpfsys, make_datapath, netkit, resolve_endpoint_device, tcx
from bpfnet.datapath.ebpf import EbpfDatapath

pytestmark = pytest.mark.kernel

needs_netkit = pytest.mark.skipif("not netkit.netkit_available()",
                                  reason="this kernel has no netkit (make vm-test KERNEL=6.12 runs these)")


def hook(ifindex: int, attach_type: int) -> list[int]:
    """Program ids on a hook of ifindex, as the kernel reports them."""
    try:
        return [p for p, _ in bpfsys.tcx_query(ifindex, attach_type)]
    except OSError:
        return []  # device gone


def prog_ids(dp: EbpfDatapath) -> dict[str, int]:
    return {p["name"]: p["id"] for p in dp.info()["programs"]}


def test_netkit_needs_redirect_mode() -> None:
    with pytest.raises(ValueError, match="netkit endpoints need datapath mode 'redirect'"):
        EbpfDatapath(mode="redirect-peer", pin_dir="/sys/fs/bpf/bpfnet-test-unused", endpoint_device="netkit")
    # auto picks redirect for netkit endpoints, whatever the kernel's best mode for veth is
    dp = make_datapath("auto", pin_dir="/sys/fs/bpf/bpfnet-test-unused", endpoint_device="netkit")
    assert dp.mode in ("redirect", "bridge") and dp.info()["endpoint_device"] == "netkit"
    with pytest.raises(ValueError, match="endpoint device"):
        resolve_endpoint_device("macvlan")
    # an explicit redirect-peer keeps auto on veth (netkit cannot serve it), on any kernel
    assert resolve_endpoint_device("auto", "redirect-peer") == abi.ENDPOINT_VETH
    with pytest.raises(ValueError, match="netkit endpoints need datapath mode"):
        make_datapath("redirect-peer", pin_dir="/sys/fs/bpf/bpfnet-test-unused", endpoint_device="netkit")


def test_newlink_message_layout() -> None:
    """The parts of the request the kernel parses: lengths add up, the kind and the L2 mode are there."""
    msg = netkit.newlink_message("h-x", "eth0", 1400, master=7, peer_mac="02:00:00:00:00:01", peer_ns_fd=9)
    assert int.from_bytes(msg[:4], "little") == len(msg) and len(msg) % 4 == 0
    assert b"netkit\0" in msg and b"h-x\0" in msg and b"eth0\0" in msg
    assert bytes.fromhex("020000000001") in msg
    mode_attr = (8).to_bytes(2, "little") + netkit.IFLA_NETKIT_MODE.to_bytes(2, "little")
    assert mode_attr + netkit.NETKIT_L2.to_bytes(4, "little") in msg


@pytest.mark.skipif("netkit.netkit_available()", reason="this kernel has netkit")
def test_no_netkit_is_refused_clearly() -> None:
    """This machine's kernel: netkit asked for is an error naming the kernel and the way
    out; auto falls back to veth; a failed create leaves nothing behind."""
    assert resolve_endpoint_device("auto") == abi.ENDPOINT_VETH
    assert resolve_endpoint_device("veth") == abi.ENDPOINT_VETH
    with pytest.raises(ValueError, match=r"--endpoint-device netkit: this kernel .* has no netkit"):
        resolve_endpoint_device("netkit")
    with netns() as ns, inside(ns):
        with pytest.raises(netkit.NetkitUnavailable, match="use --endpoint-device veth"):
            netkit.create_pair("h-nk", "", "p-nk", None, 1500)
        assert [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture
def nk_links() -> Iterator[tuple[str, str, dict, dict]]:
    with netns() as ns, pin_dir() as pins, inside(ns):
        nets, eps = make_links([("brN", "10.5", True)], [("n1", "brN", 2), ("n2", "brN", 3)], device="netkit")
        yield ns, pins, nets, eps


@needs_netkit
@pytest.mark.parametrize("attach", ["tcx", "tc"])
def test_netkit_hooks_pinned_replaced_checked_removed(nk_links, attach: str) -> None:
    ns, pins, nets, eps = nk_links
    n1, n2 = eps["n1"], eps["n2"]
    assert resolve_endpoint_device("auto") == abi.ENDPOINT_NETKIT
    dp1 = EbpfDatapath(mode="redirect", pin_dir=pins, attach=attach, endpoint_device="netkit")
    dp2 = EbpfDatapath(mode="redirect", pin_dir=pins, attach=attach, endpoint_device="netkit")
    try:
        dp1.start(list(nets.values()), list(eps.values()))
        ids1 = prog_ids(dp1)
        for ep in (n1, n2):
            # ep_ingress sees what the endpoint sends: netkit's peer hook, made through the primary
            assert hook(ep.host_ifindex, bpfsys.BPF_NETKIT_PEER) == [ids1["ep_ingress"]]
            assert hook(ep.host_ifindex, bpfsys.BPF_NETKIT_PRIMARY) == []
            assert os.path.exists(tcx.link_path(pins, ep.host_ifindex, tcx.NETKIT_PEER))
            # ep_egress on the primary's egress hook: a cls_bpf filter in both modes (ebpf.TC_IN_TCX_MODE)
            assert hook(ep.host_ifindex, bpfsys.BPF_TCX_EGRESS) == []
            assert "bpfnet:ep_egress" in subprocess.run(
                ["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", ep.host_ifname, "egress"],
                capture_output=True, text=True, check=True).stdout
            assert hook(ep.host_ifindex, bpfsys.BPF_TCX_INGRESS) == []
        assert {p["attach"] for p in dp1.info()["programs"] if p["name"] == "ep_ingress"} == {
            "h-n1/netkit-peer", "h-n2/netkit-peer"}
        assert dp1.check_endpoint(n1) == []
        dp1.close()  # the daemon stops: the pins keep the programs attached
        assert hook(n1.host_ifindex, bpfsys.BPF_NETKIT_PEER) == [ids1["ep_ingress"]]

        dp2.start(list(nets.values()), list(eps.values()))  # restart: BPF_LINK_UPDATE, same link
        ids2 = prog_ids(dp2)
        assert ids2["ep_ingress"] != ids1["ep_ingress"]
        assert hook(n1.host_ifindex, bpfsys.BPF_NETKIT_PEER) == [ids2["ep_ingress"]]

        tcx.detach(pins, n1.host_ifindex, tcx.NETKIT_PEER)  # behind the daemon's back
        assert dp2.check_endpoint(n1) == ["filters"]
        dp2.add_endpoint(n1)
        assert dp2.check_endpoint(n1) == []

        dp2.remove_endpoint(n2)
        assert hook(n2.host_ifindex, bpfsys.BPF_NETKIT_PEER) == []
        assert hook(n2.host_ifindex, bpfsys.BPF_TCX_EGRESS) == []
    finally:
        dp1.close()
        dp2.cleanup()
    assert not os.path.exists(pins)
    assert hook(n1.host_ifindex, bpfsys.BPF_NETKIT_PEER) == []


@needs_netkit
def test_netkit_link_pin_goes_stale_with_its_device(nk_links) -> None:
    from pyroute2 import IPRoute

    _ns, pins, nets, eps = nk_links
    n1, n2 = eps["n1"], eps["n2"]
    dp = EbpfDatapath(mode="redirect", pin_dir=pins, attach="tcx", endpoint_device="netkit")
    try:
        dp.start(list(nets.values()), list(eps.values()))
        dp.close()
        with IPRoute() as ipr:
            ipr.link("del", index=n2.host_ifindex)
        dp = EbpfDatapath(mode="redirect", pin_dir=pins, attach="tcx", endpoint_device="netkit")
        dp.start(list(nets.values()), [n1])
        assert (n2.host_ifindex, tcx.NETKIT_PEER) not in tcx.pinned(pins)
        assert (n1.host_ifindex, tcx.NETKIT_PEER) in tcx.pinned(pins)
        assert dp.check_endpoint(n1) == []
    finally:
        dp.cleanup()
