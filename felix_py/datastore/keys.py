"""The etcd key layout: building and parsing every key felix-py reads or writes.

All keys live under one configurable prefix (default ``/calico``) and follow Calico's v1
layout (``docs/datamodel.md`` is the reference).  A key is described by a template such as
``v1/host/{host}/config/{name}``; the same table drives both directions, so a key that is
built can always be parsed back.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

DEFAULT_PREFIX = "/calico"


class Kind(enum.Enum):
    READY = "ready"
    CONFIG = "config"                      # global, or per host when parts has "host"
    ENDPOINT = "endpoint"
    PROFILE_RULES = "profile_rules"
    PROFILE_TAGS = "profile_tags"
    PROFILE_LABELS = "profile_labels"
    POOL = "pool"
    HOST_STATUS = "host_status"
    ENDPOINT_STATUS = "endpoint_status"
    BGP_PEER_STATUS = "bgp_peer_status"
    BGP_AS_NUM = "bgp_as_num"              # global or per host
    BGP_MODE = "bgp_mode"                  # global or per host
    BGP_NODE_MESH = "bgp_node_mesh"
    BGP_PEER = "bgp_peer"                  # global or per host; parts has "version"
    BGP_HOST_IP = "bgp_host_ip"            # parts has "version"
    BGP_RR_CLUSTER_ID = "bgp_rr_cluster_id"
    BGP_ROUTE_REFLECTOR = "bgp_route_reflector"
    IPAM_BLOCK = "ipam_block"
    IPAM_AFFINITY = "ipam_affinity"
    IPAM_HANDLE = "ipam_handle"
    IPAM_CONFIG = "ipam_config"


# (kind, template).  "{v}" stands for v4|v6 (so "ip{v}" is ipv4|ipv6), "{cidr}" segments
# carry a CIDR with "/" written as "-".
_TEMPLATES: list[tuple[Kind, str]] = [
    (Kind.READY, "v1/Ready"),
    (Kind.CONFIG, "v1/config/{name}"),
    (Kind.CONFIG, "v1/host/{host}/config/{name}"),
    (Kind.ENDPOINT, "v1/host/{host}/workload/{orchestrator}/{workload}/endpoint/{endpoint}"),
    (Kind.PROFILE_RULES, "v1/policy/profile/{profile}/rules"),
    (Kind.PROFILE_TAGS, "v1/policy/profile/{profile}/tags"),
    (Kind.PROFILE_LABELS, "v1/policy/profile/{profile}/labels"),
    (Kind.POOL, "v1/ipam/{v}/pool/{cidr}"),
    (Kind.HOST_STATUS, "felix/v1/host/{host}/status"),
    (Kind.ENDPOINT_STATUS,
     "felix/v1/host/{host}/workload/{orchestrator}/{workload}/endpoint/{endpoint}"),
    (Kind.BGP_PEER_STATUS, "felix/v1/host/{host}/bgp/peer/{ip}"),
    (Kind.BGP_AS_NUM, "bgp/v1/global/as_num"),
    (Kind.BGP_AS_NUM, "bgp/v1/host/{host}/as_num"),
    (Kind.BGP_MODE, "bgp/v1/global/mode"),
    (Kind.BGP_MODE, "bgp/v1/host/{host}/mode"),
    (Kind.BGP_NODE_MESH, "bgp/v1/global/node_mesh"),
    (Kind.BGP_PEER, "bgp/v1/global/peer_{v}/{ip}"),
    (Kind.BGP_PEER, "bgp/v1/host/{host}/peer_{v}/{ip}"),
    (Kind.BGP_HOST_IP, "bgp/v1/host/{host}/ip_addr_{v}"),
    (Kind.BGP_RR_CLUSTER_ID, "bgp/v1/host/{host}/rr_cluster_id"),
    (Kind.BGP_ROUTE_REFLECTOR, "bgp/v1/rr_{v}/{ip}"),
    (Kind.IPAM_BLOCK, "ipam/v2/assignment/ip{v}/block/{cidr}"),
    (Kind.IPAM_AFFINITY, "ipam/v2/host/{host}/ip{v}/block/{cidr}"),
    (Kind.IPAM_HANDLE, "ipam/v2/handle/{handle}"),
    (Kind.IPAM_CONFIG, "ipam/v2/config"),
]


class KeyLayoutError(ValueError):
    """A key that is not part of the layout."""


class EndpointId(NamedTuple):
    host: str
    orchestrator: str
    workload: str
    endpoint: str

    def __str__(self) -> str:
        return f"{self.host}/{self.orchestrator}/{self.workload}/{self.endpoint}"


class ParsedKey(NamedTuple):
    key: str
    kind: Kind
    parts: dict

    @property
    def host(self) -> str | None:
        return self.parts.get("host")

    @property
    def endpoint_id(self) -> EndpointId:
        p = self.parts
        return EndpointId(p["host"], p["orchestrator"], p["workload"], p["endpoint"])


def cidr_to_segment(cidr: str) -> str:
    return str(cidr).replace("/", "-")


def segment_to_cidr(segment: str) -> str:
    addr, sep, length = segment.rpartition("-")
    if not sep or not addr or not length.isdigit():
        raise KeyLayoutError(f"{segment!r} is not a CIDR written as <address>-<length>")
    return f"{addr}/{length}"


def _split_template(template: str) -> list[tuple[str, str | None, str]]:
    """Each segment as (literal prefix, placeholder name or None, literal suffix)."""
    out = []
    for seg in template.split("/"):
        if "{" in seg:
            pre, rest = seg.split("{", 1)
            name, post = rest.split("}", 1)
            out.append((pre, name, post))
        else:
            out.append((seg, None, ""))
    return out


def _template_regex(segs) -> re.Pattern:
    parts = []
    for pre, name, post in segs:
        if name is None:
            parts.append(re.escape(pre))
        else:
            value = "v[46]" if name == "v" else "[^/]+"
            parts.append(f"{re.escape(pre)}(?P<{name}>{value}){re.escape(post)}")
    return re.compile("/".join(parts) + r"\Z")


_COMPILED = [(kind, _split_template(t)) for kind, t in _TEMPLATES]
_ENDPOINT = Kind.ENDPOINT       # a plain global: an Enum member lookup costs more
_tuple_new = tuple.__new__      # builds a NamedTuple without its Python-level __new__
#                                 (the syncer's Update too)
_BY_LEN: dict[int, list] = {}
for _kind, _segs in _COMPILED:
    _BY_LEN.setdefault(len(_segs), []).append((_kind, _template_regex(_segs)))


class KeyLayout:
    """Builds and parses keys under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        prefix = "/" + prefix.strip("/")
        self.prefix = prefix
        self._root = prefix + "/"

    # -- parsing ---------------------------------------------------------------------------
    def parse(self, key: str | bytes) -> ParsedKey:
        if isinstance(key, bytes):
            try:
                key = key.decode("utf-8")
            except UnicodeDecodeError:
                raise KeyLayoutError(f"key {key!r} is not UTF-8") from None
        if not key.startswith(self._root):
            raise KeyLayoutError(f"key {key!r} is outside the prefix {self.prefix}")
        rest = key[len(self._root):]
        segs = rest.split("/")
        if (len(segs) == 8 and segs[0] == "v1" and segs[1] == "host" and segs[3] == "workload"
                and segs[6] == "endpoint" and all(segs)):
            # Endpoint keys are most of a snapshot: the template's regex, by hand, ~3x faster
            # (tests/unit/test_keys_config.py holds the two to the same result).
            return _tuple_new(ParsedKey, (key, _ENDPOINT, {
                "host": segs[2], "orchestrator": segs[4], "workload": segs[5],
                "endpoint": segs[7]}))
        if not all(segs):
            raise KeyLayoutError(f"key {key!r} has an empty path segment")
        for kind, regex in _BY_LEN.get(len(segs), ()):
            m = regex.match(rest)
            if m is None:
                continue
            parts = m.groupdict()
            if "v" in parts:
                parts["version"] = int(parts.pop("v")[1])
            if "cidr" in parts:
                parts["cidr"] = segment_to_cidr(parts["cidr"])
            return ParsedKey(key, kind, parts)
        raise KeyLayoutError(f"key {key!r} is not part of the felix-py key layout")

    # -- building --------------------------------------------------------------------------
    def build(self, kind: Kind, **parts) -> str:
        """The key of ``kind``; templates with a ``{host}`` segment are chosen when
        ``host`` is given, the global ones otherwise."""
        want_host = parts.get("host") is not None
        if not want_host:
            parts.pop("host", None)
        for k, segs in _COMPILED:
            if k is not kind:
                continue
            names = {name for _, name, _ in segs if name}
            if ("host" in names) != want_host:
                continue
            out = []
            for pre, name, post in segs:
                if name is None:
                    out.append(pre)
                    continue
                if name == "v":
                    value = f"v{int(parts.get('version', 4))}"
                elif name == "cidr":
                    value = cidr_to_segment(parts["cidr"])
                else:
                    value = str(parts[name])
                if not value or "/" in value:
                    raise KeyLayoutError(f"{name}={value!r} cannot be a key segment")
                out.append(f"{pre}{value}{post}")
            return self._root + "/".join(out)
        raise KeyLayoutError(f"no {kind.value} key {'with' if want_host else 'without'} a host")

    # Named builders for the keys used most.
    def ready(self) -> str:
        return self.build(Kind.READY)

    def config(self, name: str, host: str | None = None) -> str:
        return self.build(Kind.CONFIG, name=name, host=host)

    def endpoint(self, eid: EndpointId) -> str:
        return self.build(Kind.ENDPOINT, **eid._asdict())

    def endpoint_status(self, eid: EndpointId) -> str:
        return self.build(Kind.ENDPOINT_STATUS, **eid._asdict())

    def host_status(self, host: str) -> str:
        return self.build(Kind.HOST_STATUS, host=host)

    def profile(self, kind: Kind, profile: str) -> str:
        return self.build(kind, profile=profile)

    # Directory prefixes (ending in "/") for range reads and watches.
    def dir(self, *segments: str) -> str:
        return self._root + "".join(s.strip("/") + "/" for s in segments)

    def host_dir(self, host: str) -> str:
        return self.dir("v1/host", host)

    def felix_host_dir(self, host: str) -> str:
        return self.dir("felix/v1/host", host)

    def bgp_host_dir(self, host: str) -> str:
        return self.dir("bgp/v1/host", host)

    @property
    def agent_watch_prefixes(self) -> list[str]:
        """What an agent watches: the data model, BGP settings and IPAM; never the status
        tree, which every agent writes to constantly."""
        return [self.dir("v1"), self.dir("bgp/v1"), self.dir("ipam/v2")]
