"""``bpfnet-cni``: bpfnet as a CNI plugin (CNI spec 1.0.0: ADD, DEL, CHECK, VERSION).

Boundary: the CNI protocol (environment, network configuration on stdin, result or
error on stdout) <-> requests to the running bpfnet daemon over its API socket
(``bpfnet.client``), so a CNI container shares the daemon's IPAM, datapath, counters
and metrics with every other endpoint. This executable never touches the kernel: the
daemon makes the veth, moves its peer into ``CNI_NETNS`` as ``CNI_IFNAME``, sets the
addresses, routes and MAC and programs the datapath; the namespace stays the runtime's.

Network configuration (keys beyond CNI's own)::

    {"cniVersion": "1.0.0", "name": "web", "type": "bpfnet",
     "network": "web",                        # the bpfnet network; default: "name"
     "socket": "/run/bpfnet/bpfnet.sock",     # the daemon's API (a path or unix:///path)
     "capabilities": {"ips": true, "mac": true}}   # optional: podman --ip/--mac

One endpoint per (container id, interface), found again by its ``owner``
``cni:<container id>:<ifname>``; its name is the container's name where the runtime
passes one (``K8S_POD_NAME`` in ``CNI_ARGS``, as podman does), else the first 12
characters of the container id, with ``-<ifname>`` unless the interface is ``eth0``.

DEL is idempotent: an endpoint that does not exist (or a daemon that never made one)
is success; the daemon removes the veth, never the namespace. CHECK compares the
previous result with the endpoint and asks the daemon what differs in the kernel.
STATUS and GC (CNI 1.1) are not implemented: Debian 12's podman 4.3 links libcni
1.1, which never calls them, and VERSION does not announce 1.1.0.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_interface
from typing import Any, TextIO

from ..client import Client, ClientError, object_path
from ..config import DEFAULT_SOCKET, check_ifname, check_name
from ..errors import BpfnetError

log = logging.getLogger(__name__)

SPEC_VERSION = "1.0.0"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Error codes of the CNI specification ("Error"); codes from 100 up are the plugin's own.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN = 11
DAEMON_REFUSED = 999  # the daemon answered with an error of its own (its message is the msg)

# The daemon's HTTP statuses -> CNI error codes: a request the daemon found invalid names a
# configuration (network, address) that cannot work; anything else is the daemon's own.
_STATUS_CODES = {400: INVALID_CONFIG, 404: INVALID_CONFIG}
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
ENDPOINT_IFNAME = "eth0"
SHORT_ID = 12  # characters of a container id in an endpoint's name, as Docker's short ids


class CniError(Exception):
    """A CNI error result: CODE, a one-line MSG and optional DETAILS."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def document(self, version: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


@dataclass(frozen=True)
class NetConf:
    """The parts of a network configuration bpfnet uses."""

    cni_version: str
    name: str
    network: str
    socket: str  # unix:///path, as bpfnet's -H
    prev_result: dict[str, Any] | None = None
    ips: tuple[str, ...] = ()  # runtimeConfig.ips: requested addresses, without prefix
    mac: str | None = None  # runtimeConfig.mac


@dataclass(frozen=True)
class Env:
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)


def parse_version(raw: bytes) -> str:
    """The cniVersion a configuration asks for (VERSION gets only this)."""
    data = _decode(raw)
    version = data.get("cniVersion", SPEC_VERSION)
    if not isinstance(version, str):
        raise CniError(DECODE_FAILURE, f"cniVersion: expected a string, got {type(version).__name__}")
    return version


def parse_config(raw: bytes) -> NetConf:
    """The network configuration from stdin; CniError INVALID_CONFIG naming the key."""
    data = _decode(raw)
    version = parse_version(raw)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"bpfnet-cni supports {', '.join(SUPPORTED_VERSIONS)}")
    name = _string(data, "name", required=True)
    kind = data.get("type")
    if kind is not None and not isinstance(kind, str):
        raise CniError(INVALID_CONFIG, "type: expected a string")
    network = _string(data, "network") or name
    try:
        check_name(network, "network")
    except BpfnetError as exc:
        raise CniError(INVALID_CONFIG, exc.message) from None
    socket = _string(data, "socket") or DEFAULT_SOCKET
    if not socket.startswith("unix://"):
        if not socket.startswith("/"):
            raise CniError(INVALID_CONFIG, f"socket: expected the path of the daemon's socket, got {socket!r}")
        socket = "unix://" + socket
    prev = data.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "prevResult: expected an object")
    runtime = data.get("runtimeConfig") or {}
    if not isinstance(runtime, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig: expected an object")
    ips = runtime.get("ips") or []
    if not isinstance(ips, list) or not all(isinstance(a, str) for a in ips):
        raise CniError(INVALID_CONFIG, "runtimeConfig.ips: expected a list of address strings")
    requested: list[str] = []
    for text in ips:
        try:
            requested.append(str(ip_interface(text).ip))
        except ValueError:
            raise CniError(INVALID_CONFIG, f"runtimeConfig.ips: {text!r} is not an IP address") from None
    mac = runtime.get("mac")
    if mac is not None and not isinstance(mac, str):
        raise CniError(INVALID_CONFIG, "runtimeConfig.mac: expected a string")
    return NetConf(cni_version=version, name=name, network=network, socket=socket, prev_result=prev,
                   ips=tuple(requested), mac=mac or None)


def parse_env(environ: Mapping[str, str]) -> Env:
    """CNI_COMMAND and, for ADD/DEL/CHECK, the container's id, namespace, interface and args."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        return Env(command)
    cid = environ.get("CNI_CONTAINERID", "")
    if not CONTAINER_ID.fullmatch(cid):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {cid!r} is not a container id")
    ifname = environ.get("CNI_IFNAME", "")
    try:
        check_ifname(ifname, "CNI_IFNAME")
    except BpfnetError as exc:
        raise CniError(INVALID_ENVIRONMENT, exc.message) from None
    netns = environ.get("CNI_NETNS", "")
    if command != "DEL" and not netns.startswith("/"):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns!r} is not the path of a network namespace")
    args: dict[str, str] = {}
    for item in filter(None, environ.get("CNI_ARGS", "").split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS: {item!r} is not KEY=VALUE")
        args[key] = value
    return Env(command, cid, netns, ifname, args)


def owner(env: Env) -> str:
    """The key the daemon stores for this container's interface."""
    return f"cni:{env.container_id}:{env.ifname}"


def endpoint_name(env: Env) -> str:
    """A readable endpoint name: the container's name if the runtime gives a valid one,
    else its short id; other interfaces than eth0 get their name appended."""
    base = env.args.get("K8S_POD_NAME", "")
    try:
        check_name(base, "name")
    except BpfnetError:
        base = env.container_id[:SHORT_ID]
    if env.ifname != ENDPOINT_IFNAME:
        base = f"{base[:63 - 1 - len(env.ifname)]}-{env.ifname}"
    return base[:63]


def endpoint_request(conf: NetConf, env: Env, name: str) -> dict[str, Any]:
    """The body of POST /v1/endpoints for an ADD."""
    body: dict[str, Any] = {"name": name, "network": conf.network, "netns_path": env.netns,
                            "ifname": env.ifname, "owner": owner(env)}
    for text in conf.ips:
        family = ip_address(text).version
        key = "ip" if family == 4 else "ip6"
        if key in body:
            raise CniError(INVALID_CONFIG, f"runtimeConfig.ips: more than one IPv{family} address; "
                                           "a bpfnet endpoint has one of each family")
        body[key] = text
    if conf.mac:
        body["mac"] = conf.mac
    return body


def result(version: str, ep: dict[str, Any]) -> dict[str, Any]:
    """The CNI result of an endpoint as the daemon describes it."""
    legacy = version != SPEC_VERSION  # 0.3.x/0.4.0 name each address's family
    ips: list[dict[str, Any]] = [{"address": ep["ipv4"], "gateway": ep["gateway4"], "interface": 1}]
    routes = [{"dst": "0.0.0.0/0", "gw": ep["gateway4"]}]
    for address in ep.get("ipv6") or []:
        entry: dict[str, Any] = {"address": address, "interface": 1}
        gateway6 = ep.get("gateway6")
        if gateway6 and not ip_address(gateway6).is_link_local:
            entry["gateway"] = gateway6
        ips.append(entry)
    if ep.get("ipv6") and ep.get("gateway6"):
        routes.append({"dst": "::/0", "gw": ep["gateway6"]})
    if legacy:
        for entry in ips:
            entry["version"] = "6" if ":" in entry["address"] else "4"
    return {
        "cniVersion": version,
        "interfaces": [{"name": ep["host_ifname"]},
                       {"name": ep["ifname"], "mac": ep["mac"], "sandbox": ep["netns"]}],
        "ips": ips,
        "routes": routes,
        "dns": dns_result(ep.get("dns")),
    }


def dns_result(dns: dict[str, Any] | None) -> dict[str, Any]:
    """The result's DNS: bpfnet's embedded resolver (the network's gateway addresses) with the
    endpoint's search domains and options, which the runtime writes into the container's
    resolv.conf (podman does); empty where the daemon runs no resolver."""
    if not dns or not dns.get("nameservers"):
        return {}
    out: dict[str, Any] = {"nameservers": list(dns["nameservers"])}
    if dns.get("search"):
        out["search"] = list(dns["search"])
    if dns.get("options"):
        out["options"] = list(dns["options"])
    return out


def check_against(prev: dict[str, Any], ep: dict[str, Any], ifname: str) -> list[str]:
    """What the previous result says about IFNAME that the endpoint contradicts."""
    problems = []
    mine = {ep["ipv4"], *(ep.get("ipv6") or [])}
    interfaces = prev.get("interfaces") or []
    for entry in prev.get("ips") or []:
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces) and interfaces[index].get("name") != ifname:
            continue
        if entry.get("address") not in mine:
            problems.append(f"address {entry.get('address')} of the previous result is not the endpoint's")
    for entry in interfaces:
        if entry.get("name") == ifname and entry.get("mac") and str(entry["mac"]).lower() != ep["mac"]:
            problems.append(f"MAC {entry['mac']} of the previous result is not the endpoint's ({ep['mac']})")
    return problems


class Plugin:
    """One invocation: ENV and stdin in, (exit status, document for stdout or None) out."""

    def __init__(self, env: Env, stdin: bytes, client: Callable[[str], Client] = Client) -> None:
        self.env = env
        self.stdin = stdin
        self.make_client = client

    def run(self) -> tuple[int, dict[str, Any] | None]:
        version = SPEC_VERSION
        try:
            if self.stdin.strip():
                asked = parse_version(self.stdin)
                version = asked if asked in SUPPORTED_VERSIONS else SPEC_VERSION
            if self.env.command == "VERSION":
                return 0, {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
            conf = parse_config(self.stdin)
            client = self.make_client(conf.socket)
            if self.env.command == "ADD":
                return 0, self.add(conf, client)
            if self.env.command == "DEL":
                self.delete(client)
                return 0, None
            self.check(conf, client)
            return 0, None
        except CniError as exc:
            log.warning("%s %s: %s", self.env.command, self.env.container_id, exc.msg)
            return 1, exc.document(version)

    def _find(self, client: Client) -> dict[str, Any] | None:
        key = owner(self.env)
        endpoints = _call(client.get, "/v1/endpoints")
        return next((ep for ep in endpoints if ep.get("owner") == key), None)

    def add(self, conf: NetConf, client: Client) -> dict[str, Any]:
        existing = self._find(client)
        if existing is not None:
            raise CniError(DAEMON_REFUSED, f"container {self.env.container_id} already has {self.env.ifname} "
                                           f"(endpoint {existing['name']}); DEL it first")
        name = endpoint_name(self.env)
        body = endpoint_request(conf, self.env, name)
        try:
            ep = client.post("/v1/endpoints", body)
        except ClientError as exc:
            if exc.status != 409 or "already exists" not in str(exc) or name.endswith(self.env.container_id[:SHORT_ID]):
                raise _cni_error(exc) from None
            # Another endpoint has this container's name (a container of an earlier run): its id tells them apart.
            body["name"] = f"{name[:63 - 1 - SHORT_ID]}-{self.env.container_id[:SHORT_ID]}"
            ep = _call(client.post, "/v1/endpoints", body)
        log.info("ADD %s %s: endpoint %s %s", self.env.container_id, self.env.ifname, ep["name"], ep["ipv4"])
        return result(conf.cni_version, ep)

    def delete(self, client: Client) -> None:
        ep = self._find(client)
        if ep is None:
            return  # nothing of ours: DEL is idempotent
        try:
            client.delete(object_path("endpoints", ep["name"]))
        except ClientError as exc:
            if exc.status != 404:  # removed meanwhile
                raise _cni_error(exc) from None
        log.info("DEL %s %s: endpoint %s removed", self.env.container_id, self.env.ifname, ep["name"])

    def check(self, conf: NetConf, client: Client) -> None:
        if conf.prev_result is None:
            raise CniError(INVALID_CONFIG, "CHECK needs prevResult")
        ep = self._find(client)
        if ep is None:
            raise CniError(UNKNOWN_CONTAINER, f"container {self.env.container_id} has no bpfnet endpoint "
                                              f"for {self.env.ifname}")
        problems = check_against(conf.prev_result, ep, self.env.ifname)
        if ep["netns"] != self.env.netns:
            problems.append(f"the endpoint is in namespace {ep['netns']}, not {self.env.netns}")
        problems += _call(client.get, object_path("endpoints", ep["name"]) + "/check")["problems"]
        if problems:
            raise CniError(DAEMON_REFUSED, f"endpoint {ep['name']}: {problems[0]}", "; ".join(problems))


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ClientError as exc:
        raise _cni_error(exc) from None


def _cni_error(exc: ClientError) -> CniError:
    if exc.status == 0:  # no answer: the daemon is down or restarting
        return CniError(TRY_AGAIN, str(exc))
    return CniError(_STATUS_CODES.get(exc.status, DAEMON_REFUSED), str(exc), f"bpfnet daemon: HTTP {exc.status}")


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CniError(DECODE_FAILURE, f"the network configuration is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CniError(DECODE_FAILURE, "the network configuration is not a JSON object")
    return data


def _string(data: dict[str, Any], key: str, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise CniError(INVALID_CONFIG, f"{key}: missing")
        return ""
    if not isinstance(value, str) or not value:
        raise CniError(INVALID_CONFIG, f"{key}: expected a non-empty string")
    return value


def main(environ: Mapping[str, str] | None = None, stdin: TextIO | None = None,
         stdout: TextIO | None = None) -> int:
    """The executable: result or error JSON on stdout, log lines on stderr."""
    environ = os.environ if environ is None else environ
    logging.basicConfig(level=os.environ.get("BPFNET_CNI_LOG_LEVEL", "WARNING").upper(),
                        format="bpfnet-cni: %(message)s", stream=sys.stderr)
    out = stdout or sys.stdout
    raw = sys.stdin.buffer.read() if stdin is None else stdin.read().encode()
    doc: dict[str, Any] | None
    try:
        env = parse_env(environ)
    except CniError as exc:
        status, doc = 1, exc.document(SPEC_VERSION)
    else:
        status, doc = Plugin(env, raw, client=lambda host: Client(host, timeout=60.0)).run()
    if doc is not None:
        out.write(json.dumps(doc) + "\n")
    out.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
