"""bpfnet as Docker's network driver and IPAM driver (libnetwork's remote driver API).

Boundary: Docker's plugin protocol (JSON over HTTP POSTs to ``/Plugin.Activate``,
``/NetworkDriver.*`` and ``/IpamDriver.*`` on a Unix socket that dockerd finds in its
plugin directory) <-> the network and endpoint services, as the API routes call them;
bodies bpfnet makes from Docker's requests go through the API's own schemas. The daemon
serves it (``--docker-plugin NAME``) on a listener of its own.

How Docker's model maps onto bpfnet's:

- ``docker network create -d NAME --ipam-driver NAME --subnet …`` first asks the IPAM
  driver for pools (``RequestPool``: the pool id is the subnet itself, so nothing has to
  be remembered) and the gateway, then ``CreateNetwork`` makes the bpfnet network, named
  after Docker's network id (its first 12 characters, as ``docker network ls`` shows it;
  the bridge is ``br-<that>``, as Docker's own bridge driver names it). ``-o icc=false``
  (or the bridge driver's ``com.docker.network.bridge.enable_icc``) is ``--no-icc``,
  ``-o mtu=N`` (``com.docker.network.driver.mtu``) the MTU.
- A container's addresses come from bpfnet's IPAM (``RequestAddress`` holds one before the
  endpoint exists); ``CreateEndpoint`` makes a *handoff* endpoint (``owner``
  ``docker:<endpoint id>``, named after the first 12 characters of that id): the veth's
  peer waits in the managed namespace (dockerd's) until ``Join`` names it, and dockerd
  moves it into the container, names it ``eth0`` (``eth1``…), sets the addresses and MAC
  and the default routes via the gateways ``Join`` returns; the endpoint records the
  sandbox as its ``netns`` until ``Leave`` (dockerd moves the interface back itself).
  ``DeleteEndpoint`` removes the veth, the leases and the datapath entries.
- Errors are answered as Docker's structures carry them: ``{"Err": message}`` for the
  network driver, ``{"Error": message}`` for the IPAM driver (both keys are sent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import (
    IPv4Interface,
    IPv4Network,
    IPv6Interface,
    IPv6Network,
    ip_interface,
    ip_network,
)
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .. import schemas
from ..config import parse_v4_network, parse_v6_network
from ..endpoints import EndpointService
from ..errors import BpfnetError, Conflict, InvalidArgument, NotFound
from ..networks import NetworkService
from ..outside.ports import PortMapping

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
POOL_PREFIX = "bpfnet:"  # pool ids are "bpfnet:<subnet>"
ADDRESS_SPACE = "bpfnet"
GATEWAY_REQUEST = "com.docker.network.gateway"  # RequestAddress's RequestAddressType for a gateway
OWNER_PREFIX = "docker:"
SHORT_ID = 12  # characters of Docker's ids in bpfnet's names, as docker network ls / ps show them
# Docker's network options (CreateNetwork's "com.docker.network.generic", i.e. -o): ours, and the
# bridge driver's names for the same settings, so that a bridge network's options carry over.
ICC_OPTIONS = ("icc", "com.docker.network.bridge.enable_icc")
MTU_OPTIONS = ("mtu", "com.docker.network.driver.mtu")
BRIDGE_OPTIONS = ("bridge", "com.docker.network.bridge.name")
GENERIC = "com.docker.network.generic"
PORT_MAP = "com.docker.network.portmap"  # CreateEndpoint's option: `docker run -p`'s bindings
PROTOCOLS = {6: "tcp", 17: "udp"}  # libnetwork's types.Protocol numbers
ENABLE_IPV6 = "com.docker.network.enable_ipv6"

Handler = Callable[[Any], dict[str, Any]]


# Docker's request structures (libnetwork's drivers/remote/api and ipams/remote/api), as far as
# bpfnet reads them; fields it does not read are ignored, as Docker adds some in newer releases.
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Empty(_Request):
    pass


class PoolRequest(_Request):
    AddressSpace: str = ""
    Pool: str = ""
    SubPool: str = ""
    Options: dict[str, str] | None = None
    V6: bool = False


class AddressRequest(_Request):
    PoolID: str = ""
    Address: str = ""
    Options: dict[str, str] | None = None


class IpamData(_Request):
    AddressSpace: str = ""
    Pool: str = ""
    Gateway: str = ""


class NetworkRequest(_Request):
    NetworkID: str = ""
    Options: dict[str, Any] | None = None
    IPv4Data: list[IpamData] | None = None
    IPv6Data: list[IpamData] | None = None


class EndpointInterface(_Request):
    Address: str = ""
    AddressIPv6: str = ""
    MacAddress: str = ""


class EndpointRequest(_Request):
    NetworkID: str = ""
    EndpointID: str = ""
    Interface: EndpointInterface | None = None
    SandboxKey: str = ""
    Options: dict[str, Any] | None = None


def parse_request(model: type[_Request], body: bytes | None) -> Any:
    """Docker's request body as MODEL; InvalidArgument naming the first field that is wrong."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in err["loc"]) or "the body"
        raise InvalidArgument(" ".join(f"{where}: {err['msg']}".split())) from None  # one line


def _interface(text: str, what: str) -> IPv4Interface | IPv6Interface:
    try:
        return ip_interface(text)
    except ValueError:
        raise InvalidArgument(f"{what} {text!r} is not an address") from None


def network_name(network_id: str) -> str:
    """The bpfnet network of a Docker network id."""
    if not network_id or not network_id.isalnum():
        raise InvalidArgument(f"NetworkID {network_id!r} is not a Docker network id")
    return network_id[:SHORT_ID]


def owner(endpoint_id: str) -> str:
    if not endpoint_id or not endpoint_id.isalnum():
        raise InvalidArgument(f"EndpointID {endpoint_id!r} is not a Docker endpoint id")
    return OWNER_PREFIX + endpoint_id


def pool_subnet(pool_id: str) -> IPv4Network | IPv6Network:
    if not pool_id.startswith(POOL_PREFIX):
        raise InvalidArgument(f"PoolID {pool_id!r} is not one of bpfnet's")
    try:
        return ip_network(pool_id[len(POOL_PREFIX):])
    except ValueError:
        raise InvalidArgument(f"PoolID {pool_id!r} is not one of bpfnet's") from None


def _bool_option(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise InvalidArgument(f"-o {key}={value}: expected true or false")


def publish_specs(options: dict[str, Any] | None) -> list[str]:
    """``docker run -p`` as bpfnet's ``--publish`` specs. dockerd hands the bindings to the
    driver in CreateEndpoint's options (its own bridge driver publishes them; a remote driver
    must too): ``{"Proto": 6, "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}``.
    HostPort 0 leaves the port to bpfnet (ephemeral range); HostPortEnd above HostPort is a
    range to pick one port from, as dockerd does for ``-p 8000-8010:80``."""
    raw = (options or {}).get(PORT_MAP) or []
    if not isinstance(raw, list):
        raise InvalidArgument(f"{PORT_MAP}: expected a list of port bindings")
    specs: list[str] = []
    for b in raw:
        if not isinstance(b, dict):
            raise InvalidArgument(f"{PORT_MAP}: expected a list of port bindings")
        proto = PROTOCOLS.get(b.get("Proto", 6))
        if proto is None:
            raise InvalidArgument(f"-p ...{b.get('Port')}: bpfnet publishes tcp and udp ports only "
                                  f"(protocol number {b.get('Proto')})")
        port, low, high = int(b.get("Port") or 0), int(b.get("HostPort") or 0), int(b.get("HostPortEnd") or 0)
        host = str(b.get("HostIP") or "")
        prefix = "" if host in ("", "0.0.0.0", "::") else (f"[{host}]:" if ":" in host else f"{host}:")
        if low == 0:
            ports = f":{port}" if prefix else f"{port}"
        elif high > low:
            ports = f"{low}-{high}:{port}"
        else:
            ports = f"{low}:{port}"
        spec = f"{prefix}{ports}/{proto}"
        if spec not in specs:  # dockerd may send 0.0.0.0 and :: for one port: bpfnet's "all" is both
            specs.append(spec)
    return specs


def network_request(req: NetworkRequest) -> dict[str, Any]:
    """The body of POST /v1/networks for a CreateNetwork request (checked by its schema)."""
    options = req.Options or {}
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise InvalidArgument(f"Options.{GENERIC}: expected an object")
    body: dict[str, Any] = {"name": network_name(req.NetworkID)}
    for key, value in generic.items():
        if key in ICC_OPTIONS:
            body["icc"] = _bool_option(key, value)
        elif key in MTU_OPTIONS:
            try:
                body["mtu"] = int(value)
            except (TypeError, ValueError):
                raise InvalidArgument(f"-o {key}={value}: expected an integer") from None
        elif key in BRIDGE_OPTIONS:
            body["bridge"] = str(value)
        else:
            raise InvalidArgument(f"-o {key}: not an option of bpfnet's driver (icc, mtu, bridge)")
    v4, v6 = req.IPv4Data or [], req.IPv6Data or []
    if len(v4) != 1:
        raise InvalidArgument("a bpfnet network has exactly one IPv4 subnet (--subnet)")
    if len(v6) > 1:
        raise InvalidArgument("a bpfnet network has at most one IPv6 subnet")
    body["subnet4"] = v4[0].Pool
    if v4[0].Gateway:
        body["gateway4"] = str(_interface(v4[0].Gateway, "IPv4Data.Gateway").ip)
    if v6:
        body["ipv6"] = True
        body["subnet6"] = v6[0].Pool
        if v6[0].Gateway:
            body["gateway6"] = str(_interface(v6[0].Gateway, "IPv6Data.Gateway").ip)
    elif options.get(ENABLE_IPV6) is True:
        raise InvalidArgument("--ipv6 needs an IPv6 --subnet from bpfnet's IPAM driver")
    return schemas.parse_body(schemas.NetworkCreate, json.dumps(body).encode()).to_json()


_ROUTES: dict[str, tuple[type[_Request], str]] = {
    # path -> (request structure, DockerPlugin method)
    "/Plugin.Activate": (Empty, "activate"),
    "/NetworkDriver.GetCapabilities": (Empty, "capabilities"),
    "/NetworkDriver.CreateNetwork": (NetworkRequest, "create_network"),
    "/NetworkDriver.DeleteNetwork": (NetworkRequest, "delete_network"),
    "/NetworkDriver.AllocateNetwork": (Empty, "allocate_network"),  # swarm managers only
    "/NetworkDriver.FreeNetwork": (Empty, "nothing"),
    "/NetworkDriver.CreateEndpoint": (EndpointRequest, "create_endpoint"),
    "/NetworkDriver.EndpointOperInfo": (EndpointRequest, "endpoint_info"),
    "/NetworkDriver.DeleteEndpoint": (EndpointRequest, "delete_endpoint"),
    "/NetworkDriver.Join": (EndpointRequest, "join"),
    "/NetworkDriver.Leave": (EndpointRequest, "leave"),
    "/NetworkDriver.DiscoverNew": (Empty, "nothing"),
    "/NetworkDriver.DiscoverDelete": (Empty, "nothing"),
    "/NetworkDriver.ProgramExternalConnectivity": (Empty, "nothing"),
    "/NetworkDriver.RevokeExternalConnectivity": (Empty, "nothing"),
    "/IpamDriver.GetCapabilities": (Empty, "ipam_capabilities"),
    "/IpamDriver.GetDefaultAddressSpaces": (Empty, "address_spaces"),
    "/IpamDriver.RequestPool": (PoolRequest, "request_pool"),
    "/IpamDriver.ReleasePool": (Empty, "nothing"),
    "/IpamDriver.RequestAddress": (AddressRequest, "request_address"),
    "/IpamDriver.ReleaseAddress": (AddressRequest, "release_address"),
}


class DockerPlugin:
    """The calls of one plugin socket, each taking its request structure."""

    def __init__(self, networks: NetworkService, endpoints: EndpointService) -> None:
        self.networks = networks
        self.endpoints = endpoints
        self.handlers: dict[str, tuple[type[_Request], Handler]] = {
            path: (model, getattr(self, method)) for path, (model, method) in _ROUTES.items()}

    # the server's app: (method, path, body) -> (status, document, route label)
    def handle(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, str]:
        route = self.handlers.get(path)
        if method != "POST" or route is None:
            # dockerd takes a 404 as "this plugin does not implement that call".
            return 404, {"Err": f"{method} {path}: not implemented by bpfnet"}, "unmatched"
        model, handler = route
        try:
            req = parse_request(model, body)
            log.debug("docker %s %s", path, req)
            return 200, handler(req), path
        except BpfnetError as exc:
            message = exc.message
        except Exception as exc:
            log.exception("docker %s failed", path)
            message = f"internal error: {exc}"
        log.info("docker %s refused: %s", path, message)
        return 200, {"Err": message, "Error": message}, path

    # answers that need nothing ------------------------------------------------------------
    def activate(self, req: Empty) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    def capabilities(self, req: Empty) -> dict[str, Any]:
        return {"Scope": "local", "ConnectivityScope": "local"}

    def ipam_capabilities(self, req: Empty) -> dict[str, Any]:
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, req: Empty) -> dict[str, Any]:
        return {"LocalDefaultAddressSpace": ADDRESS_SPACE, "GlobalDefaultAddressSpace": ADDRESS_SPACE}

    def allocate_network(self, req: Empty) -> dict[str, Any]:
        return {"Options": {}}

    def nothing(self, req: Empty) -> dict[str, Any]:
        return {}

    # IPAM -------------------------------------------------------------------------------
    def request_pool(self, req: PoolRequest) -> dict[str, Any]:
        if not req.Pool:
            raise InvalidArgument(f"bpfnet's IPAM driver needs --subnet{' for IPv6' if req.V6 else ''}")
        if req.SubPool:
            raise InvalidArgument("bpfnet's IPAM driver does not take --ip-range")
        subnet = (parse_v6_network if req.V6 else parse_v4_network)(req.Pool, "--subnet")
        return {"PoolID": f"{POOL_PREFIX}{subnet}", "Pool": str(subnet), "Data": {}}

    def request_address(self, req: AddressRequest) -> dict[str, Any]:
        subnet = pool_subnet(req.PoolID)
        wanted = req.Address or None
        if (req.Options or {}).get("RequestAddressType") == GATEWAY_REQUEST:
            # Before the network exists: CreateNetwork makes it with this gateway.
            gateway = wanted or str(subnet.network_address + 1)
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
        address = self.endpoints.hold_address(self._network_of(subnet), subnet.version, wanted)
        return {"Address": f"{address}/{subnet.prefixlen}", "Data": {}}

    def release_address(self, req: AddressRequest) -> dict[str, Any]:
        subnet = pool_subnet(req.PoolID)
        address = str(_interface(req.Address, "Address").ip)
        try:
            name = self._network_of(subnet)
        except NotFound:
            return {}  # the network (and every address of it) is gone already
        # A held address is forgotten; one an endpoint took was freed with the endpoint.
        self.endpoints.release_held(name, address)
        return {}

    def _network_of(self, subnet: IPv4Network | IPv6Network) -> str:
        key = "ipv4" if subnet.version == 4 else "ipv6"
        for net in self.networks.list_all():
            if (net["ipam"].get(key) or {}).get("subnet") == str(subnet):
                return str(net["name"])
        raise NotFound(f"no bpfnet network has the subnet {subnet}")

    # networks ---------------------------------------------------------------------------
    def create_network(self, req: NetworkRequest) -> dict[str, Any]:
        net = self.networks.create(network_request(req))
        log.info("docker network %s is bpfnet network %s (bridge %s)", req.NetworkID[:SHORT_ID], net["name"],
                 net["bridge"])
        return {}

    def delete_network(self, req: NetworkRequest) -> dict[str, Any]:
        try:
            self.networks.remove(network_name(req.NetworkID))
        except NotFound:
            pass  # removed already: Docker may retry a delete that failed half-way
        return {}

    # endpoints --------------------------------------------------------------------------
    def create_endpoint(self, req: EndpointRequest) -> dict[str, Any]:
        iface = req.Interface or EndpointInterface()
        key = owner(req.EndpointID)
        body: dict[str, Any] = {"name": req.EndpointID[:SHORT_ID], "network": network_name(req.NetworkID),
                                "owner": key, "handoff": True}
        if iface.Address:
            body["ip"] = str(_interface(iface.Address, "Interface.Address").ip)
        if iface.AddressIPv6:
            body["ip6"] = str(_interface(iface.AddressIPv6, "Interface.AddressIPv6").ip)
        if iface.MacAddress:
            body["mac"] = iface.MacAddress
        if "ip" not in body:
            raise InvalidArgument("CreateEndpoint without an IPv4 address: use --ipam-driver with bpfnet's driver")
        publish = publish_specs(req.Options)
        if publish:
            body["publish"] = publish
        try:
            ep = self.endpoints.add(schemas.parse_body(schemas.EndpointCreate, json.dumps(body).encode()).to_json())
        except Conflict:
            if self.endpoints.by_owner(key) is None:
                raise
            raise Conflict(f"endpoint {req.EndpointID[:SHORT_ID]} exists already") from None
        # Only what Docker did not give may be answered (else it refuses the endpoint).
        return {"Interface": {"MacAddress": ep["mac"]}} if not iface.MacAddress else {}

    def _endpoint(self, req: EndpointRequest) -> dict[str, Any]:
        ep = self.endpoints.by_owner(owner(req.EndpointID))
        if ep is None:
            raise NotFound(f"endpoint {req.EndpointID[:SHORT_ID]} is not one of bpfnet's")
        return ep

    def endpoint_info(self, req: EndpointRequest) -> dict[str, Any]:
        ep = self._endpoint(req)
        return {"Value": {"bpfnet.endpoint": ep["name"], "bpfnet.host_ifname": ep["host_ifname"],
                          "bpfnet.published": [str(PortMapping.from_json(p)) for p in ep["published"]]}}

    def join(self, req: EndpointRequest) -> dict[str, Any]:
        ep = self._endpoint(req)
        out: dict[str, Any] = {"InterfaceName": {"SrcName": ep["ifname"], "DstPrefix": "eth"},
                               "Gateway": ep["gateway4"], "StaticRoutes": [], "DisableGatewayService": False}
        if ep.get("gateway6"):
            out["GatewayIPv6"] = ep["gateway6"]
        if req.SandboxKey:
            self.endpoints.joined(ep["name"], req.SandboxKey)
        log.info("docker endpoint %s joins sandbox %s as %s", ep["name"], req.SandboxKey, ep["ifname"])
        return out

    def leave(self, req: EndpointRequest) -> dict[str, Any]:
        ep = self.endpoints.by_owner(owner(req.EndpointID))
        if ep is not None:  # dockerd moves the interface back beside its host end itself
            self.endpoints.joined(ep["name"], "")
        return {}

    def delete_endpoint(self, req: EndpointRequest) -> dict[str, Any]:
        ep = self.endpoints.by_owner(owner(req.EndpointID))
        if ep is not None:
            try:
                self.endpoints.remove(ep["name"])
            except NotFound:
                pass  # removed meanwhile
        return {}
