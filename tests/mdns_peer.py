"""A real multicast DNS client and server (python-zeroconf), run inside endpoint namespaces.

``mdns_peer.py register 4|6 NAME ADDRESS PORT``: publish service NAME._bpfnet-test._tcp.local.
on host NAME.local. (ADDRESS), print "ready", and keep answering until stdin closes.
``mdns_peer.py browse 4|6 SECONDS``: browse _bpfnet-test._tcp.local. for up to SECONDS, resolve
every service found (SRV, TXT and addresses, by mDNS queries) and print them as JSON.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

TYPE = "_bpfnet-test._tcp.local."


def version(arg: str) -> IPVersion:
    return IPVersion.V4Only if arg == "4" else IPVersion.V6Only


def register(ipv: str, name: str, address: str, port: int) -> None:
    zc = Zeroconf(ip_version=version(ipv))
    family = socket.AF_INET if ipv == "4" else socket.AF_INET6
    info = ServiceInfo(TYPE, f"{name}.{TYPE}", addresses=[socket.inet_pton(family, address)], port=port,
                       properties={"from": name}, server=f"{name}.local.")
    zc.register_service(info)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    zc.unregister_service(info)
    zc.close()


def browse(ipv: str, seconds: float) -> None:
    zc = Zeroconf(ip_version=version(ipv))
    found: list[str] = []

    def changed(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.append(name)

    ServiceBrowser(zc, TYPE, handlers=[changed])
    deadline = time.monotonic() + seconds
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)
    out: dict[str, Any] = {}
    for name in found:
        info = zc.get_service_info(TYPE, name, timeout=3000)
        if info is not None:
            out[name] = {"addresses": info.parsed_addresses(), "port": info.port, "server": info.server,
                         "properties": {k.decode(): (v or b"").decode() for k, v in info.properties.items()}}
    zc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "register":
        register(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        browse(sys.argv[2], float(sys.argv[3]))
