"""Namespaces, pins, links and specs for the datapath tests (helpers, no fixtures).

Everything happens in network namespaces named bpfnet-t-*, with pins under
/sys/fs/bpf/bpfnet-test-*; both are removed afterwards, also when a test fails.
Kept out of conftest.py so test modules can import it by a name no other
conftest shadows.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "needs Debian's python3-bpfcc"
    if not os.path.isdir("/sys/fs/bpf"):
        return "needs bpffs on /sys/fs/bpf"
    return None


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@contextmanager
def netns(name: str | None = None) -> Iterator[str]:
    from pyroute2 import netns as pnetns

    name = name or unique("bpfnet-t-")
    pnetns.create(name)
    try:
        yield name
    finally:
        pnetns.remove(name)


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread in namespace name (IPRoute(), bpf test runs)."""
    from pyroute2 import netns as pnetns

    pnetns.pushns(name)
    try:
        yield
    finally:
        pnetns.popns()


@contextmanager
def pin_dir() -> Iterator[str]:
    path = f"/sys/fs/bpf/{unique('bpfnet-test-')}"
    try:
        yield path
    finally:
        if os.path.isdir(path):
            for f in os.listdir(path):
                p = os.path.join(path, f)
                if os.path.isdir(p):  # links/ (tcx link pins)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Env:
    """A started datapath in its own namespace, with the specs it was given."""

    ns: str
    pins: str
    dp: object
    networks: dict[str, object] = field(default_factory=dict)
    endpoints: dict[str, object] = field(default_factory=dict)


def make_links(networks: list[tuple[str, str, bool]], endpoints: list[tuple[str, str, int]],
               device: str = "veth"):
    """In the current namespace: bridges and veth (or netkit) pairs, and their specs.

    networks: (bridge name, "10.N", icc); endpoints: (name, bridge name, host number).
    """
    from bpfnet.datapath import netkit
    from bpfnet.model import EndpointSpec, NetworkSpec
    from pyroute2 import IPRoute

    nets: dict[str, NetworkSpec] = {}
    eps: dict[str, EndpointSpec] = {}
    with IPRoute() as ipr:
        for nid, (br, prefix, icc) in enumerate(networks, 1):
            ipr.link("add", ifname=br, kind="bridge")
            idx = ipr.link_lookup(ifname=br)[0]
            brmac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
            nets[br] = NetworkSpec(
                name=br, id=nid, bridge=br, bridge_ifindex=idx, bridge_mac=brmac,
                gateway4=IPv4Address(f"{prefix}.0.1"),
                gateway6=(IPv6Address(f"fd00:{nid}::1"), IPv6Address("fe80::1")), icc=icc)
        for name, br, host in endpoints:
            net = nets[br]
            mac = f"02:42:00:{net.id:02x}:00:{host:02x}"
            if device == "netkit":
                netkit.create_pair(f"h-{name}", "", f"p-{name}", mac, 1500, master=net.bridge_ifindex)
            else:
                ipr.link("add", ifname=f"h-{name}", kind="veth", peer=f"p-{name}")
            idx = ipr.link_lookup(ifname=f"h-{name}")[0]
            eps[name] = EndpointSpec(
                name=name, id=10 * net.id + host, network=br, network_id=net.id,
                host_ifname=f"h-{name}", host_ifindex=idx, mac=mac,
                ipv4=IPv4Address(f"{nets[br].gateway4}".rsplit(".", 1)[0] + f".{host}"),
                ipv6=(IPv6Address(f"fd00:{net.id}::{host}"),), device=device)
    return nets, eps
