"""The API's declared request bodies, their parser, and the OpenAPI document made from them.

Boundary: pure, no I/O. ``parse_body(Model, raw_bytes)`` turns a request body into a validated
model or raises ``InvalidArgument`` with one line naming the field and the problem; ``openapi()``
describes every route the daemon serves, its request bodies taken from the same models, so the
document cannot drift from what is enforced. ``docs/openapi.json`` is ``openapi_text()``
(regenerate with ``scripts/openapi``; a test compares them).

Why pydantic v2 (strict mode) rather than msgspec: strict mode refuses exactly what issue 10 found
accepted ("false" as true, 1500.5 as 1500, a number as a CIDR); the JSON Schema of the same
declarations is 2020-12, i.e. OpenAPI 3.1, so the document is generated rather than written; field
and model validators let the address rules of ``bpfnet.config`` run inside validation, so the API
and the daemon's flags share one implementation; and it is widely used and maintained. msgspec
decodes faster, but a request body here is a few hundred bytes next to netlink work taking
milliseconds, and its schema export and custom validation are thinner.

Parsing: bodies are decoded by pydantic-core's JSON parser (``from_json``), which stops at 200
levels of nesting with an error instead of recursing like ``json.loads`` (100000 nested arrays gave
a RecursionError and a 500; every body here is one flat object) and, with ``allow_inf_nan=False``,
refuses ``Infinity`` and ``NaN``. Callers hand over the raw bytes: parsing them first with
``json.loads`` would bring both problems back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError, from_json

from . import __version__
from .addressing import parse_mac
from .config import (
    DRIVER_NAME_RE,
    IFNAME_MAX,
    IFNAME_PATTERN,
    MTU_MAX,
    MTU_MIN,
    NAME_MAX,
    NAME_PATTERN,
    NAME_RULE,
    V4_CIDR_HINT,
    V6_CIDR_HINT,
    NetworkConfig,
    check_driver_name,
    check_ifname,
    check_name,
    check_parent,
    json_type,
    parse_v4,
    parse_v4_network,
    parse_v6,
    parse_v6_network,
)
from .dns import rules as dns_rules
from .dns.rules import LIST_MAX
from .errors import InvalidArgument
from .outside.ports import MAX_PUBLISH, parse_spec

# Longest address texts: "255.255.255.255/32" is 18 characters, a full IPv6 CIDR 43. The limits
# leave room for spelling variants while keeping every string in a body bounded.
ADDRESS_MAX = 64
MAC_PATTERN = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
ERROR_TYPE = "bpfnet"  # pydantic error type of the messages written by bpfnet.config's checks

M = TypeVar("M", bound=BaseModel)


def _run(parse: Callable[..., object], value: str, what: str, *args: Any) -> None:
    """Run a bpfnet.config check; its InvalidArgument becomes a validation error with its message."""
    try:
        parse(value, what, *args)
    except InvalidArgument as exc:
        raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": exc.message}) from None


def _check(parse: Callable[..., object], *args: Any) -> AfterValidator:
    """The check on a field, named as in the body."""

    def run(value: str, info: ValidationInfo) -> str:
        _run(parse, value, str(info.field_name), *args)
        return value

    return AfterValidator(run)


def _mac(value: str) -> str:
    try:
        return parse_mac(value)
    except InvalidArgument as exc:
        raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": f"mac: {exc.message}"}) from None


def _field(what: str, pattern: str | None = None, max_length: int = ADDRESS_MAX, **kw: Any) -> Any:
    return Field(min_length=1, max_length=max_length, pattern=f"^{pattern}$" if pattern else None,
                 description=what, **kw)


def _scope(parse: Callable[..., object]) -> BeforeValidator:
    """Before the pattern (which has no '%'): a scoped IPv6 address gets config's own message."""

    def run(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and "%" in value:
            _run(parse, value, str(info.field_name))
        return value

    return BeforeValidator(run)


# Patterns only shape the text (and let a fuzzer make plausible values); what an address may be
# is decided by the bpfnet.config checks after them.
_DOTTED = r"[0-9]{1,3}(\.[0-9]{1,3}){3}"
V4_ADDRESS_PATTERN = _DOTTED
V4_CIDR_PATTERN = rf"{_DOTTED}/([0-9]{{1,2}}|{_DOTTED})"
V6_ADDRESS_PATTERN = r"[0-9A-Fa-f:.]{2,45}"
V6_CIDR_PATTERN = rf"{V6_ADDRESS_PATTERN}/[0-9]{{1,3}}"
_V6_ADDRESS = "an IPv6 address string like fd00:30::1, without a %scope"
Name = Annotated[str, _field(f"a name: {NAME_RULE}", NAME_PATTERN, NAME_MAX, examples=["web1"])]
IfName = Annotated[str, _field("a Linux interface name, at most 15 characters", IFNAME_PATTERN, IFNAME_MAX,
                               examples=["br-web"])]
DriverName = Annotated[str, _field("a network driver's name, like bridge or overlay", DRIVER_NAME_RE.pattern, 32,
                                   examples=["bridge"])]
Mac = Annotated[str, _field("a unicast MAC address like 02:42:ac:11:00:02", MAC_PATTERN, 17),
                AfterValidator(_mac)]


def _publish(value: str) -> str:
    try:
        parse_spec(value)
    except InvalidArgument as exc:
        raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": f"publish: {exc.message}"}) from None
    return value


PUBLISH_PATTERN = r"(\[[0-9A-Fa-f:.]{2,45}\]:|[0-9.]{7,15}:)?(([0-9]{1,5}(-[0-9]{1,5})?)?:)?[0-9]{1,5}(-[0-9]{1,5})?(/[A-Za-z]{1,8})?"
Publish = Annotated[str, _field("[HOST_IP:]HOST_PORT:ENDPOINT_PORT[/tcp|/udp], ranges as 8000-8003:80-83, "
                                "an IPv6 host address in brackets", PUBLISH_PATTERN, 80,
                                examples=["8080:80", "127.0.0.1:5353:53/udp"]),
                    AfterValidator(_publish)]
V4Net = Annotated[str, _field(f"{V4_CIDR_HINT}; never loopback, link-local, multicast, reserved or "
                              "0.0.0.0/8 space", V4_CIDR_PATTERN, examples=["172.30.0.0/16"]),
                  _check(parse_v4_network)]
V6Net = Annotated[str, _field(f"{V6_CIDR_HINT}; never in ::/8, link-local, site-local or multicast space",
                              V6_CIDR_PATTERN, examples=["fd00:30::/64"]),
                  _scope(parse_v6_network), _check(parse_v6_network)]
V4 = Annotated[str, _field("an IPv4 address string like 172.30.0.1", V4_ADDRESS_PATTERN,
                           examples=["172.30.0.1"]), _check(parse_v4)]
V6 = Annotated[str, _field(_V6_ADDRESS, V6_ADDRESS_PATTERN, examples=["fd00:30::1"]),
               _scope(parse_v6), _check(parse_v6)]
V6Gateway = Annotated[str, _field(_V6_ADDRESS + " (link-local allowed)", V6_ADDRESS_PATTERN,
                                  examples=["fe80::1"]), _scope(parse_v6), _check(parse_v6, True)]


DnsServer = Annotated[str, _field("an IPv4 or IPv6 address of an upstream nameserver", r"[0-9A-Fa-f:.]{2,45}",
                                  examples=["192.0.2.53"]), _check(dns_rules.check_dns_address)]
SearchDomain = Annotated[str, _field("a domain name, or '.' for none", r"[A-Za-z0-9_.-]+", 254,
                                     examples=["example.com"]),
                         _check(dns_rules.check_search_domain)]
DnsOption = Annotated[str, _field("a resolv.conf option", r"[A-Za-z0-9_.:+-]+", dns_rules.OPTION_MAX,
                                  examples=["ndots:2"]), _check(dns_rules.check_dns_option)]
DnsName = Annotated[str, _field("a DNS name: labels of letters, digits, '-', '_'", r"[A-Za-z0-9_.-]+", 254,
                                examples=["db"]), _check(dns_rules.check_domain)]
Hostname = Annotated[str, _field("a host name of at most 64 characters", r"[A-Za-z0-9_.-]+", 254,
                                 examples=["web1.example"]), _check(dns_rules.check_hostname)]
NetnsPath = Annotated[str, _field("the absolute path of a network namespace's file, like /run/netns/NAME or "
                                  "/proc/PID/ns/net", r"/[^\x00]*", 4096, examples=["/run/netns/netns-1"])]
Owner = Annotated[str, _field("printable ASCII without spaces", r"[!-~]+", 256, examples=["cni:4f2a:eth0"])]


class _Body(BaseModel):
    # strict: no "false" -> True, no 1500.5 -> 1500, no number where a string is expected.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class NetworkCreate(_Body):
    """POST /v1/networks. Null or a missing key means "not given"."""

    name: Name
    bridge: IfName | None = Field(None, description="default: br-<name>, or br-<hash> when that is too long")
    subnet4: V4Net | None = Field(None, description="default: the first free subnet of the daemon's address pools "
                                                     "(--default-address-pool), or the address of an existing "
                                                     "bridge bpfnet did not make")
    gateway4: V4 | None = Field(None, description="needs subnet4; default: the subnet's first address")
    ip_range4: V4Net | None = Field(None, description="where endpoint addresses come from; needs subnet4, inside it")
    ipv6: bool = Field(False, description="IPv6 on the network (implied by subnet6); without subnet6 the network "
                                          "gets the next free /64 of this host's ULA prefix")
    subnet6: V6Net | None = None
    gateway6: V6 | None = Field(None, description="needs subnet6; default: its first address")
    ip_range6: V6Net | None = Field(None, description="inside subnet6")
    default_gateway4: V4 | None = Field(None, description="the endpoints' default route, if not the bridge")
    default_gateway6: V6Gateway | None = Field(None, description="the endpoints' IPv6 default route; needs IPv6")
    mtu: int | None = Field(None, ge=MTU_MIN, le=MTU_MAX, description="at least 1280 with IPv6; default 1500, "
                            "on an overlay network the uplink's MTU - 50 (VXLAN's overhead)")
    icc: bool = Field(True, description="inter-container communication on the bridge")
    internal: bool = Field(False, description="no traffic leaves or enters the network (enforced by the "
                                              "datapath); no masquerading, no published ports")
    masquerade: bool = Field(True, description="masquerade traffic from the network leaving the host "
                                               "(with the daemon's --ip-masq / --ip6-masq)")
    driver: DriverName = Field("bridge", description="the network driver: bridge (one host), overlay (every "
                               "host of the cluster, VXLAN between them; needs --cluster-store), macvlan, ipvlan "
                               "(endpoints on a physical interface: needs parent)")
    vni: int | None = Field(None, ge=1, le=(1 << 24) - 1, description="overlay networks: the VXLAN network "
                            "identifier (default: the lowest free one from 4096)")
    parent: IfName | None = Field(None, description="macvlan, ipvlan: the physical interface, IFACE or IFACE.VLAN "
                                  "(an 802.1q sub-interface, made and removed by bpfnet)")
    ipvlan_mode: Literal["l2", "l3"] | None = Field(None, description="ipvlan: l2 (default) or l3")
    host_prefix: int | None = Field(None, ge=1, le=30, description="routed: the prefix length of each node's "
                                    "block of subnet4 (default 24)")
    host_prefix6: int | None = Field(None, ge=1, le=120, description="routed: the prefix length of each node's "
                                     "block of subnet6 (default 80)")

    _config: NetworkConfig | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _whole(self) -> NetworkCreate:
        # Cross-field rules (gateway inside the subnet, ranges inside subnets, gateway6 needs
        # subnet6, IPv6 MTU) live in NetworkConfig, which stored networks and flags go through too.
        data = self.model_dump(exclude_none=True)
        try:
            if self.subnet4 is None:
                for key in ("gateway4", "ip_range4", "default_gateway4"):
                    if key in data:
                        raise InvalidArgument(f"{key} needs subnet4 (without it the daemon picks the subnet)")
                # Every other rule, checked now (400) on a stand-in for the subnet the service picks.
                NetworkConfig.from_json({**data, "subnet4": _STAND_IN})
            else:
                self._config = NetworkConfig.from_json(data)
        except InvalidArgument as exc:
            raise PydanticCustomError(ERROR_TYPE, "{message}", {"message": exc.message}) from None
        return self

    def config(self) -> NetworkConfig | None:
        """The validated network (bridge defaulted), or None when the daemon picks the subnet."""
        return self._config

    def to_json(self) -> dict[str, Any]:
        """The network as NetworkService.create takes it: validated and defaulted when complete,
        else the fields given (the service picks the subnet)."""
        if self._config is not None and self.driver == "bridge":
            return self._config.to_json()
        return self.model_dump(exclude_none=True)  # the driver completes it (overlay: VNI, MTU)


_STAND_IN = "10.0.0.0/24"  # any valid subnet: only the other fields are being checked


class EndpointCreate(_Body):
    """POST /v1/endpoints. Null or a missing key means "not given"."""

    name: Name
    network: Name | None = Field(None, description="default: the default network")
    ip: V4 | None = Field(None, description="a static IPv4 address inside the network's subnet")
    ip6: V6 | None = Field(None, description="a static IPv6 address inside the network's subnet6")
    mac: Mac | None = Field(None, description="default: 02:42 + the IPv4 address")
    netns: Name | None = Field(None, description="adopt this existing namespace instead of making one")
    publish: list[Publish] | None = Field(None, max_length=MAX_PUBLISH,
                                          description="published ports, as docker run -p")
    netns_path: NetnsPath | None = Field(None, description="a namespace someone else owns (a container "
                                         "runtime's), by its file; never deleted by bpfnet; excludes netns")
    ifname: IfName | None = Field(None, description="the endpoint's interface in its namespace; default eth0")
    owner: Owner | None = Field(None, description="the runtime's key for this endpoint, e.g. "
                                "cni:<container id>:<ifname>; unique")
    dns: list[DnsServer] | None = Field(None, max_length=LIST_MAX, description="upstream nameservers for this "
                                        "endpoint, replacing the daemon's --dns / resolv.conf ones")
    dns_search: list[SearchDomain] | None = Field(None, max_length=LIST_MAX, description="search domains of "
                                                  "its resolv.conf ('.' alone: none)")
    dns_opt: list[DnsOption] | None = Field(None, max_length=LIST_MAX, description="options of its resolv.conf")
    aliases: list[DnsName] | None = Field(None, max_length=LIST_MAX, description="more names it answers to in "
                                          "its network's DNS; never another endpoint's name")
    hostname: Hostname | None = Field(None, description="its hostname in DNS and its hosts file; default its name")
    handoff: bool | None = Field(None, description="leave the veth's peer in the managed namespace as ifname "
                                 "(default bnv<id>p) for the runtime to move into its container and configure "
                                 "(Docker's remote driver model); excludes netns and netns_path")

    def to_json(self) -> dict[str, Any]:
        """The fields given, as EndpointService.add takes them."""
        return self.model_dump(exclude_none=True)


# --- parsing ---------------------------------------------------------------------------------
_EXPECT = {
    "name": f"a name of {NAME_RULE}",
    "network": f"a network name of {NAME_RULE}",
    "netns": f"a namespace name of {NAME_RULE}",
    "netns_path": "an absolute path like /run/netns/NAME",
    "ifname": "an interface name of 1-15 letters, digits, '_', '.', '-'",
    "owner": "a string of printable ASCII without spaces",
    "handoff": "true or false",
    "bridge": "an interface name of 1-15 letters, digits, '_', '.', '-'",
    "subnet4": V4_CIDR_HINT,
    "ip_range4": V4_CIDR_HINT,
    "subnet6": V6_CIDR_HINT,
    "ip_range6": V6_CIDR_HINT,
    "gateway4": "an IPv4 address string like 172.30.0.1",
    "default_gateway4": "an IPv4 address string like 172.30.0.1",
    "ip": "an IPv4 address string like 172.30.0.2",
    "gateway6": "an IPv6 address string like fd00:30::1",
    "default_gateway6": "an IPv6 address string like fd00:30::1",
    "ip6": "an IPv6 address string like fd00:30::2",
    "mac": "a MAC address string like 02:42:ac:11:00:02",
    "mtu": f"an integer from {MTU_MIN} to {MTU_MAX}",
    "ipv6": "true or false",
    "icc": "true or false",
    "internal": "true or false",
    "masquerade": "true or false",
    "driver": "a driver name like bridge or overlay",
    "parent": "an interface name like eth0, or eth0.10 for VLAN 10 on it",
    "vni": "an integer from 1 to 16777215",
    "publish": "a list of strings like 8080:80 or 127.0.0.1:5353:53/udp",
    "dns": "a list of IP address strings",
    "dns_search": "a list of domain names",
    "dns_opt": "a list of resolv.conf options like ndots:2",
    "aliases": "a list of DNS names",
    "hostname": "a host name",
}


def _shown(value: Any) -> str:
    """A JSON value for a message: its type, and the value itself when it is short."""
    kind = json_type(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = repr(value)
        if len(text) > 40:
            text = text[:37] + "..."
        return f"{kind} ({text})" if isinstance(value, str) else text
    return kind


# A string that fails a field's pattern or length gets the message of the bpfnet.config check
# for that field (the same words as the daemon's flags and the stored-config path use).
_EXPLAIN: dict[str, Callable[[str, str], object]] = {
    "name": check_name, "network": lambda v, w: check_name(v, "network name"),
    "netns": lambda v, w: check_name(v, "netns name"), "bridge": lambda v, w: check_ifname(v, "bridge name"),
    "ifname": lambda v, w: check_ifname(v, "ifname"),
    "subnet4": parse_v4_network, "ip_range4": parse_v4_network, "subnet6": parse_v6_network,
    "ip_range6": parse_v6_network, "gateway4": parse_v4, "default_gateway4": parse_v4, "ip": parse_v4,
    "gateway6": parse_v6, "default_gateway6": parse_v6, "ip6": parse_v6, "mac": lambda v, w: parse_mac(v),
    "publish": lambda v, w: parse_spec(v), "driver": lambda v, w: check_driver_name(v),
    "parent": lambda v, w: check_parent(v),
    "dns": lambda v, w: dns_rules.check_dns_address(v, "dns"),
    "dns_search": lambda v, w: dns_rules.check_search_domain(v, "dns_search"),
    "dns_opt": lambda v, w: dns_rules.check_dns_option(v, "dns_opt"),
    "aliases": lambda v, w: dns_rules.check_domain(v, "aliases"),
    "hostname": lambda v, w: dns_rules.check_hostname(v, "hostname"),
}
_STRING_SHAPE = ("string_pattern_mismatch", "string_too_long", "string_too_short")


def _explained(model: type[BaseModel], field: str, value: Any) -> str | None:
    """The config check's own message for VALUE, if it refuses it too."""
    check = _EXPLAIN.get(field)
    if check is None or not isinstance(value, str) or len(value) > 100:
        return None  # a long value is shown cut short by the generic message
    what = {"NetworkCreate": "network name", "EndpointCreate": "endpoint name"}.get(model.__name__, field)
    what = what if field == "name" else field
    try:
        check(value, what)
    except InvalidArgument as exc:
        return exc.message if field in exc.message else f"{field}: {exc.message}"
    return None


def describe_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first problem of a validation error of MODEL, naming the field."""
    errors = exc.errors(include_url=False)
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and e["loc"]]
    if unknown:
        return f"unknown field(s) {', '.join(repr(k) for k in sorted(unknown))}"
    err = errors[0]
    loc = ".".join(str(part) for part in err["loc"])
    field = str(err["loc"][0]) if err["loc"] else ""
    kind = err["type"]
    if kind == ERROR_TYPE:
        message = str(err["ctx"]["message"]) if err.get("ctx") else err["msg"]
    elif kind == "missing":
        message = f"{loc}: missing (required)"
    elif kind in ("model_type", "model_attributes_type", "dict_type"):
        message = f"expected a JSON object in the request body, got {json_type(err['input'])}"
    else:
        explained = _explained(model, field, err["input"]) if kind in _STRING_SHAPE else None
        expected = _EXPECT.get(field, err["msg"].lower())
        message = explained or f"{loc}: expected {expected}, got {_shown(err['input'])}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return message.replace("\n", "\\n")  # one line, whatever the input held


def parse_json(raw: bytes | None) -> Any:
    """Decode a request body: depth-limited, no Infinity/NaN; InvalidArgument on anything else."""
    if not raw:
        raise InvalidArgument("expected a JSON object in the request body, got nothing")
    try:
        return from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        reason = str(exc)
        if "recursion limit" in reason:
            reason = f"nested too deeply ({reason})"
        elif b"Infinity" in raw or b"NaN" in raw:
            reason += " (Infinity and NaN are not JSON numbers)"
        raise InvalidArgument(f"request body is not valid JSON: {reason}".replace("\n", " ")) from None


def parse_body(model: type[M], raw: bytes | None) -> M:
    """RAW (the request body's bytes) validated against MODEL, or InvalidArgument with one line."""
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise InvalidArgument(f"expected a JSON object in the request body, got {json_type(data)}")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise InvalidArgument(describe_error(exc, model)) from None


# --- documents the API returns (loose: the top level typed, nested parts open) --------------
class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDoc(BaseModel):
    """Every error: one line of JSON, then a newline."""

    model_config = ConfigDict(extra="forbid", title="Error")
    error: str


class InfoDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="Info")
    version: str
    kernel: str
    hostname: str
    host_netns: str | None
    state_dir: str
    listeners: list[str]
    metrics_url: str | None
    datapath: dict[str, Any]
    networks: int
    endpoints: int


class StatsEndpointDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="StatsEndpoint")
    name: str
    network: str
    counters: dict[str, Any] | None


class StatsDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="Stats")
    mode: str
    endpoints: list[StatsEndpointDoc]


class NetworkDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="Network")
    name: str
    id: int
    default: bool
    driver: str = Field("bridge", description="the network driver (network create --driver)")
    scope: str = Field("local", description="local: this host only; global: every host of the cluster")
    bridge: str
    bridge_ifindex: int | None
    mtu: int
    icc: bool
    ipv6: bool
    ipam: dict[str, Any]
    endpoints: list[str]
    config: dict[str, Any]


class EndpointDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="Endpoint")
    name: str
    id: int
    network: str
    netns: str
    adopted_netns: bool
    ifname: str = Field("eth0", description="the endpoint's interface inside netns")
    owner: str | None = Field(None, description="the runtime's key (CNI, Docker) for endpoints it made")
    handoff: bool = Field(False, description="the peer is the runtime's to move and configure")
    host_ifname: str
    host_ifindex: int | None
    mac: str
    ipv4: str
    gateway4: str
    state: str
    created: float
    ipv6: list[str] = Field(default_factory=list, description="only on IPv6 networks")
    link_local: str | None = Field(None, description="only on IPv6 networks")
    gateway6: str | None = Field(None, description="only on IPv6 networks")
    published: list[dict[str, Any]] = Field(default_factory=list, description="published ports: host_ip (null: "
                                            "every address), host_port, endpoint_port, proto")
    dns: dict[str, Any] | None = Field(None, description="hostname, aliases, the resolv.conf it gets (nameservers: "
                                       "the embedded resolver; upstreams, search, options) and its files")


class NodeDoc(_Doc):
    model_config = ConfigDict(extra="allow", title="Node")
    name: str
    address: str | None = Field(description="its --advertise-addr (the VTEP)")
    state: str = Field(description="alive: its lease is held; down: expired, its endpoints kept in etcd")
    self: bool = Field(description="this daemon's node")
    endpoints: int


class EndpointCheckDoc(_Doc):
    model_config = ConfigDict(title="EndpointCheck")
    name: str
    ok: bool
    problems: list[str] = Field(description="one line per difference; empty when ok")


# --- the OpenAPI document --------------------------------------------------------------------
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No Content: removed",
    400: "Bad Request: the body or a name is invalid",
    403: "Forbidden: the default network cannot be removed",
    404: "Not Found: no such network, endpoint or namespace",
    409: "Conflict: already exists, overlaps, in use, or has endpoints",
    413: "Payload Too Large: the body is over the limit",
    503: "Service Unavailable: the cluster store (etcd) cannot be reached; nothing was changed",
    507: "Insufficient Storage: a limit is reached (addresses, endpoint slots, networks, bridge ports, "
         "the disk holding the state)",
}
_MODELS: tuple[type[BaseModel], ...] = (NetworkCreate, EndpointCreate, ErrorDoc, InfoDoc, StatsDoc,
                                        NetworkDoc, EndpointDoc, EndpointCheckDoc, NodeDoc)
Method = Literal["get", "post", "delete"]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.model_config.get('title') or model.__name__}"}


def _responses(ok: int, doc: dict[str, Any] | None, errors: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if doc is None:
        out[str(ok)] = {"description": _STATUS_TEXT[ok]}
    else:
        out[str(ok)] = {"description": _STATUS_TEXT[ok], "content": {"application/json": {"schema": doc}}}
    for status in errors:
        out[str(status)] = {"description": _STATUS_TEXT[status],
                            "content": {"application/json": {"schema": _ref(ErrorDoc)}}}
    return out


def _operation(op_id: str, summary: str, ok: int, doc: dict[str, Any] | None,
               errors: tuple[int, ...] = (), body: type[BaseModel] | None = None,
               named: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary}
    if named:
        op["parameters"] = [{
            "name": "name", "in": "path", "required": True, "description": f"the {named}'s name",
            "schema": {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": f"^{NAME_PATTERN}$"},
        }]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    op["responses"] = _responses(ok, doc, errors)
    return op


def _list_of(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": _ref(model)}


def openapi() -> dict[str, Any]:
    """The API's OpenAPI 3.1 document (what GET /v1/openapi.json serves)."""
    schemas: dict[str, Any] = {}
    for model in _MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.model_config.get("title") or model.__name__] = schema
    paths: dict[str, dict[Method, Any]] = {
        "/v1/info": {"get": _operation("getInfo", "Daemon, kernel, listeners and datapath", 200, _ref(InfoDoc))},
        "/v1/stats": {"get": _operation("getStats", "Datapath counters per endpoint", 200, _ref(StatsDoc))},
        "/v1/openapi.json": {"get": _operation("getOpenapi", "This document", 200, {"type": "object"})},
        "/v1/nodes": {"get": _operation("listNodes", "The cluster's nodes (--cluster-store)", 200, _list_of(NodeDoc),
                                        (400, 503))},
        "/v1/nodes/{name}": {
            "delete": _operation("removeNode", "Forget a node that is gone for good (down): its endpoints' records, "
                                 "address leases and routed blocks leave the cluster store", 204, None,
                                 (400, 404, 409, 503), named="node"),
        },
        "/v1/networks": {
            "get": _operation("listNetworks", "Every network", 200, _list_of(NetworkDoc)),
            "post": _operation("createNetwork", "Create a network (a bridge)", 201, _ref(NetworkDoc),
                               (400, 409, 413, 507), body=NetworkCreate),
        },
        "/v1/networks/{name}": {
            "get": _operation("inspectNetwork", "One network", 200, _ref(NetworkDoc), (400, 404),
                              named="network"),
            "delete": _operation("removeNetwork", "Remove a network without endpoints", 204, None,
                                 (400, 403, 404, 409), named="network"),
        },
        "/v1/endpoints": {
            "get": _operation("listEndpoints", "Every endpoint", 200, _list_of(EndpointDoc)),
            "post": _operation("addEndpoint", "Add an endpoint (a namespace joined by a veth pair)", 201,
                               _ref(EndpointDoc), (400, 404, 409, 413, 507), body=EndpointCreate),
        },
        "/v1/endpoints/{name}/check": {
            "get": _operation("checkEndpoint", "What differs between an endpoint and the kernel (nothing is "
                              "repaired)", 200, _ref(EndpointCheckDoc), (400, 404), named="endpoint"),
        },
        "/v1/endpoints/{name}": {
            "get": _operation("inspectEndpoint", "One endpoint", 200, _ref(EndpointDoc), (400, 404),
                              named="endpoint"),
            "delete": _operation("removeEndpoint", "Remove an endpoint", 204, None, (400, 404),
                                 named="endpoint"),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bpfnet",
            "version": __version__,
            "description": "Docker-style bridge networking with an eBPF fast path. Errors are one line "
                           "of JSON, {\"error\": message}, followed by a newline.",
        },
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


def openapi_text() -> str:
    """docs/openapi.json's exact content."""
    return json.dumps(openapi(), indent=2) + "\n"
