"""Request schemas (bpfnet.schemas), the address rules they share with the daemon's flags
(bpfnet.config), and the generated OpenAPI document. Pure: no daemon, no root.

Regression tests for issue 10's input defects are named ``test_d<N>_...`` after the defect.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from bpfnet.config import (
    NAME_PATTERN,
    V4_SPECIAL,
    V6_SPECIAL,
    NetworkConfig,
    check_name,
    load_daemon_config,
    parse_bip,
)
from bpfnet.errors import InvalidArgument
from bpfnet.schemas import EndpointCreate, NetworkCreate, openapi, openapi_text, parse_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
NET = {"name": "n1", "subnet4": "10.20.0.0/24"}


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def net_body(**fields: Any) -> bytes:
    return body(**{**NET, **fields})


def refused(model: type[NetworkCreate | EndpointCreate], raw: bytes) -> str:
    """The one-line message parse_body gives for RAW (which must be refused)."""
    with pytest.raises(InvalidArgument) as info:
        parse_body(model, raw)
    message = info.value.message
    assert "\n" not in message and message.strip() == message
    assert "validation error" not in message and "pydantic" not in message  # never a pydantic dump
    return message


def from_json_refused(**fields: Any) -> str:
    with pytest.raises(InvalidArgument) as info:
        NetworkConfig.from_json({**NET, **fields})
    return info.value.message


# --- accepted bodies -----------------------------------------------------------------------
def test_minimal_network_body_defaults_like_the_service() -> None:
    model = parse_body(NetworkCreate, net_body())
    cfg = model.config()
    assert cfg == NetworkConfig.from_json({**NET, "bridge": "br-n1"})
    assert cfg.bridge == "br-n1" and cfg.gateway4 == IPv4Address("10.20.0.1") and cfg.mtu == 1500


def test_full_network_body() -> None:
    raw = net_body(bridge="brx", gateway4="10.20.0.254", ip_range4="10.20.0.128/25", ipv6=True,
                   subnet6="fd00:20::/64", gateway6="fd00:20::fe", ip_range6="fd00:20::/80",
                   default_gateway4="10.20.0.2", default_gateway6="fe80::2", mtu=9000, icc=False)
    cfg = parse_body(NetworkCreate, raw).config()
    assert cfg.bridge == "brx" and cfg.range4 == IPv4Network("10.20.0.128/25")
    assert cfg.gateway6 == IPv6Address("fd00:20::fe") and cfg.default_gateway6 == IPv6Address("fe80::2")
    assert (cfg.mtu, cfg.icc, cfg.ipv6) == (9000, False, True)
    # What the service stores reads back as the same network, through the API's schema too.
    assert parse_body(NetworkCreate, json.dumps(cfg.to_json()).encode()).config() == cfg


def test_long_network_name_gets_a_hashed_bridge() -> None:
    cfg = parse_body(NetworkCreate, net_body(name="a" * 63)).config()
    assert cfg.bridge.startswith("br-") and len(cfg.bridge) == 15


def test_endpoint_body() -> None:
    model = parse_body(EndpointCreate, body(name="web1", network="n1", ip="10.20.0.5", ip6="fd00:20::5",
                                            mac="02:42:AC:11:00:05", netns="ns1"))
    assert model.to_json() == {"name": "web1", "network": "n1", "ip": "10.20.0.5", "ip6": "fd00:20::5",
                               "mac": "02:42:ac:11:00:05", "netns": "ns1"}
    assert parse_body(EndpointCreate, body(name="a", network=None)).to_json() == {"name": "a"}


# --- issue 10 defect 1: a trailing newline in a name -----------------------------------------
@pytest.mark.parametrize("name", ["x\n", "x\r\n", "\nx", "x y", "x/y", "", "a" * 64, "-x", ".x"])
def test_d1_bad_names_refused_everywhere(name: str) -> None:
    assert refused(NetworkCreate, net_body(name=name)).startswith("invalid network name ")
    assert refused(EndpointCreate, body(name=name)).startswith("invalid endpoint name ")
    assert refused(EndpointCreate, body(name="a", network=name)).startswith("invalid network name ")
    assert refused(EndpointCreate, body(name="a", netns=name)).startswith("invalid netns name ")
    with pytest.raises(InvalidArgument, match="invalid network name"):
        NetworkConfig.from_json({**NET, "name": name})
    with pytest.raises(InvalidArgument):
        check_name(name, "endpoint name")
    with pytest.raises(InvalidArgument, match="--netns"):
        load_daemon_config(None, {"netns": name})


def test_d1_newline_message_is_one_line() -> None:
    message = refused(EndpointCreate, body(name="x\n"))
    assert "'x\\n'" in message  # the newline is shown escaped, on the one line


# --- issue 10 defect 5: 500s for bad input ----------------------------------------------------
@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"name": "a", "network": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}",
])
def test_d5_deep_nesting_is_a_400_not_a_recursion_error(raw: bytes) -> None:
    assert "nested too deeply" in refused(EndpointCreate, raw)
    assert "nested too deeply" in refused(NetworkCreate, raw)


@pytest.mark.parametrize("field", ["subnet4", "ip_range4", "gateway4", "subnet6", "gateway6", "bridge"])
@pytest.mark.parametrize("value", [17, 10.5, True, [], {}])
def test_d5_number_where_a_string_is_expected(field: str, value: Any) -> None:
    message = refused(NetworkCreate, net_body(**{field: value}))
    assert message.startswith(f"{field}: expected ") and "got " in message


def test_d5_number_as_cidr_message_and_from_json() -> None:
    assert refused(NetworkCreate, net_body(subnet4=17)) == \
        "subnet4: expected an IPv4 CIDR string like 172.17.0.0/16, got 17"
    # The stored-config path refuses it too (it raised TypeError -> 500).
    assert from_json_refused(subnet4=17) == "subnet: expected an IPv4 CIDR string like 172.17.0.0/16, got a number"
    assert "got a number" in from_json_refused(subnet6=6)
    assert "got a number" in from_json_refused(gateway4=1)


@pytest.mark.parametrize("token", [b"Infinity", b"-Infinity", b"NaN"])
def test_d5_mtu_infinity_and_nan(token: bytes) -> None:
    message = refused(NetworkCreate, b'{"name": "n1", "subnet4": "10.20.0.0/24", "mtu": ' + token + b"}")
    assert "not valid JSON" in message and "Infinity and NaN" in message
    assert from_json_refused(mtu=float(token.decode())) == "mtu: expected an integer, got a number"


@pytest.mark.parametrize("subnet6", ["::/64", "::/8", "::/96", "::/0"])
def test_d5_subnet6_in_reserved_space(subnet6: str) -> None:
    assert "reserved space" in refused(NetworkCreate, net_body(subnet6=subnet6))
    assert "reserved space" in from_json_refused(subnet6=subnet6)


@pytest.mark.parametrize(("fields", "field"), [
    ({"subnet6": "fd00::/64", "gateway6": "fd00::1%eth0"}, "gateway6"),
    ({"subnet6": "fd00::/64", "default_gateway6": "fe80::1%eth0"}, "default_gateway6"),
    ({"subnet6": "fd00::/64", "default_gateway6": "fe80::1%2"}, "default_gateway6"),
    ({"subnet6": "fd00::%eth0/64"}, "subnet6"),
    ({"subnet6": "fd00::/64", "ip_range6": "fd00::%1/80"}, "ip_range6"),
])
def test_d5_ipv6_scopes_refused(fields: dict[str, Any], field: str) -> None:
    message = refused(NetworkCreate, net_body(**fields))
    assert message.startswith(f"{field} ") and "scopes ('%...') are not accepted" in message
    assert "scopes" in from_json_refused(**fields)


def test_d5_endpoint_ip6_scope_refused() -> None:
    assert "scopes" in refused(EndpointCreate, body(name="a", ip6="fd00::5%eth0"))


# --- issue 10 defect 6: invalid input accepted --------------------------------------------------
SPECIAL_V4 = ["127.0.0.0/8", "127.1.0.0/16", "224.0.0.0/24", "239.1.0.0/16", "169.254.0.0/16",
              "240.0.0.0/24", "255.255.255.0/24", "0.0.0.0/8", "0.0.0.0/24", "0.0.0.0/1", "192.0.0.0/2"]
SPECIAL_V6 = ["::ffff:0:0/96", "::ffff:10.0.0.0/104", "::/64", "fe80::/64", "fe80:1::/64", "ff02::/64",
              "fec0::/64", "::/120"]


@pytest.mark.parametrize("subnet", SPECIAL_V4)
def test_d6_special_ipv4_subnets_refused(subnet: str) -> None:
    assert " is in " in refused(NetworkCreate, net_body(subnet4=subnet))
    assert " is in " in from_json_refused(subnet4=subnet)
    with pytest.raises(InvalidArgument, match=" is in "):
        load_daemon_config(None, {"fixed_cidr": subnet})


@pytest.mark.parametrize("subnet", SPECIAL_V6)
def test_d6_special_ipv6_subnets_refused(subnet: str) -> None:
    assert " is in " in refused(NetworkCreate, net_body(subnet6=subnet))
    assert " is in " in from_json_refused(subnet6=subnet)
    with pytest.raises(InvalidArgument, match=" is in "):
        load_daemon_config(None, {"ipv6": True, "fixed_cidr_v6": subnet})


@pytest.mark.parametrize("bip", ["224.3.0.1/24", "127.0.0.1/8", "169.254.0.1/16", "240.0.0.1/24",
                                 "0.0.0.1/24"])
def test_d6_special_bip_refused(bip: str) -> None:
    with pytest.raises(InvalidArgument, match=" is in "):
        parse_bip(bip)
    with pytest.raises(InvalidArgument, match=" is in "):
        load_daemon_config(None, {"bip": bip})


def test_d6_bip_multicast_message() -> None:
    with pytest.raises(InvalidArgument, match=r"--bip 224\.3\.0\.0/24 is in multicast space"):
        parse_bip("224.3.0.1/24")


@pytest.mark.parametrize(("flags", "fragment"), [
    ({"default_gateway": "127.0.0.1"}, "loopback"),
    ({"default_gateway": "224.0.0.1"}, "multicast"),
    ({"ipv6": True, "default_gateway_v6": "ff02::1"}, "multicast"),
    ({"ipv6": True, "default_gateway_v6": "fe80::1%eth0"}, "scopes"),
    ({"default_gateway_v6": "fe80::1"}, "needs --ipv6"),
])
def test_d6_default_gateway_flags_checked_without_bip(flags: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        load_daemon_config(None, flags)


def test_d6_mtu_float_refused_not_truncated() -> None:
    assert refused(NetworkCreate, net_body(mtu=1500.5)) == "mtu: expected an integer from 68 to 65535, got 1500.5"
    assert "mtu: expected an integer" in refused(NetworkCreate, net_body(mtu=1500.0))
    assert "mtu: expected an integer" in refused(NetworkCreate, net_body(mtu="1500"))
    assert "mtu: expected an integer" in refused(NetworkCreate, net_body(mtu=True))
    assert from_json_refused(mtu=1500.5) == "mtu: expected an integer, got a number"
    with pytest.raises(InvalidArgument, match="not an integer"):
        load_daemon_config(None, {"mtu": 1500.5})  # a TOML float


@pytest.mark.parametrize("value", ["false", "true", 0, 1, "no"])
def test_d6_ipv6_and_icc_are_strict_booleans(value: Any) -> None:
    assert refused(NetworkCreate, net_body(ipv6=value)).startswith("ipv6: expected true or false")
    assert refused(NetworkCreate, net_body(icc=value)).startswith("icc: expected true or false")
    assert "ipv6 must be true or false" in from_json_refused(ipv6=value)


def test_d6_gateway6_without_subnet6_refused() -> None:
    assert "gateway6 needs subnet6" in refused(NetworkCreate, net_body(gateway6="fd00::1"))
    assert "gateway6 needs subnet6" in refused(NetworkCreate, net_body(ipv6=True, gateway6="fd00::1"))
    assert "gateway6 needs subnet6" in from_json_refused(gateway6="fd00::1")


def test_d6_default_gateway6_needs_ipv6() -> None:
    assert "needs IPv6" in refused(NetworkCreate, net_body(default_gateway6="fe80::1"))


def test_d6_scoped_default_gateway6_never_stored_without_its_scope() -> None:
    # Refused (the endpoint's gateway device is always eth0); unscoped link-local is kept as given.
    assert "scopes" in refused(NetworkCreate, net_body(ipv6=True, default_gateway6="fe80::1%eth0"))
    cfg = parse_body(NetworkCreate, net_body(ipv6=True, default_gateway6="fe80::1")).config()
    assert cfg.to_json()["default_gateway6"] == "fe80::1"
    with pytest.raises(InvalidArgument, match="scopes"):
        load_daemon_config(None, {"bip": "172.30.0.1/16", "ipv6": True, "default_gateway_v6": "fe80::1%eth0"})


@pytest.mark.parametrize(("field", "value"), [("gateway4", "10.20.0.0"), ("default_gateway4", "127.0.0.1"),
                                              ("default_gateway4", "10.21.0.1")])
def test_d6_bad_gateways(field: str, value: str) -> None:
    refused(NetworkCreate, net_body(**{field: value}))


@pytest.mark.parametrize(("fields", "field"), [
    ({"ip": "127.0.0.1"}, "ip"), ({"ip": "224.0.0.1"}, "ip"), ({"ip": "0.0.0.0"}, "ip"),
    ({"ip6": "::1"}, "ip6"), ({"ip6": "ff02::1"}, "ip6"), ({"ip6": "::ffff:10.0.0.1"}, "ip6"),
    ({"ip": "fd00::1"}, "ip"), ({"ip6": "10.0.0.1"}, "ip6"),
    ({"mac": "01:00:5e:00:00:01"}, "mac"), ({"mac": "00:00:00:00:00:00"}, "mac"), ({"mac": "02-42-00-00-00-01"}, "mac"),
])
def test_d6_endpoint_addresses(fields: dict[str, Any], field: str) -> None:
    message = refused(EndpointCreate, body(name="a", **fields))
    assert message.startswith((f"{field}:", f"{field} ")) or f" {field} " in message, message


# --- messages ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "message"), [
    (b"", "expected a JSON object in the request body, got nothing"),
    (None, "expected a JSON object in the request body, got nothing"),
    (b"[]", "expected a JSON object in the request body, got an array"),
    (b"null", "expected a JSON object in the request body, got null"),
    (b'"x"', "expected a JSON object in the request body, got a string"),
    (b'{"subnet4": "10.0.0.0/24"}', "name: missing (required)"),
    (b'{"name": "a", "subnet4": "10.0.0.0/24", "colour": 1, "size": 2}', "unknown field(s) 'colour', 'size'"),
])
def test_messages(raw: bytes | None, message: str) -> None:
    assert refused(NetworkCreate, raw) == message  # type: ignore[arg-type]


def test_not_json() -> None:
    assert refused(NetworkCreate, b"{x").startswith("request body is not valid JSON: ")
    assert refused(NetworkCreate, b"\xff\xfe").startswith("request body is not valid JSON: ")


def test_several_problems_reported_as_one_line() -> None:
    message = refused(EndpointCreate, body(name="a", ip=1, ip6=2))
    assert message.startswith("ip: expected") and message.endswith("(and 1 more problem)")


def test_strings_are_bounded() -> None:
    message = refused(NetworkCreate, net_body(subnet6="f" * 10_000))
    assert message.startswith("subnet6: expected") and len(message) < 200
    assert refused(NetworkCreate, net_body(bridge="b" * 16)) == \
        "bridge name 'bbbbbbbbbbbbbbbb' is 16 characters; Linux allows at most 15"


@pytest.mark.parametrize(("model", "fields", "message"), [
    # Wrong shapes get the same words as the daemon's service checks (what its tests expect).
    (EndpointCreate, {"ip": "10.231.0.999"}, "malformed ip '10.231.0.999': not an IPv4 address"),
    (EndpointCreate, {"ip": "fd00:bf::5"}, "malformed ip 'fd00:bf::5': not an IPv4 address"),
    (EndpointCreate, {"mac": "02:42:ac"},
     "mac: malformed MAC address '02:42:ac': expected six hex bytes like 02:42:ac:11:00:02"),
    (NetworkCreate, {"subnet4": "banana"}, "malformed subnet4 'banana': expected an IPv4 CIDR string like 172.17.0.0/16"),
])
def test_shape_errors_use_the_config_checks_words(model: type[NetworkCreate | EndpointCreate],
                                                  fields: dict[str, Any], message: str) -> None:
    base = {**NET, "name": "a"} if model is NetworkCreate else {"name": "a"}
    assert refused(model, body(**{**base, **fields})) == message


# --- properties ----------------------------------------------------------------------------------
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
FIELDS = sorted(NetworkCreate.model_fields)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=70) | st.from_regex(NAME_PATTERN, fullmatch=True) | st.text(max_size=3).map(lambda s: s + "\n"))
def test_schema_and_check_name_agree(name: str) -> None:
    try:
        check_name(name, "name")
        by_config = True
    except InvalidArgument:
        by_config = False
    try:
        parse_body(EndpointCreate, body(name=name))
        by_schema = True
    except InvalidArgument:
        by_schema = False
    assert by_schema == by_config
    assert by_config == (name.isascii() and not name.endswith("\n") and 1 <= len(name) <= 63
                         and name[0].isalnum() and all(c.isalnum() or c in "_.-" for c in name))


def _accepts(fields: dict[str, Any]) -> tuple[bool, bool]:
    try:
        parse_body(NetworkCreate, net_body(**fields))
        schema = True
    except InvalidArgument:
        schema = False
    try:
        NetworkConfig.from_json({**NET, **fields})
        config = True
    except InvalidArgument:
        config = False
    return schema, config


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_subnets_api_and_config_agree_and_avoid_special_space(address: int, prefix: int) -> None:
    subnet = IPv4Network((address, prefix), strict=False)
    schema, config = _accepts({"subnet4": str(subnet)})
    assert schema == config
    if schema:
        assert not any(subnet.overlaps(block) for block, _ in V4_SPECIAL)
        assert prefix <= 30


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 2**128 - 1) | st.integers(0, 2**48 - 1) | st.integers(0xFE80 << 112, (0xFF01 << 112)),
       st.integers(0, 128))
def test_ipv6_subnets_api_and_config_agree_and_avoid_special_space(address: int, prefix: int) -> None:
    subnet = IPv6Network((address, prefix), strict=False)
    schema, config = _accepts({"subnet6": str(subnet)})
    assert schema == config
    if schema:
        assert not any(subnet.overlaps(block) for block, _ in V6_SPECIAL)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), JSON)
def test_any_json_value_in_any_field_is_accepted_or_one_clear_line(field: str, value: Any) -> None:
    raw = net_body(**{field: value})
    try:
        model = parse_body(NetworkCreate, raw)
    except InvalidArgument as exc:
        assert "\n" not in exc.message and field in exc.message
        return
    # Accepted: the service gets a network that the stored-config path accepts unchanged.
    cfg = model.config()
    if cfg is None:  # no subnet4: the service picks it
        assert field == "subnet4" and value is None
        return
    assert NetworkConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(EndpointCreate.model_fields)), JSON)
def test_any_json_value_in_any_endpoint_field_is_accepted_or_one_clear_line(field: str, value: Any) -> None:
    try:
        model = parse_body(EndpointCreate, body(**{"name": "a", field: value}))
    except InvalidArgument as exc:
        assert "\n" not in exc.message and field in exc.message
        return
    assert model.to_json().get(field) in (value, None) or field == "mac"  # mac is lower-cased


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_body_is_accepted_or_refused_with_invalid_argument(raw: bytes) -> None:
    for model in (NetworkCreate, EndpointCreate):
        try:
            parse_body(model, raw)
        except InvalidArgument as exc:
            assert "\n" not in exc.message


# --- the OpenAPI document ----------------------------------------------------------------------
ROUTES = {
    ("get", "/v1/info"), ("get", "/v1/stats"), ("get", "/v1/openapi.json"), ("get", "/v1/nodes"),
    ("delete", "/v1/nodes/{name}"),
    ("get", "/v1/networks"), ("post", "/v1/networks"),
    ("get", "/v1/networks/{name}"), ("delete", "/v1/networks/{name}"),
    ("get", "/v1/endpoints"), ("post", "/v1/endpoints"),
    ("get", "/v1/endpoints/{name}"), ("delete", "/v1/endpoints/{name}"), ("get", "/v1/endpoints/{name}/check"),
}


def test_committed_openapi_document_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "openapi.json").read_text()
    assert committed == openapi_text(), "docs/openapi.json is stale: run scripts/openapi"


def test_openapi_describes_every_route() -> None:
    doc = openapi()
    assert doc["openapi"].startswith("3.1")
    assert {(m, p) for p, ops in doc["paths"].items() for m in ops} == ROUTES
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            assert statuses & {"200", "201", "204"}, (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            if "{name}" in path:
                assert "404" in statuses and "400" in statuses
                (param,) = op["parameters"]
                assert param["schema"]["pattern"] == f"^{NAME_PATTERN}$"
            if method == "post":
                assert {"400", "409", "413", "507"} <= statuses


def test_openapi_request_bodies_are_the_models() -> None:
    doc = openapi()
    schemas = doc["components"]["schemas"]
    assert schemas["NetworkCreate"]["additionalProperties"] is False
    assert set(schemas["NetworkCreate"]["properties"]) == set(NetworkCreate.model_fields)
    assert set(schemas["EndpointCreate"]["properties"]) == set(EndpointCreate.model_fields)
    assert schemas["NetworkCreate"]["required"] == ["name"]
    assert schemas["Error"] == {"additionalProperties": False, "description": "Every error: one line of JSON, then a newline.",
                                "properties": {"error": {"title": "Error", "type": "string"}},
                                "required": ["error"], "title": "Error", "type": "object"}
    ref = doc["paths"]["/v1/networks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert ref == {"$ref": "#/components/schemas/NetworkCreate"}


def test_schemathesis_loads_the_document() -> None:
    schema = schemathesis.openapi.from_dict(openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.lower(), op.path) for op in operations} == ROUTES
