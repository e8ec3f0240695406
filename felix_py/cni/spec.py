"""The CNI protocol (spec 1.0.0, with 1.1.0's STATUS and GC): what the runtime hands the
plugin (``CNI_*`` variables, the network configuration on stdin), what the plugin answers
(the result and error JSON), and the error codes.  Pure: no etcd, no kernel.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_VERSION = "1.0.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# The first spec version that knows each command.
COMMAND_SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}

# Well-known error codes (the spec's).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
# felix-cni's own codes (the spec leaves 100 and up to plugins); docs/ipam.md lists them.
IPAM_EXHAUSTED = 100
ALREADY_ATTACHED = 101
CHECK_FAILED = 102
INTERNAL = 103

_CONTAINER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,10}$")
_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def to_json(self, version: str = DEFAULT_VERSION) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("."))


def version_at_least(version: str, minimum: str) -> bool:
    return _version_tuple(version) >= _version_tuple(minimum)


# -- environment -------------------------------------------------------------------------

@dataclass(frozen=True)
class Env:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)
    path: str = ""


def _valid_ifname(name: str) -> bool:
    return (0 < len(name) < 16 and name not in (".", "..")
            and not any(c in name for c in "/:") and not any(c.isspace() for c in name))


def parse_cni_args(text: str) -> dict[str, str]:
    """"K8S_POD_NAME=web;IP=10.0.0.5" -> {"K8S_POD_NAME": "web", "IP": "10.0.0.5"}."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_env(environ: Mapping[str, str]) -> Env:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_COMMAND is {command!r}; expected one of {', '.join(COMMANDS)}"
                       if command else "CNI_COMMAND is not set; felix-cni is a CNI plugin "
                       "run by a container runtime (see contrib/cni/README.md)")
    if command in ("VERSION", "STATUS", "GC"):
        return Env(command, path=environ.get("CNI_PATH", ""))
    container_id = environ.get("CNI_CONTAINERID", "")
    if not _CONTAINER_ID_RE.match(container_id):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID {container_id!r} is missing or invalid (letters, "
                       "digits, _ . -, starting with a letter or digit)")
    ifname = environ.get("CNI_IFNAME", "")
    if not _valid_ifname(ifname):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_IFNAME {ifname!r} is missing or not a valid interface name "
                       "(1-15 characters, no / : or spaces)")
    netns = environ.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK") and not netns:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is not set; {command} needs the "
                                            "path of the container's network namespace")
    return Env(command, container_id, netns, ifname,
               parse_cni_args(environ.get("CNI_ARGS", "")), environ.get("CNI_PATH", ""))


# -- network configuration ---------------------------------------------------------------

class IpamConf(BaseModel):
    """The ``ipam`` section: felix-cni allocates from felix-py's IPAM itself."""
    model_config = ConfigDict(extra="forbid")

    type: str = "felix-ipam"
    assign_ipv4: bool = True
    assign_ipv6: bool = False
    ipv4_pools: list[str] = []
    ipv6_pools: list[str] = []

    @field_validator("type")
    @classmethod
    def _own_ipam(cls, v: str) -> str:
        if v not in ("felix-ipam", "calico-ipam"):
            raise ValueError(f"ipam type {v!r} is not supported: felix-cni allocates from "
                             "felix-py's IPAM in etcd; use \"felix-ipam\"")
        return v


class NetConf(BaseModel):
    """The plugin's network configuration (one entry of a conflist, with the list's
    ``name`` and ``cniVersion`` filled in by the runtime)."""
    model_config = ConfigDict(extra="allow")

    cniVersion: str = DEFAULT_VERSION
    name: str
    type: str = "felix-cni"
    etcd_endpoints: Optional[str] = None
    etcd_prefix: str = "/calico"
    etcd_ca_cert_file: str = ""
    etcd_cert_file: str = ""
    etcd_key_file: str = ""
    hostname: Optional[str] = None
    orchestrator: str = "cni"
    interface_prefix: str = "cali"
    mtu: int = Field(1500, ge=68, le=65535)
    labels: dict[str, str] = {}
    profiles: Optional[list[str]] = None
    ipam: IpamConf = IpamConf()
    dns: Optional[dict] = None
    log_level: str = "warning"
    log_file: Optional[str] = None
    args: dict = {}
    runtimeConfig: dict = {}
    prevResult: Optional[dict] = None
    valid_attachments: Optional[list[dict]] = Field(None, alias="cni.dev/valid-attachments")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NETWORK_NAME_RE.match(v):
            raise ValueError(f"network name {v!r} is not valid (letters, digits, _ . -)")
        return v

    @field_validator("interface_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX_RE.match(v):
            raise ValueError(f"interface_prefix {v!r} must be 1-11 letters, digits, _ or -, "
                             "starting with a letter (the rest of the 15 characters is a hash)")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log_level {v!r} is not debug, info, warning or error")
        return v.lower()


def parse_netconf(data: bytes | str) -> NetConf:
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE_FAILURE, f"the network configuration on stdin is not JSON: {e}")
    if not isinstance(raw, dict):
        raise CniError(DECODE_FAILURE, "the network configuration on stdin is not a JSON object")
    version = raw.get("cniVersion", DEFAULT_VERSION)
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION,
                       f"cniVersion {version!r} is not supported; felix-cni supports "
                       f"{', '.join(SUPPORTED_VERSIONS)}")
    try:
        return NetConf.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "configuration"
        msg = err["msg"].removeprefix("Value error, ")
        raise CniError(INVALID_CONFIG, f"network configuration field {where!r}: {msg}") from None


def read_version(data: bytes | str) -> str:
    """The cniVersion a VERSION request asks in (its stdin may be empty)."""
    try:
        version = json.loads(data or "{}").get("cniVersion", DEFAULT_VERSION)
    except (ValueError, AttributeError):
        return DEFAULT_VERSION
    return version if version in SUPPORTED_VERSIONS else DEFAULT_VERSION


# -- per-container settings --------------------------------------------------------------

def _as_address(text: str, where: str) -> str:
    try:
        return str(ipaddress.ip_interface(text.strip()).ip)
    except ValueError:
        raise CniError(INVALID_CONFIG, f"{where}: {text!r} is not an IP address") from None


@dataclass(frozen=True)
class Request:
    """What one container asks for, from every place the conventions put it."""
    labels: dict[str, str]
    profiles: Optional[list[str]]
    ips: list[str]
    mac: Optional[str]


def container_request(conf: NetConf, env: Env) -> Request:
    """Labels, profiles, static addresses and MAC: the network configuration's defaults,
    overridden by ``args.cni`` (the conventions' "args in network config"), then by
    ``runtimeConfig`` (capabilities ``ips``, ``mac``, and felix-cni's ``labels`` and
    ``profiles``), then by ``CNI_ARGS`` (``FELIX_LABELS=k=v,k2=v2``,
    ``FELIX_PROFILES=a,b``, ``IP=10.0.0.5``, ``MAC=..``)."""
    labels = dict(conf.labels)
    profiles = list(conf.profiles) if conf.profiles is not None else None
    ips: list[str] = []
    mac = None
    cni_args = conf.args.get("cni", {}) if isinstance(conf.args, dict) else {}
    rc = conf.runtimeConfig or {}
    for where, source in (("args.cni", cni_args), ("runtimeConfig", rc)):
        if not isinstance(source, dict):
            raise CniError(INVALID_CONFIG, f"{where} is not a JSON object")
        got = source.get("labels")
        if isinstance(got, list):      # the conventions' [{"key": k, "value": v}, ...]
            try:
                got = {item["key"]: item["value"] for item in got}
            except (TypeError, KeyError):
                raise CniError(INVALID_CONFIG, f"{where}.labels entries need key and "
                                               "value") from None
        if got is not None:
            if not isinstance(got, dict):
                raise CniError(INVALID_CONFIG, f"{where}.labels is not an object")
            labels.update({str(k): str(v) for k, v in got.items()})
        if source.get("profiles") is not None:
            if not isinstance(source["profiles"], list):
                raise CniError(INVALID_CONFIG, f"{where}.profiles is not a list")
            profiles = [str(p) for p in source["profiles"]]
        if source.get("ips"):
            if not isinstance(source["ips"], list):
                raise CniError(INVALID_CONFIG, f"{where}.ips is not a list")
            ips = [_as_address(str(x), f"{where}.ips") for x in source["ips"]]
        if source.get("mac"):
            mac = str(source["mac"])
    a = env.args
    if a.get("FELIX_LABELS"):
        for item in a["FELIX_LABELS"].split(","):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CniError(INVALID_ENVIRONMENT,
                               f"CNI_ARGS FELIX_LABELS item {item!r} is not KEY=VALUE")
            labels[key] = value
    if a.get("FELIX_PROFILES"):
        profiles = [p for p in a["FELIX_PROFILES"].split(",") if p]
    if a.get("IP"):
        ips = [_as_address(x, "CNI_ARGS IP") for x in a["IP"].split(",") if x]
    if a.get("MAC"):
        mac = a["MAC"]
    if mac is not None and not _MAC_RE.match(mac):
        raise CniError(INVALID_CONFIG, f"MAC {mac!r} is not a MAC address like "
                                       "02:00:0a:41:00:05")
    return Request(labels, profiles, ips, mac)


# -- results -----------------------------------------------------------------------------

def result(version: str, interfaces: list[dict], ips: list[dict], routes: list[dict],
           dns: dict | None) -> dict:
    """The ADD result in the requested spec version (before 1.0.0 each IP names its
    version)."""
    out_ips = []
    for ip in ips:
        entry = dict(ip)
        if not version_at_least(version, "1.0.0"):
            entry["version"] = str(ipaddress.ip_interface(ip["address"]).version)
        out_ips.append(entry)
    out: dict[str, Any] = {"cniVersion": version, "interfaces": interfaces, "ips": out_ips,
                           "routes": routes}
    if dns:
        out["dns"] = dns
    return out


@dataclass(frozen=True)
class Expected:
    """What a CHECK verifies, read from prevResult."""
    host_ifname: str | None
    container_mac: str | None
    addresses: list[str]             # CIDRs on the container interface
    routes: list[tuple[str, str | None]]   # (dst, gw)


def expected_from(prev: dict | None, ifname: str, netns: str) -> Expected:
    if not isinstance(prev, dict):
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD) in "
                                       "the network configuration")
    try:
        interfaces = prev.get("interfaces") or []
        host = next((i for i in interfaces if not i.get("sandbox")), None)
        index = next((n for n, i in enumerate(interfaces)
                      if i.get("sandbox") and i.get("name") == ifname), None)
        container = interfaces[index] if index is not None else None
        addresses = [ip["address"] for ip in prev.get("ips") or []
                     if ip.get("interface") in (None, index)]
        routes = [(r["dst"], r.get("gw")) for r in prev.get("routes") or []]
    except (AttributeError, KeyError, TypeError) as e:
        raise CniError(DECODE_FAILURE, f"prevResult is not a CNI result ({e})") from None
    if container is None:
        raise CniError(CHECK_FAILED, f"prevResult lists no interface {ifname} in {netns}")
    return Expected(host.get("name") if host else None, container.get("mac"), addresses,
                    routes)
