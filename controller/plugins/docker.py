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
  and the default routes via the gateways ``Join`` returns. ``Leave`` needs nothing;
  ``DeleteEndpoint`` removes the veth, the leases and the datapath entries.
- Errors are answered as Docker's structures carry them: ``{"Err": message}`` for the
  network driver, ``{"Error": message}`` for the IPAM driver (both keys are sent).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network, ip_interface, ip_network
from typing import Any

from .. import schemas
from ..config import parse_v4_network, parse_v6_network
from ..endpoints import EndpointService
from ..errors import BpfnetError, Conflict, InvalidArgument, NotFound
from ..networks import NetworkService

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
ENABLE_IPV6 = "com.docker.network.enable_ipv6"

Handler = Callable[[dict[str, Any]], dict[str, Any]]


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


def network_request(network_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """The body of POST /v1/networks for a CreateNetwork request (checked by its schema)."""
    options = data.get("Options") or {}
    generic = options.get(GENERIC) or {}
    if not isinstance(options, dict) or not isinstance(generic, dict):
        raise InvalidArgument("Options: expected objects")
    body: dict[str, Any] = {"name": network_name(network_id)}
    for key, value in generic.items():
        if key in ICC_OPTIONS:
            body["icc"] = _bool_option(key, value)
        elif key in MTU_OPTIONS:
            try:
                body["mtu"] = int(value)
            except ValueError:
                raise InvalidArgument(f"-o {key}={value}: expected an integer") from None
        elif key in BRIDGE_OPTIONS:
            body["bridge"] = str(value)
        else:
            raise InvalidArgument(f"-o {key}: not an option of bpfnet's driver (icc, mtu, bridge)")
    v4 = data.get("IPv4Data") or []
    v6 = data.get("IPv6Data") or []
    if len(v4) != 1:
        raise InvalidArgument("a bpfnet network has exactly one IPv4 subnet (--subnet)")
    if len(v6) > 1:
        raise InvalidArgument("a bpfnet network has at most one IPv6 subnet")
    body["subnet4"] = str(v4[0].get("Pool", ""))
    if v4[0].get("Gateway"):
        body["gateway4"] = str(ip_interface(v4[0]["Gateway"]).ip)
    if v6:
        body["ipv6"] = True
        body["subnet6"] = str(v6[0].get("Pool", ""))
        if v6[0].get("Gateway"):
            body["gateway6"] = str(ip_interface(v6[0]["Gateway"]).ip)
    elif options.get(ENABLE_IPV6) is True:
        raise InvalidArgument("--ipv6 needs an IPv6 --subnet from bpfnet's IPAM driver")
    return schemas.parse_body(schemas.NetworkCreate, json.dumps(body).encode()).to_json()


class DockerPlugin:
    """The handlers of one plugin socket: request path -> handler of the decoded body."""

    def __init__(self, networks: NetworkService, endpoints: EndpointService) -> None:
        self.networks = networks
        self.endpoints = endpoints
        self.handlers: dict[str, Handler] = {
            "/Plugin.Activate": lambda d: {"Implements": ["NetworkDriver", "IpamDriver"]},
            "/NetworkDriver.GetCapabilities": lambda d: {"Scope": "local", "ConnectivityScope": "local"},
            "/NetworkDriver.CreateNetwork": self.create_network,
            "/NetworkDriver.DeleteNetwork": self.delete_network,
            "/NetworkDriver.AllocateNetwork": lambda d: {"Options": {}},  # swarm managers only
            "/NetworkDriver.FreeNetwork": lambda d: {},
            "/NetworkDriver.CreateEndpoint": self.create_endpoint,
            "/NetworkDriver.EndpointOperInfo": self.endpoint_info,
            "/NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "/NetworkDriver.Join": self.join,
            "/NetworkDriver.Leave": lambda d: {},  # dockerd moves the interface out itself
            "/NetworkDriver.DiscoverNew": lambda d: {},
            "/NetworkDriver.DiscoverDelete": lambda d: {},
            "/NetworkDriver.ProgramExternalConnectivity": lambda d: {},
            "/NetworkDriver.RevokeExternalConnectivity": lambda d: {},
            "/IpamDriver.GetCapabilities": lambda d: {"RequiresMACAddress": False, "RequiresRequestReplay": False},
            "/IpamDriver.GetDefaultAddressSpaces": lambda d: {"LocalDefaultAddressSpace": ADDRESS_SPACE,
                                                              "GlobalDefaultAddressSpace": ADDRESS_SPACE},
            "/IpamDriver.RequestPool": self.request_pool,
            "/IpamDriver.ReleasePool": lambda d: {},
            "/IpamDriver.RequestAddress": self.request_address,
            "/IpamDriver.ReleaseAddress": self.release_address,
        }

    # the server's app: (method, path, body) -> (status, document, route label)
    def handle(self, method: str, path: str, body: bytes | None) -> tuple[int, Any, str]:
        handler = self.handlers.get(path)
        if method != "POST" or handler is None:
            # dockerd takes a 404 as "this plugin does not implement that call".
            return 404, {"Err": f"{method} {path}: not implemented by bpfnet"}, "unmatched"
        try:
            data = json.loads(body) if body else {}
            if not isinstance(data, dict):
                raise InvalidArgument("expected a JSON object")
            log.debug("docker %s %s", path, data)
            return 200, handler(data), path
        except ValueError as exc:
            message = f"{path}: the request is not JSON: {exc}"
        except BpfnetError as exc:
            message = exc.message
        except Exception as exc:
            log.exception("docker %s failed", path)
            message = f"internal error: {exc}"
        log.info("docker %s refused: %s", path, message)
        return 200, {"Err": message, "Error": message}, path

    # IPAM -------------------------------------------------------------------------------
    def request_pool(self, data: dict[str, Any]) -> dict[str, Any]:
        pool, v6 = str(data.get("Pool") or ""), bool(data.get("V6"))
        if not pool:
            raise InvalidArgument(f"bpfnet's IPAM driver needs --subnet{' for IPv6' if v6 else ''}")
        if data.get("SubPool"):
            raise InvalidArgument("bpfnet's IPAM driver does not take --ip-range")
        subnet = (parse_v6_network if v6 else parse_v4_network)(pool, "--subnet")
        return {"PoolID": f"{POOL_PREFIX}{subnet}", "Pool": str(subnet), "Data": {}}

    def request_address(self, data: dict[str, Any]) -> dict[str, Any]:
        subnet = pool_subnet(str(data.get("PoolID") or ""))
        wanted = str(data.get("Address") or "") or None
        options = data.get("Options") or {}
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            # Before the network exists: CreateNetwork makes it with this gateway.
            gateway = wanted or str(subnet.network_address + 1)
            return {"Address": f"{gateway}/{subnet.prefixlen}", "Data": {}}
        name = self._network_of(subnet)
        address = self.endpoints.hold_address(name, subnet.version, wanted)
        return {"Address": f"{address}/{subnet.prefixlen}", "Data": {}}

    def release_address(self, data: dict[str, Any]) -> dict[str, Any]:
        subnet = pool_subnet(str(data.get("PoolID") or ""))
        try:
            name = self._network_of(subnet)
        except NotFound:
            return {}  # the network (and every address of it) is gone already
        # A held address is forgotten; one an endpoint took was freed with the endpoint.
        self.endpoints.release_held(name, str(ip_interface(str(data.get("Address") or "")).ip))
        return {}

    def _network_of(self, subnet: IPv4Network | IPv6Network) -> str:
        key = "ipv4" if subnet.version == 4 else "ipv6"
        for net in self.networks.list_all():
            if (net["ipam"].get(key) or {}).get("subnet") == str(subnet):
                return str(net["name"])
        raise NotFound(f"no bpfnet network has the subnet {subnet}")

    # networks ---------------------------------------------------------------------------
    def create_network(self, data: dict[str, Any]) -> dict[str, Any]:
        network_id = str(data.get("NetworkID") or "")
        net = self.networks.create(network_request(network_id, data))
        log.info("docker network %s is bpfnet network %s (bridge %s)", network_id[:SHORT_ID], net["name"],
                 net["bridge"])
        return {}

    def delete_network(self, data: dict[str, Any]) -> dict[str, Any]:
        try:
            self.networks.remove(network_name(str(data.get("NetworkID") or "")))
        except NotFound:
            pass  # removed already: Docker may retry a delete that failed half-way
        return {}

    # endpoints --------------------------------------------------------------------------
    def create_endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        network_id, endpoint_id = str(data.get("NetworkID") or ""), str(data.get("EndpointID") or "")
        iface = data.get("Interface") or {}
        key = owner(endpoint_id)
        body: dict[str, Any] = {"name": endpoint_id[:SHORT_ID], "network": network_name(network_id),
                                "owner": key, "handoff": True}
        for field, docker_key in (("ip", "Address"), ("ip6", "AddressIPv6")):
            if iface.get(docker_key):
                body[field] = str(ip_interface(iface[docker_key]).ip)
        if iface.get("MacAddress"):
            body["mac"] = iface["MacAddress"]
        if "ip" not in body:
            raise InvalidArgument("CreateEndpoint without an IPv4 address: use --ipam-driver with bpfnet's driver")
        try:
            ep = self.endpoints.add(schemas.parse_body(schemas.EndpointCreate, json.dumps(body).encode()).to_json())
        except Conflict:
            if self.endpoints.by_owner(key) is None:
                raise
            raise Conflict(f"endpoint {endpoint_id[:SHORT_ID]} exists already") from None
        # Only what Docker did not give may be answered (else it refuses the endpoint).
        return {"Interface": {"MacAddress": ep["mac"]}} if not iface.get("MacAddress") else {}

    def _endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints.by_owner(owner(str(data.get("EndpointID") or "")))
        if ep is None:
            raise NotFound(f"endpoint {str(data.get('EndpointID'))[:SHORT_ID]} is not one of bpfnet's")
        return ep

    def endpoint_info(self, data: dict[str, Any]) -> dict[str, Any]:
        ep = self._endpoint(data)
        return {"Value": {"bpfnet.endpoint": ep["name"], "bpfnet.host_ifname": ep["host_ifname"]}}

    def join(self, data: dict[str, Any]) -> dict[str, Any]:
        ep = self._endpoint(data)
        out: dict[str, Any] = {"InterfaceName": {"SrcName": ep["ifname"], "DstPrefix": "eth"},
                               "Gateway": ep["gateway4"], "StaticRoutes": [], "DisableGatewayService": False}
        if ep.get("gateway6"):
            out["GatewayIPv6"] = ep["gateway6"]
        log.info("docker endpoint %s joins sandbox %s as %s", ep["name"], data.get("SandboxKey"), ep["ifname"])
        return out

    def delete_endpoint(self, data: dict[str, Any]) -> dict[str, Any]:
        ep = self.endpoints.by_owner(owner(str(data.get("EndpointID") or "")))
        if ep is not None:
            try:
                self.endpoints.remove(ep["name"])
            except NotFound:
                pass  # removed meanwhile
        return {}
