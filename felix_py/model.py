"""Typed, validated records for every value in the datastore.

``decode(parsed_key, raw)`` turns the bytes stored under a key into an immutable record, or
raises ``ModelError`` naming the key and the field that is wrong.  The field rules follow
Calico's v1 data model; ``docs/datamodel.md`` documents each of them.  Nothing here touches
etcd or the kernel.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, model_validator)
from pydantic_core import SchemaValidator, core_schema

from felix_py.datastore.keys import Kind, ParsedKey
from policy.selector import SelectorError, parse_selector

MAX_VALUE_BYTES = 512 * 1024
BGP_MODES = ("downward-default", "route-reflector", "node-mesh")
PORT_PROTOCOLS = {"tcp", "udp", "sctp", "udplite", 6, 17, 132, 136}
ICMP_PROTOCOLS = {"icmp": 4, "icmpv6": 6, 1: 4, 58: 6}
PROTOCOL_NAMES = ("tcp", "udp", "icmp", "icmpv6", "sctp", "udplite")


class ModelError(ValueError):
    """A datastore value that does not parse or validate."""

    def __init__(self, key: str, field: str | None, message: str):
        self.key, self.field, self.message = key, field, message
        where = f"field {field!r}: " if field else ""
        super().__init__(f"{key}: {where}{message}")


# -- field types -------------------------------------------------------------------------

# Pattern bodies, shared by the Python checks below (re.fullmatch) and the endpoint fast
# path (pydantic-core's Rust regex, anchored).  Digits are spelled [0-9]: Python's \d also
# matches other scripts' digits.
NAME_PATTERN = r"[A-Za-z0-9_.\-]{1,253}"
IFACE_PATTERN = r"[A-Za-z0-9_.\-]{1,15}"
MAC_PATTERN = r"[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}"
MAC_CANONICAL_PATTERN = r"[0-9a-f]{2}(:[0-9a-f]{2}){5}"
LABEL_KEY_PATTERN = r"([A-Za-z0-9][A-Za-z0-9_.\-]{0,252}/)?[A-Za-z0-9_.\-]{1,63}"
LABEL_VALUE_PATTERN = r"[A-Za-z0-9_.\-]{0,63}"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
V4_PATTERN = rf"{_OCTET}(\.{_OCTET}){{3}}"     # dotted quad as ipaddress prints it

_NAME_RE = re.compile(NAME_PATTERN)
_IFACE_RE = re.compile(IFACE_PATTERN)
_MAC_RE = re.compile(MAC_PATTERN)
_LABEL_KEY_RE = re.compile(LABEL_KEY_PATTERN)
_LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN)
_V4_HOST_RE = re.compile(V4_PATTERN + "/32")


def _check(pattern: re.Pattern, what: str):
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v
    return check


Name = Annotated[str, AfterValidator(_check(_NAME_RE, "name (letters, digits, _ . -)"))]
InterfaceName = Annotated[str, AfterValidator(
    _check(_IFACE_RE, "interface name (1-15 of letters, digits, _ . -)"))]
Mac = Annotated[str, AfterValidator(lambda v: _check(_MAC_RE, "MAC address")(v)
                                    .lower().replace("-", ":"))]


def _labels(v: dict) -> dict:
    for k, val in v.items():
        if not _LABEL_KEY_RE.fullmatch(k):
            raise ValueError(f"label key {k!r} is not valid (letters, digits, _ . -, "
                             "optional prefix/)")
        if not isinstance(val, str) or not _LABEL_VALUE_RE.fullmatch(val):
            raise ValueError(f"label {k!r} has invalid value {val!r} "
                             "(up to 63 letters, digits, _ . -)")
    return v


Labels = Annotated[dict[str, str], AfterValidator(_labels)]


def _net(version: int | None, exact_len: bool):
    def check(v: Any) -> str:
        if version == 4 and exact_len and isinstance(v, str) and _V4_HOST_RE.fullmatch(v):
            return v  # the common case, without building an ipaddress object
        if not isinstance(v, str):
            raise ValueError(f"{v!r} is not a CIDR string")
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as e:
            raise ValueError(f"{v!r} is not a valid CIDR ({e})") from None
        if version is not None and net.version != version:
            raise ValueError(f"{v!r} is not an IPv{version} network")
        if exact_len and net.prefixlen != net.max_prefixlen:
            raise ValueError(f"{v!r} must be a single address (/{net.max_prefixlen})")
        return str(net)
    return check


def _addr(version: int | None):
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise ValueError(f"{v!r} is not an IP address string")
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a valid IP address") from None
        if version is not None and ip.version != version:
            raise ValueError(f"{v!r} is not an IPv{version} address")
        return str(ip)
    return check


AnyNet = Annotated[str, BeforeValidator(_net(None, False))]
Ipv4Host = Annotated[str, BeforeValidator(_net(4, True))]
Ipv6Host = Annotated[str, BeforeValidator(_net(6, True))]
IpAddr = Annotated[str, BeforeValidator(_addr(None))]
Ipv4Addr = Annotated[str, BeforeValidator(_addr(4))]
Ipv6Addr = Annotated[str, BeforeValidator(_addr(6))]


def _as_number(v: Any) -> int:
    """AS numbers as Calico wrote them: 64512, "64512", or asdot "1.10"."""
    if isinstance(v, bool):
        raise ValueError("an AS number is not a boolean")
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(r"\d+\.\d+", s):
            hi, lo = (int(x) for x in s.split("."))
            if hi > 65535 or lo > 65535:
                raise ValueError(f"{v!r} is not a valid asdot AS number")
            v = hi * 65536 + lo
        elif s.isdigit():
            v = int(s)
        else:
            raise ValueError(f"{v!r} is not an AS number")
    if not isinstance(v, int) or not 1 <= v <= 4294967295:
        raise ValueError(f"AS number {v!r} is out of range 1-4294967295")
    return v


AsNumber = Annotated[int, BeforeValidator(_as_number)]


def _port(v: Any) -> Union[int, str]:
    if isinstance(v, bool):
        raise ValueError("a port is not a boolean")
    if isinstance(v, int):
        if not 0 <= v <= 65535:
            raise ValueError(f"port {v} is out of range 0-65535")
        return v
    if isinstance(v, str) and re.fullmatch(r"\d+:\d+", v):
        lo, hi = (int(x) for x in v.split(":"))
        if not (0 <= lo <= hi <= 65535):
            raise ValueError(f"port range {v!r} must be a:b with 0 <= a <= b <= 65535")
        return v
    raise ValueError(f"{v!r} is not a port number or a range \"a:b\"")


Port = Annotated[Union[int, str], BeforeValidator(_port)]


def _protocol(v: Any) -> Union[int, str]:
    if isinstance(v, bool):
        raise ValueError("a protocol is not a boolean")
    if isinstance(v, str):
        if v.lower() in PROTOCOL_NAMES:
            return v.lower()
        if v.isdigit():
            v = int(v)
        else:
            raise ValueError(f"unknown protocol {v!r} (one of {', '.join(PROTOCOL_NAMES)} "
                             "or a number 1-255)")
    if not isinstance(v, int) or not 1 <= v <= 255:
        raise ValueError(f"protocol {v!r} is out of range 1-255")
    return v


Protocol = Annotated[Union[int, str], BeforeValidator(_protocol)]


def _selector(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("a selector is a string")
    try:
        return str(parse_selector(v))
    except SelectorError as e:
        raise ValueError(str(e)) from None


Selector = Annotated[str, BeforeValidator(_selector)]
IcmpType = Annotated[int, Field(ge=0, le=254)]
IcmpCode = Annotated[int, Field(ge=0, le=255)]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


# -- workload endpoints ------------------------------------------------------------------

class Endpoint(Record):
    state: Literal["active", "inactive"] = "active"
    name: InterfaceName
    mac: Optional[Mac] = None
    profile_ids: list[Name] = Field(default_factory=list)
    ipv4_nets: list[Ipv4Host] = Field(default_factory=list)
    ipv6_nets: list[Ipv6Host] = Field(default_factory=list)
    ipv4_gateway: Optional[Ipv4Addr] = None
    ipv6_gateway: Optional[Ipv6Addr] = None
    labels: Labels = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_profile_id(cls, data):
        # Calico's first v1 endpoints carried a single "profile_id".
        if isinstance(data, dict) and "profile_id" in data and "profile_ids" not in data:
            data = dict(data)
            pid = data.pop("profile_id")
            data["profile_ids"] = [pid] if pid is not None else []
        return data

    @property
    def addresses(self) -> list[str]:
        return [n.split("/")[0] for n in (*self.ipv4_nets, *self.ipv6_nets)]

    def nets(self, version: int) -> list[str]:
        """Its networks of one IP version: ``ipv4_nets`` (4) or ``ipv6_nets`` (6)."""
        return self.ipv4_nets if version == 4 else self.ipv6_nets


# The endpoint fast path.  Endpoints are most of a snapshot, and nearly all are written in
# one canonical form (IPv4 /32s, lower-case colon MACs, no IPv6, no legacy "profile_id").
# A second validator checks that form entirely inside pydantic-core, without calling back
# into Python; whatever it rejects - IPv6, a value to normalise, every invalid value - goes
# through the full model, which normalises it or names the bad field.  So the fast path
# accepts a subset of what Endpoint accepts and yields an equal record
# (tests/unit/test_model.py holds it to that on every field).

def _full(pattern: str) -> core_schema.StringSchema:
    return core_schema.str_schema(pattern=f"^(?:{pattern})$")


_CANONICAL_ENDPOINT_FIELDS = {
    "state": core_schema.literal_schema(["active", "inactive"]),
    "name": _full(IFACE_PATTERN),
    "mac": core_schema.nullable_schema(_full(MAC_CANONICAL_PATTERN)),
    "profile_ids": core_schema.list_schema(_full(NAME_PATTERN)),
    "ipv4_nets": core_schema.list_schema(_full(V4_PATTERN + "/32")),
    "ipv6_nets": core_schema.list_schema(max_length=0),
    "ipv4_gateway": core_schema.nullable_schema(_full(V4_PATTERN)),
    "ipv6_gateway": core_schema.none_schema(),
    "labels": core_schema.dict_schema(_full(LABEL_KEY_PATTERN), _full(LABEL_VALUE_PATTERN)),
}


def _second_validator(cls: type[BaseModel], fields: dict) -> SchemaValidator:
    """A validator building ``cls`` records from its own field schemas (with the model's
    defaults).  pydantic-core reuses a finished model's validator for any schema that names
    the class, so the class is marked unfinished while this one is built; if a pydantic
    release stops honouring that, the result is the model's full validator (slower, still
    right) and tests/unit/test_model.py fails on it."""
    assert fields.keys() == cls.model_fields.keys()

    def field(name: str) -> core_schema.ModelField:
        info, schema = cls.model_fields[name], fields[name]
        if info.default_factory is not None:
            schema = core_schema.with_default_schema(schema, default_factory=info.default_factory)
        elif not info.is_required():
            schema = core_schema.with_default_schema(schema, default=info.default)
        return core_schema.model_field(schema)

    schema = core_schema.model_schema(
        cls, core_schema.model_fields_schema({n: field(n) for n in fields},
                                             extra_behavior="forbid"),
        config=core_schema.CoreConfig(strict=True), frozen=True)
    cls.__pydantic_complete__ = False
    try:
        return SchemaValidator(schema)
    finally:
        cls.__pydantic_complete__ = True


_CANONICAL_ENDPOINT = _second_validator(Endpoint, _CANONICAL_ENDPOINT_FIELDS)
_canonical_endpoint = _CANONICAL_ENDPOINT.validate_json
_ENDPOINT = Kind.ENDPOINT       # a plain global: an Enum member lookup costs ~0.2 us


# -- policy ------------------------------------------------------------------------------

class Rule(Record):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    action: Literal["allow", "deny", "log"] = "allow"
    ip_version: Optional[Literal[4, 6]] = None
    protocol: Optional[Protocol] = None
    src_net: Optional[AnyNet] = None
    src_tag: Optional[Name] = None
    src_selector: Optional[Selector] = None
    src_ports: Optional[list[Port]] = None
    dst_net: Optional[AnyNet] = None
    dst_tag: Optional[Name] = None
    dst_selector: Optional[Selector] = None
    dst_ports: Optional[list[Port]] = None
    icmp_type: Optional[IcmpType] = None
    icmp_code: Optional[IcmpCode] = None
    not_protocol: Optional[Protocol] = Field(None, alias="!protocol")
    not_src_net: Optional[AnyNet] = Field(None, alias="!src_net")
    not_src_tag: Optional[Name] = Field(None, alias="!src_tag")
    not_src_selector: Optional[Selector] = Field(None, alias="!src_selector")
    not_src_ports: Optional[list[Port]] = Field(None, alias="!src_ports")
    not_dst_net: Optional[AnyNet] = Field(None, alias="!dst_net")
    not_dst_tag: Optional[Name] = Field(None, alias="!dst_tag")
    not_dst_selector: Optional[Selector] = Field(None, alias="!dst_selector")
    not_dst_ports: Optional[list[Port]] = Field(None, alias="!dst_ports")
    not_icmp_type: Optional[IcmpType] = Field(None, alias="!icmp_type")
    not_icmp_code: Optional[IcmpCode] = Field(None, alias="!icmp_code")

    @model_validator(mode="after")
    def _consistent(self):
        ports = any(x is not None for x in (self.src_ports, self.dst_ports,
                                            self.not_src_ports, self.not_dst_ports))
        if ports and self.protocol not in PORT_PROTOCOLS:
            raise ValueError("ports need protocol tcp, udp, sctp or udplite")
        icmp = [self.icmp_type, self.icmp_code, self.not_icmp_type, self.not_icmp_code]
        if any(x is not None for x in icmp):
            if self.protocol not in ICMP_PROTOCOLS:
                raise ValueError("icmp_type/icmp_code need protocol icmp or icmpv6")
            if self.icmp_code is not None and self.icmp_type is None:
                raise ValueError("icmp_code needs icmp_type")
        versions = {ipaddress.ip_network(n).version for n in
                    (self.src_net, self.dst_net, self.not_src_net, self.not_dst_net) if n}
        if self.protocol in ICMP_PROTOCOLS:
            versions.add(ICMP_PROTOCOLS[self.protocol])
        if self.ip_version is not None:
            versions.add(self.ip_version)
        if len(versions) > 1:
            raise ValueError("the rule mixes IPv4 and IPv6 (nets, protocol, ip_version)")
        return self

    @property
    def version(self) -> int | None:
        """The one IP version this rule is limited to, or None for both."""
        for n in (self.src_net, self.dst_net, self.not_src_net, self.not_dst_net):
            if n:
                return ipaddress.ip_network(n).version
        if self.protocol in ICMP_PROTOCOLS:
            return ICMP_PROTOCOLS[self.protocol]
        return self.ip_version


class ProfileRules(Record):
    inbound_rules: list[Rule] = Field(default_factory=list)
    outbound_rules: list[Rule] = Field(default_factory=list)


# -- IP pools and IPAM -------------------------------------------------------------------

class Pool(Record):
    cidr: AnyNet
    masquerade: bool = False
    disabled: bool = False
    block_size: Optional[int] = Field(None, ge=0, le=128)
    ipip: Optional[str] = None        # accepted for Calico compatibility; unused (no overlay)

    @model_validator(mode="after")
    def _block_fits(self):
        net = ipaddress.ip_network(self.cidr)
        if self.block_size is not None and not net.prefixlen <= self.block_size <= net.max_prefixlen:
            raise ValueError(f"block_size {self.block_size} must be between the pool's "
                             f"prefix length {net.prefixlen} and {net.max_prefixlen}")
        return self


class IpamConfig(Record):
    """``/calico/ipam/v2/config``, in the field names of Calico's etcd format."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    strict_affinity: bool = False           # never borrow from another host's block
    auto_allocate_blocks: bool = True       # claim new blocks when the own ones are full
    max_blocks_per_host: int = Field(0, ge=0, alias="maxBlocksPerHost")   # 0: no limit


def _null_as_empty(v: Any) -> Any:
    return {} if v is None else v


class BlockAttribute(Record):
    """Who holds an allocation: its handle and free-form facts (host, endpoint, ...)."""
    handle_id: Optional[str] = None
    secondary: Annotated[dict[str, str], BeforeValidator(_null_as_empty)] = {}


class Block(Record):
    """One block of a pool (``/calico/ipam/v2/assignment/ipv4/block/<cidr>``), in Calico's
    format: ``allocations[ordinal]`` indexes ``attributes`` (None: free), ``unallocated``
    lists the free ordinals in the order they are handed out."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)

    cidr: AnyNet
    affinity: Optional[str] = None                 # "host:<hostname>"
    strict_affinity: bool = Field(False, alias="strictAffinity")
    allocations: list[Optional[int]]
    unallocated: list[int]
    attributes: list[BlockAttribute] = []
    deleted: bool = False                          # Calico's field; accepted, never set

    @model_validator(mode="after")
    def _consistent(self):
        net = ipaddress.ip_network(self.cidr)
        if len(self.allocations) != net.num_addresses:
            raise ValueError(f"allocations has {len(self.allocations)} entries for a block "
                             f"of {net.num_addresses} addresses")
        free = {i for i, a in enumerate(self.allocations) if a is None}
        if len(set(self.unallocated)) != len(self.unallocated) or set(self.unallocated) != free:
            raise ValueError("unallocated must list each free ordinal (allocations[i] is "
                             "null) exactly once")
        bad = [a for a in self.allocations if a is not None and not 0 <= a < len(self.attributes)]
        if bad:
            raise ValueError(f"allocations refer to attribute {bad[0]}, but there are "
                             f"{len(self.attributes)} attributes")
        return self

    @property
    def host(self) -> str | None:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[5:]
        return None


class Affinity(Record):
    state: Literal["confirmed", "pending", "pendingDeletion"] = "confirmed"
    deleted: bool = False                          # Calico's field; accepted, never set


class Handle(Record):
    """``/calico/ipam/v2/handle/<id>``: how many addresses the handle holds per block (the
    id is the key's last segment, as in Calico)."""
    block: dict[str, int] = {}
    deleted: bool = False                          # Calico's field; accepted, never set


# -- BGP ---------------------------------------------------------------------------------

def _password(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError("a password is a non-empty string")
    if len(v.encode()) > 80:
        raise ValueError("a TCP MD5 password is at most 80 bytes")
    if any(c in v for c in "\n\r\"'\\;{}") or not v.isprintable():
        raise ValueError("a password may not hold newlines, quotes, backslashes, ; { } "
                         "or control characters")
    return v


class BgpPeer(Record):
    ip: IpAddr
    as_num: AsNumber
    password: Optional[Annotated[str, BeforeValidator(_password)]] = None
    port: Optional[int] = Field(None, ge=1, le=65535)


class NodeMesh(Record):
    enabled: bool = True


class RouteReflector(Record):
    ip: IpAddr
    cluster_id: Ipv4Addr


# -- status (written by agents) ----------------------------------------------------------

class HostStatus(Record):
    model_config = ConfigDict(extra="ignore", frozen=True)
    time: str
    uptime: float
    first_update: bool = False
    version: Optional[str] = None
    ready: Optional[bool] = None
    problems: list[str] = Field(default_factory=list)   # settings the agent cannot follow


class EndpointStatus(Record):
    model_config = ConfigDict(extra="ignore", frozen=True)
    status: Literal["up", "down", "error"]
    reason: Optional[str] = None


class BgpPeerStatus(Record):
    model_config = ConfigDict(extra="ignore", frozen=True)
    peer_type: str
    state: str
    since: Optional[str] = None
    received: int = 0
    accepted: int = 0
    sent: int = 0
    info: Optional[str] = None


# -- decoding ----------------------------------------------------------------------------

def _json(raw: str):
    return json.loads(raw)


def _bare_or_json_string(raw: str):
    """Values Calico wrote bare (64512, 10.0.0.1, route-reflector), also accepted as JSON."""
    s = raw.strip()
    if s.startswith('"'):
        v = json.loads(s)
        if not isinstance(v, str):
            raise ValueError("expected a string")
        return v
    if s.isdigit():
        return int(s)
    return s


def _bool_value(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("true", '"true"'):
        return True
    if v in ("false", '"false"'):
        return False
    raise ValueError(f"{raw!r} is not true or false")


def _mode(v: Any) -> str:
    if v not in BGP_MODES:
        raise ValueError(f"unknown BGP mode {v!r} (one of {', '.join(BGP_MODES)})")
    return v


def _cluster_id(v: Any) -> str:
    return _addr(4)(str(v))


def _host_ip(version: int):
    def check(v: Any) -> Optional[str]:
        return None if v == "" else _addr(version)(str(v))
    return check


def _string_list(v: Any) -> tuple:
    if not isinstance(v, list):
        raise ValueError("expected a JSON list of tags")
    for t in v:
        if not isinstance(t, str) or not _NAME_RE.fullmatch(t):
            raise ValueError(f"tag {t!r} is not a valid name (letters, digits, _ . -)")
    return tuple(v)


def _labels_value(v: Any) -> dict:
    if not isinstance(v, dict):
        raise ValueError("expected a JSON object of labels")
    return _labels(v)


def _config_value(raw: str) -> str:
    return raw


# kind -> (parse raw text, validate the parsed value)
_DECODERS: dict[Kind, tuple] = {
    Kind.READY: (_bool_value, None),
    Kind.CONFIG: (_config_value, None),
    Kind.ENDPOINT: (_json, Endpoint),
    Kind.PROFILE_RULES: (_json, ProfileRules),
    Kind.PROFILE_TAGS: (_json, _string_list),
    Kind.PROFILE_LABELS: (_json, _labels_value),
    Kind.POOL: (_json, Pool),
    Kind.HOST_STATUS: (_json, HostStatus),
    Kind.ENDPOINT_STATUS: (_json, EndpointStatus),
    Kind.BGP_PEER_STATUS: (_json, BgpPeerStatus),
    Kind.BGP_AS_NUM: (_bare_or_json_string, _as_number),
    Kind.BGP_MODE: (_bare_or_json_string, _mode),
    Kind.BGP_NODE_MESH: (_json, NodeMesh),
    Kind.BGP_PEER: (_json, BgpPeer),
    Kind.BGP_RR_CLUSTER_ID: (_bare_or_json_string, _cluster_id),
    Kind.BGP_ROUTE_REFLECTOR: (_json, RouteReflector),
    Kind.IPAM_BLOCK: (_json, Block),
    Kind.IPAM_AFFINITY: (_json, Affinity),
    Kind.IPAM_HANDLE: (_json, Handle),
    Kind.IPAM_CONFIG: (_json, IpamConfig),
}


def _field_of(err: ValidationError) -> str | None:
    e = err.errors()[0]
    loc = [str(x) for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-"))]
    return ".".join(loc) or None


def _pydantic_message(err: ValidationError) -> str:
    e = err.errors()[0]
    msg = e["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if e["type"] == "extra_forbidden":
        msg = "unknown field"
    elif e["type"] == "json_invalid":
        msg = f"malformed JSON: {e.get('ctx', {}).get('error', msg)}"
    elif e["type"] == "model_type":
        msg = f"expected a JSON object, got {type(e['input']).__name__}"
    return msg


def _cross_check(pk: ParsedKey, record) -> None:
    """Key and value must agree where both name the same thing."""
    parts = pk.parts
    if pk.kind is Kind.POOL or pk.kind is Kind.IPAM_BLOCK:
        if ipaddress.ip_network(record.cidr) != ipaddress.ip_network(parts["cidr"], strict=False):
            raise ModelError(pk.key, "cidr", f"{record.cidr} does not match the key's "
                                             f"{parts['cidr']}")
    if pk.kind in (Kind.POOL, Kind.IPAM_BLOCK):
        if ipaddress.ip_network(record.cidr).version != parts["version"]:
            raise ModelError(pk.key, "cidr", f"{record.cidr} is not IPv{parts['version']}")
    if pk.kind in (Kind.BGP_PEER, Kind.BGP_ROUTE_REFLECTOR):
        try:
            key_ip = ipaddress.ip_address(parts["ip"])
        except ValueError:
            raise ModelError(pk.key, None, f"{parts['ip']!r} in the key is not an IP") from None
        if key_ip != ipaddress.ip_address(record.ip):
            raise ModelError(pk.key, "ip", f"{record.ip} does not match the key's {key_ip}")
        if key_ip.version != parts["version"]:
            raise ModelError(pk.key, "ip", f"{record.ip} is not IPv{parts['version']}")


def decode(pk: ParsedKey, raw: bytes):
    """The record stored under ``pk``; raises ModelError naming the key and field."""
    if pk.kind is _ENDPOINT and len(raw) <= MAX_VALUE_BYTES:
        try:
            return _canonical_endpoint(raw)
        except ValidationError:
            pass    # not canonical, or not valid: the full model decides, naming the field
    if len(raw) > MAX_VALUE_BYTES:
        raise ModelError(pk.key, None, f"value of {len(raw)} bytes is larger than the "
                                       f"{MAX_VALUE_BYTES} bytes allowed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelError(pk.key, None, f"value is not UTF-8 ({e.reason} at byte {e.start})") \
            from None
    if pk.kind is Kind.BGP_HOST_IP:
        parse, validate = _bare_or_json_string, _host_ip(pk.parts["version"])
    else:
        parse, validate = _DECODERS[pk.kind]
    if isinstance(validate, type):
        # Records: pydantic parses the JSON and validates in one pass.
        try:
            record = validate.model_validate_json(text)
        except ValidationError as e:
            raise ModelError(pk.key, _field_of(e), _pydantic_message(e)) from None
        _cross_check(pk, record)
        return record
    try:
        value = parse(text)
    except ValueError as e:
        kind = "JSON" if parse is _json else "value"
        raise ModelError(pk.key, None, f"malformed {kind}: {e}") from None
    try:
        return value if validate is None else validate(value)
    except ModelError:
        raise
    except ValueError as e:
        raise ModelError(pk.key, None, str(e)) from None


def encode(record) -> str:
    """The text to store for a record (the inverse of ``decode``)."""
    if isinstance(record, Record):
        return record.to_json()
    if isinstance(record, (tuple, list, dict, bool)):
        return json.dumps(list(record) if isinstance(record, tuple) else record)
    return str(record)
