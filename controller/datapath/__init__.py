"""The datapath interface the controller drives.

Boundary: the controller calls these methods from inside the network namespace
it manages (the daemon process has already entered it), after links exist and
before it reports success; a raise makes the controller roll the whole
operation back. Implementations: ``bridge`` (no programs, the kernel bridge does
everything) and the eBPF datapath in ``bpfnet.datapath.ebpf``.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address
from typing import Any, Protocol

from ..model import EndpointSpec, NetworkSpec, RemoteEndpointSpec
from .abi import (
    DEFAULT_MAX_ENDPOINTS,
    ENDPOINT_NETKIT,
    ENDPOINT_VETH,
    MODE_AUTO,
    MODE_BRIDGE,
    MODE_REDIRECT,
    MODE_REDIRECT_PEER,
    MODES,
    REQUESTABLE_ENDPOINT_DEVICES,
    REQUESTABLE_MODES,
)
from .published import Flow, PublishedPort

__all__ = ["MODES", "REQUESTABLE_MODES", "BridgeDatapath", "Datapath", "DnsAddresses", "make_datapath"]

# A name's addresses for the datapath's DNS answers: (IPv4s, IPv6s), each packed (4 / 16 bytes).
DnsAddresses = tuple[tuple[bytes, ...], tuple[bytes, ...]]


class Datapath(Protocol):
    mode: str

    def start(self, networks: list[NetworkSpec], endpoints: list[EndpointSpec]) -> None:
        """Load or reuse pinned maps/programs and bring them in step with the given state."""

    def attach_network(self, net: NetworkSpec) -> None:
        """Attach the bridge program(s) of one network. Idempotent."""

    def detach_network(self, net: NetworkSpec) -> None:
        """Remove what attach_network made. Idempotent."""

    def add_endpoint(self, ep: EndpointSpec) -> None:
        """Add map entries and attach programs on the host-side veth. Idempotent."""

    def remove_endpoint(self, ep: EndpointSpec) -> None:
        """Remove map entries, zero its counters and detach. Idempotent."""

    def check_endpoint(self, ep: EndpointSpec) -> list[str]:
        """What of EP's datapath state is not in place (the controller's reconcile re-adds it)."""

    def counters(self) -> dict[int, dict[str, Any]]:
        """Per endpoint id: summed per-CPU counters (see bpfnet.datapath.counters)."""

    def set_tunnel(self, ifindex: int, vtep: IPv4Address | None = None, uplink_ifindex: int = 0) -> None:
        """The overlay's VXLAN device (0: none): tunnel_ingress on its ingress, its ifindex
        where the endpoint programs encapsulate to. With VTEP (this host's --advertise-addr)
        and UPLINK_IFINDEX (the link holding it) the programs encapsulate and decapsulate
        themselves (bpf/tunnel.h), the device taking only what they decline. Idempotent."""

    def add_remote(self, r: RemoteEndpointSpec) -> None:
        """Forward to an endpoint on another host. Idempotent."""

    def remove_remote(self, r: RemoteEndpointSpec) -> None:
        """Stop forwarding to it. Idempotent."""

    def set_remotes(self, remotes: list[RemoteEndpointSpec]) -> None:
        """Exactly these remote endpoints (a resync): add the missing, remove the rest."""

    def tunnel_counters(self) -> dict[str, int]:
        """The tunnel's counters: rx_packets, rx_bytes, rx_unknown, rx_not_ip (what arrived),
        tx_native, rx_native (what the programs encapsulated / decapsulated themselves)."""
    # published ports' fast path (bpf/nat.h); the outside service drives it
    def set_uplinks(self, uplinks: dict[int, str]) -> None:
        """Attach uplink_ingress to exactly these devices (ifindex -> name)."""

    def uplinks(self) -> dict[int, str]: ...

    def set_published(self, ports: list[PublishedPort]) -> None:
        """Make the published_ports map hold exactly PORTS (their flows go when they do)."""

    def published(self) -> list[PublishedPort]: ...

    def published_counters(self) -> dict[int, dict[str, int]]:
        """Counter slot -> fast-pathed in/out packets and bytes."""

    def flows(self) -> list[Flow]: ...
    def set_dns_names(self, names: Mapping[tuple[int, bytes], DnsAddresses]) -> None:
        """The names the datapath answers itself: (network id, wire-form name) -> addresses;
        the whole set (entries not in it are removed). Names that do not fit are left out."""

    def dns_counters(self) -> dict[int, dict[str, int]]:
        """Per network id: DNS queries the datapath answered (answered_a, answered_aaaa) and passed."""

    def info(self) -> dict[str, Any]:
        """Mode, attach mechanism ("tcx", "tc"; None without programs), endpoint device ("veth",
        "netkit"), loaded programs (id, tag, attach point), pin directory."""

    def close(self) -> None:
        """Release file descriptors; programs and pins stay (no blackhole)."""

    def cleanup(self) -> None:
        """Remove every program, filter, map entry and pin bpfnet made."""


class BridgeDatapath:
    """Bridge mode: no programs, the Linux bridge forwards everything."""

    mode = MODE_BRIDGE

    def __init__(self, endpoint_device: str = ENDPOINT_VETH) -> None:
        self.endpoint_device = endpoint_device

    def start(self, networks: list[NetworkSpec], endpoints: list[EndpointSpec]) -> None:
        return None

    def attach_network(self, net: NetworkSpec) -> None:
        return None

    def detach_network(self, net: NetworkSpec) -> None:
        return None

    def add_endpoint(self, ep: EndpointSpec) -> None:
        return None

    def remove_endpoint(self, ep: EndpointSpec) -> None:
        return None

    def check_endpoint(self, ep: EndpointSpec) -> list[str]:
        return []

    def counters(self) -> dict[int, dict[str, Any]]:
        return {}

    def set_tunnel(self, ifindex: int, vtep: IPv4Address | None = None, uplink_ifindex: int = 0) -> None:
        return None

    def add_remote(self, r: RemoteEndpointSpec) -> None:
        return None

    def remove_remote(self, r: RemoteEndpointSpec) -> None:
        return None

    def set_remotes(self, remotes: list[RemoteEndpointSpec]) -> None:
        return None

    def tunnel_counters(self) -> dict[str, int]:
        return {}

    def set_uplinks(self, uplinks: dict[int, str]) -> None:
        return None

    def uplinks(self) -> dict[int, str]:
        return {}

    def set_published(self, ports: list[PublishedPort]) -> None:
        return None

    def published(self) -> list[PublishedPort]:
        return []

    def published_counters(self) -> dict[int, dict[str, int]]:
        return {}

    def flows(self) -> list[Flow]:
        return []

    def set_dns_names(self, names: Mapping[tuple[int, bytes], DnsAddresses]) -> None:
        return None

    def dns_counters(self) -> dict[int, dict[str, int]]:
        return {}

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "attach": None, "endpoint_device": self.endpoint_device, "programs": [],
                "pin_dir": None}

    def close(self) -> None:
        return None

    def cleanup(self) -> None:
        return None


def resolve_endpoint_device(requested: str, mode: str = MODE_AUTO) -> str:
    """"auto": netkit where the kernel has it (``probe.probe_endpoint_device``) and the
    requested datapath MODE can use it (not an explicit "redirect-peer"), else veth;
    "netkit" on a kernel without it: ValueError naming the problem."""
    if requested not in REQUESTABLE_ENDPOINT_DEVICES:
        raise ValueError(f"unknown endpoint device {requested!r}; choose one of {REQUESTABLE_ENDPOINT_DEVICES}")
    if requested == ENDPOINT_VETH or (requested == MODE_AUTO and mode == MODE_REDIRECT_PEER):
        return ENDPOINT_VETH
    from .netkit import netkit_available

    if netkit_available():
        return ENDPOINT_NETKIT
    if requested == ENDPOINT_NETKIT:
        import os

        raise ValueError(f"--endpoint-device netkit: this kernel ({os.uname().release}) has no netkit devices "
                         f"(Linux 6.7+ built with CONFIG_NETKIT); use --endpoint-device veth or auto")
    return ENDPOINT_VETH


def make_datapath(requested: str = MODE_AUTO, pin_dir: str = "/sys/fs/bpf/bpfnet/default",
                  max_endpoints: int = DEFAULT_MAX_ENDPOINTS,
                  attach: str = MODE_AUTO, endpoint_device: str = ENDPOINT_VETH) -> Datapath:
    """The datapath for a requested mode: "auto" (best the kernel offers, see
    ``probe.probe_mode``) or one of ``abi.MODES``, with max_endpoints endpoint
    slots (the daemon passes its Runtime's value), its programs attached with
    ``attach`` ("auto": tcx links where the kernel has them, see
    ``probe.probe_attach``; "tcx"; "tc"), for endpoints of ``endpoint_device``
    (already resolved: "veth" or "netkit"; netkit turns auto's redirect-peer
    into redirect, the one mode netkit supports). Logs the choice. eBPF modules
    are imported only when needed, so bridge mode works without bcc."""
    import logging

    log = logging.getLogger(__name__)
    if requested not in REQUESTABLE_MODES:
        raise ValueError(f"unknown datapath mode {requested!r}; choose one of {REQUESTABLE_MODES}")
    mode = requested
    if requested == MODE_AUTO:
        from .probe import probe_mode

        mode = probe_mode()
        if endpoint_device == ENDPOINT_NETKIT and mode == MODE_REDIRECT_PEER:
            mode = MODE_REDIRECT
    if mode == MODE_BRIDGE:
        log.info("datapath mode bridge (requested %s): no eBPF programs, %s endpoints", requested, endpoint_device)
        return BridgeDatapath(endpoint_device)
    from .ebpf import EbpfDatapath

    dp = EbpfDatapath(mode=mode, pin_dir=pin_dir, max_endpoints=max_endpoints, attach=attach,
                      endpoint_device=endpoint_device)
    log.info("datapath mode %s (requested %s), attached with %s (requested %s), %s endpoints, maps pinned in %s",
             mode, requested, dp.attach, attach, endpoint_device, pin_dir)
    return dp
