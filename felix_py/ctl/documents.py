"""Declarative resources: the documents of ``felixctl apply|create|delete|get``.

A document is ``{apiVersion: felix-py/v1, kind, metadata, spec}`` (``status`` is printed
by ``get`` and ignored on input).  ``translate`` turns one document into the etcd keys it
writes and owns, validating every value with the model the agents read with;
``check_references`` checks what documents say about each other and the datastore
(profiles an endpoint names, groups an export names, overlapping pools).  Both raise
``DocError`` naming the document's index and field; nothing touches etcd here, so a whole
file is validated before a single key is written.  ``from_snapshot`` goes the other way:
the datastore's keys as documents, in a form ``apply`` takes back unchanged.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from pydantic import ValidationError

from felix_py import config as config_mod
from felix_py import model
from felix_py.datastore.keys import EndpointId, KeyLayout, KeyLayoutError, Kind, ParsedKey
from policy import groups

API_VERSION = "felix-py/v1"
# In the order ``get`` prints them: what others refer to first.
KINDS = ("config", "bgpConfig", "bgpPeer", "routeReflector", "pool", "profile", "group",
         "endpoint")
_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec", "status"}

# kind -> (required metadata, optional metadata with defaults)
_METADATA: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "endpoint": (("host", "workload"), {"orchestrator": "cli", "endpoint": "eth0"}),
    "profile": (("name",), {}),
    "group": (("name",), {}),
    "pool": (("cidr",), {}),
    "bgpPeer": (("ip",), {"host": None}),
    "bgpConfig": ((), {"host": None}),
    "routeReflector": (("ip",), {}),
    "config": ((), {"host": None}),
}
_SPEC_FIELDS: dict[str, set[str] | None] = {
    "endpoint": None,                       # the model says which fields exist
    "profile": {"inbound_rules", "outbound_rules", "tags", "labels"},
    "group": {"exports", "connections"},
    "pool": None,
    "bgpPeer": None,
    "bgpConfig": {"as_num", "mode", "node_mesh", "ip_addr_v4", "ip_addr_v6", "rr_cluster_id"},
    "routeReflector": None,
    "config": None,
}
_BGP_GLOBAL_ONLY = {"node_mesh"}
_BGP_HOST_ONLY = {"ip_addr_v4", "ip_addr_v6", "rr_cluster_id"}


class DocError(ValueError):
    """A document that cannot be applied; ``index`` counts from 1 in file order."""

    def __init__(self, index: int, what: str, field: str | None, message: str):
        self.index, self.what, self.field, self.message = index, what, field, message
        where = f" field {field!r}:" if field else ""
        super().__init__(f"document {index}{f' ({what})' if what else ''}:{where} {message}")


@dataclass
class Resource:
    """One document, translated: what it writes and which keys it owns."""
    index: int
    kind: str
    metadata: dict
    puts: list[tuple[str, str]] = field(default_factory=list)   # (key, validated text)
    deletes: list[str] = field(default_factory=list)            # parts apply removes
    owned: list[str] = field(default_factory=list)              # what create/delete address
    profiles_named: list[tuple[str, str]] = field(default_factory=list)   # (field, profile)
    groups_named: list[tuple[str, str]] = field(default_factory=list)

    @property
    def what(self) -> str:
        return f"{self.kind} {name_of(self.kind, self.metadata)}"


def name_of(kind: str, meta: dict) -> str:
    if kind == "endpoint":
        return str(EndpointId(meta["host"], meta["orchestrator"], meta["workload"],
                              meta["endpoint"]))
    if kind in ("bgpConfig", "config"):
        return meta.get("host") or "global"
    if kind == "bgpPeer" and meta.get("host"):
        return f"{meta['host']}/{meta['ip']}"
    return str(meta.get("name") or meta.get("cidr") or meta.get("ip"))


# -- reading documents ----------------------------------------------------------------------

def translate(index: int, doc: Any, layout: KeyLayout, need_spec: bool = True) -> Resource:
    """Validate one document and turn it into keys.  With ``need_spec`` False (delete and
    get) only the metadata must be right."""
    if not isinstance(doc, dict):
        raise DocError(index, "", None, "a document is a mapping with kind, metadata and spec")
    unknown = sorted(set(doc) - _TOP_FIELDS)
    if unknown:
        raise DocError(index, "", unknown[0], f"unknown field (allowed: "
                                              f"{', '.join(sorted(_TOP_FIELDS))})")
    if doc.get("apiVersion", API_VERSION) != API_VERSION:
        raise DocError(index, "", "apiVersion", f"{doc['apiVersion']!r} is not {API_VERSION}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise DocError(index, "", "kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    meta = _metadata(index, kind, doc.get("metadata"))
    res = Resource(index, kind, meta)
    spec = doc.get("spec")
    if spec is None:
        if need_spec and kind not in ("bgpConfig", "config"):
            raise DocError(index, res.what, "spec", "missing")
        spec = {}
    if not isinstance(spec, dict):
        raise DocError(index, res.what, "spec", "must be a mapping")
    allowed = _SPEC_FIELDS[kind]
    if allowed is not None:
        extra = sorted(set(spec) - allowed)
        if extra:
            raise DocError(index, res.what, f"spec.{extra[0]}",
                           f"unknown field (allowed: {', '.join(sorted(allowed))})")
    try:
        _BUILDERS[kind](res, spec, layout, need_spec)
    except KeyLayoutError as e:
        raise DocError(index, res.what, "metadata", str(e)) from None
    return res


def _metadata(index: int, kind: str, meta: Any) -> dict:
    required, optional = _METADATA[kind]
    if meta is None and not required:
        meta = {}
    if not isinstance(meta, dict):
        raise DocError(index, kind, "metadata", "must be a mapping")
    extra = sorted(set(meta) - set(required) - set(optional))
    if extra:
        raise DocError(index, kind, f"metadata.{extra[0]}",
                       f"unknown field (allowed: {', '.join([*required, *optional])})")
    out = dict(optional)
    for name in required:
        if not meta.get(name):
            raise DocError(index, kind, f"metadata.{name}", "missing")
    for name, value in meta.items():
        if value is not None and (not isinstance(value, (str, int)) or isinstance(value, bool)):
            raise DocError(index, kind, f"metadata.{name}", "must be a string")
        out[name] = None if value is None else str(value)
    return out


def _put(res: Resource, layout: KeyLayout, key: str, value: Any, spec_field: str) -> None:
    """Validate ``value`` as the model reads ``key`` and store it in its canonical form
    (what the model makes of it), so that equal documents write equal bytes; errors name
    the document's field."""
    try:
        record = model.decode(layout.parse(key), model.encode(value).encode())
    except model.ModelError as e:
        where = spec_field + (f".{e.field}" if e.field else "")
        raise DocError(res.index, res.what, where, e.message) from None
    res.puts.append((key, model.encode(record)))


def _endpoint(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    m = res.metadata
    key = layout.endpoint(EndpointId(m["host"], m["orchestrator"], m["workload"], m["endpoint"]))
    res.owned.append(key)
    if need_spec:
        _put(res, layout, key, spec, "spec")
        res.profiles_named += [(f"spec.profile_ids.{i}", p)
                               for i, p in enumerate(spec.get("profile_ids") or [])]


def _profile_keys(layout: KeyLayout, name: str) -> list[str]:
    return [layout.profile(k, name) for k in (Kind.PROFILE_RULES, Kind.PROFILE_TAGS,
                                              Kind.PROFILE_LABELS)]


def _profile(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    res.owned = _profile_keys(layout, res.metadata["name"])
    rules_key, tags_key, labels_key = res.owned
    if not need_spec:
        return
    _put(res, layout, rules_key, {"inbound_rules": spec.get("inbound_rules") or [],
                                  "outbound_rules": spec.get("outbound_rules") or []}, "spec")
    for key, name in ((tags_key, "tags"), (labels_key, "labels")):
        if spec.get(name) is None:
            res.deletes.append(key)
        else:
            _put(res, layout, key, spec[name], f"spec.{name}")


def _group(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    name = res.metadata["name"]
    res.owned = _profile_keys(layout, name)
    rules_key, tags_key, _ = res.owned
    if not need_spec:
        return
    where = "metadata.name"
    try:
        rules, tags = groups.new_group(name)
        exports = spec.get("exports") or []
        if not isinstance(exports, list):
            raise DocError(res.index, res.what, "spec.exports", "must be a list")
        for i, exp in enumerate(exports):
            where = f"spec.exports.{i}"
            if not isinstance(exp, dict) or not exp.get("to") or \
                    set(exp) - {"to", "selector", "protocol", "ports"}:
                raise DocError(res.index, res.what, where, "an export is a mapping with "
                               "to, and optional selector, protocol, ports")
            rules = groups.add_export(rules, name, exp["to"], exp.get("selector"),
                                      exp.get("protocol", "tcp"), exp.get("ports") or None)
            res.groups_named.append((f"{where}.to", exp["to"]))
        connections = spec.get("connections") or []
        if not isinstance(connections, list):
            raise DocError(res.index, res.what, "spec.connections", "must be a list")
        for i, other in enumerate(connections):
            where = f"spec.connections.{i}"
            rules = groups.connect(rules, name, other)
            res.groups_named.append((where, other))
    except DocError:
        raise
    except ValidationError as e:     # the rule an export makes; named as the export's field
        loc, message = first_error(e)
        for rule_key, export_key in (("dst_ports", "ports"), ("dst_selector", "selector")):
            loc = loc and loc.replace(rule_key, export_key)
        raise DocError(res.index, res.what, f"{where}.{loc}" if loc else where, message) \
            from None
    except ValueError as e:          # GroupError, SelectorError
        raise DocError(res.index, res.what, where, str(e)) from None
    _put(res, layout, rules_key, rules, "spec")
    _put(res, layout, tags_key, tags, "metadata.name")


def _pool(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    cidr = res.metadata["cidr"]
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise DocError(res.index, res.what, "metadata.cidr",
                       f"{cidr!r} is not a network CIDR ({e})") from None
    res.metadata["cidr"] = str(net)
    key = layout.build(Kind.POOL, version=net.version, cidr=str(net))
    res.owned.append(key)
    if need_spec:
        if "cidr" in spec:
            raise DocError(res.index, res.what, "spec.cidr", "goes in metadata.cidr")
        _put(res, layout, key, {"cidr": str(net), **spec}, "spec")


def _ip_key(res: Resource, layout: KeyLayout, kind: Kind, host: str | None) -> str:
    ip = res.metadata["ip"]
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise DocError(res.index, res.what, "metadata.ip", f"{ip!r} is not an IP address") \
            from None
    res.metadata["ip"] = str(addr)
    return layout.build(kind, host=host, version=addr.version, ip=str(addr))


def _bgp_peer(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    key = _ip_key(res, layout, Kind.BGP_PEER, res.metadata["host"])
    res.owned.append(key)
    if need_spec:
        if "ip" in spec:
            raise DocError(res.index, res.what, "spec.ip", "goes in metadata.ip")
        _put(res, layout, key, {"ip": res.metadata["ip"], **spec}, "spec")


def _route_reflector(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    key = _ip_key(res, layout, Kind.BGP_ROUTE_REFLECTOR, None)
    res.owned.append(key)
    if need_spec:
        if "ip" in spec:
            raise DocError(res.index, res.what, "spec.ip", "goes in metadata.ip")
        _put(res, layout, key, {"ip": res.metadata["ip"], **spec}, "spec")


def bgp_setting_key(layout: KeyLayout, name: str, host: str | None) -> str:
    if name == "as_num":
        return layout.build(Kind.BGP_AS_NUM, host=host)
    if name == "mode":
        return layout.build(Kind.BGP_MODE, host=host)
    if name == "node_mesh":
        return layout.build(Kind.BGP_NODE_MESH)
    if name == "rr_cluster_id":
        return layout.build(Kind.BGP_RR_CLUSTER_ID, host=host)
    return layout.build(Kind.BGP_HOST_IP, host=host, version=int(name[-1]))


def _bgp_config(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    host = res.metadata["host"]
    names = (_SPEC_FIELDS["bgpConfig"] - (_BGP_GLOBAL_ONLY if host else _BGP_HOST_ONLY))
    for name in sorted(spec):
        if name not in names:
            scope = "per host (metadata.host)" if name in _BGP_HOST_ONLY else "global"
            raise DocError(res.index, res.what, f"spec.{name}", f"is a {scope} setting")
    # A document without spec addresses every setting of its scope (delete, get).
    for name in sorted(spec or names):
        key = bgp_setting_key(layout, name, host)
        res.owned.append(key)
        value = spec.get(name)
        if value is None:
            res.deletes.append(key)
        elif name == "node_mesh":
            if not isinstance(value, bool):
                raise DocError(res.index, res.what, "spec.node_mesh", "must be true or false")
            _put(res, layout, key, {"enabled": value}, "spec.node_mesh")
        else:
            _put(res, layout, key, str(value), f"spec.{name}")


def config_text(value: Any) -> str:
    """A config value as stored: YAML booleans and lists in the agent's spelling."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def _config(res: Resource, spec: dict, layout: KeyLayout, need_spec: bool) -> None:
    host = res.metadata["host"]
    names = spec or {s.name: None for s in config_mod.SETTINGS if not s.local_only}
    for name, value in names.items():
        setting = config_mod.BY_NAME.get(name)
        if setting is None:
            raise DocError(res.index, res.what, f"spec.{name}", "unknown setting (see "
                           "`felixctl config list`)")
        if setting.local_only:
            raise DocError(res.index, res.what, f"spec.{name}", "is local to each host "
                           "(environment or config file) and cannot be stored in etcd")
        key = layout.config(name, host)
        res.owned.append(key)
        if value is None:
            res.deletes.append(key)
            continue
        try:
            config_mod.parse_value(name, config_text(value))
        except config_mod.ConfigError as e:
            raise DocError(res.index, res.what, f"spec.{name}", str(e)) from None
        res.puts.append((key, config_text(value)))


_BUILDERS = {"endpoint": _endpoint, "profile": _profile, "group": _group, "pool": _pool,
             "bgpPeer": _bgp_peer, "bgpConfig": _bgp_config,
             "routeReflector": _route_reflector, "config": _config}


def first_error(err: ValidationError) -> tuple[str | None, str]:
    """(field path, message) of pydantic's first complaint."""
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or None
    return loc, e["msg"].removeprefix("Value error, ")


def check_references(resources: list[Resource], profiles: Iterable[str],
                     pools: Iterable[str]) -> None:
    """What the documents say about each other and the datastore: no key written twice,
    profiles and groups named exist (already or in the file), pools do not overlap."""
    writer: dict[str, Resource] = {}
    for res in resources:
        for key in [k for k, _ in res.puts] + res.deletes:
            first = writer.setdefault(key, res)
            if first is not res:
                raise DocError(res.index, res.what, None,
                               f"writes the same key as document {first.index} ({first.what})")
    known = set(profiles) | {r.metadata["name"] for r in resources
                             if r.kind in ("profile", "group")}
    for res in resources:
        for where, name in res.profiles_named:
            if name not in known:
                raise DocError(res.index, res.what, where, f"unknown profile {name!r}: define "
                               "it in this file or create it first")
        for where, name in res.groups_named:
            if name not in known:
                raise DocError(res.index, res.what, where, f"unknown group {name!r}: define it "
                               "in this file or create it first")
    mine = [(r, ipaddress.ip_network(r.metadata["cidr"])) for r in resources if r.kind == "pool"]
    others = [ipaddress.ip_network(p) for p in pools]
    for i, (res, net) in enumerate(mine):
        for other in others + [n for _, n in mine[:i]]:
            if other != net and other.version == net.version and other.overlaps(net):
                raise DocError(res.index, res.what, "metadata.cidr",
                               f"{net} overlaps the pool {other}")


# -- writing documents ----------------------------------------------------------------------

def document(kind: str, metadata: dict, spec: Any, status: dict | None = None) -> dict:
    doc = {"apiVersion": API_VERSION, "kind": kind,
           "metadata": {k: v for k, v in metadata.items() if v is not None}, "spec": spec}
    if status:
        doc["status"] = status
    return doc


def _record_spec(rec: Any, raw: bytes | None = None) -> Any:
    if isinstance(rec, model.ModelError):
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:
            return raw.decode("utf-8", "replace") if raw is not None else None
    if isinstance(rec, model.Record):
        return json.loads(rec.to_json())
    return rec


def endpoint_document(eid: EndpointId, rec: Any, status: Any, raw: bytes | None = None) -> dict:
    st = {}
    if isinstance(rec, model.ModelError):
        st["error"] = str(rec)
    if isinstance(status, model.EndpointStatus):
        st.update(json.loads(status.to_json()))
    spec = _record_spec(rec, raw)
    if isinstance(spec, dict):
        spec = {k: v for k, v in spec.items() if v not in ([], {})}
    return document("endpoint", eid._asdict(), spec, st or None)


def profile_spec(parts: dict) -> dict:
    """Profile parts (rules / tags / labels, each a record, an error or None) as a spec."""
    spec: dict[str, Any] = {}
    rules = parts.get("rules")
    if isinstance(rules, model.ProfileRules):
        spec["inbound_rules"] = [json.loads(r.to_json()) for r in rules.inbound_rules]
        spec["outbound_rules"] = [json.loads(r.to_json()) for r in rules.outbound_rules]
    if isinstance(parts.get("tags"), tuple):
        spec["tags"] = list(parts["tags"])
    if isinstance(parts.get("labels"), dict):
        spec["labels"] = parts["labels"]
    return spec


def group_spec(name: str, parts: dict) -> dict | None:
    """The group document's spec of a profile, or None when the profile is not a plain
    group (its own tag, its members connected, no other rules, no labels)."""
    rules = parts.get("rules")
    if not isinstance(rules, model.ProfileRules) or parts.get("tags") != (name,) or \
            parts.get("labels"):
        return None
    try:
        desc = groups.describe(rules, name)
    except ValueError:
        return None
    if not desc["members_connected"] or desc["other_rules"]:
        return None
    spec: dict[str, Any] = {}
    if desc["exports"]:
        # protocol stays even when None: left out, apply would read it as tcp.
        spec["exports"] = [{k: v for k, v in e.items() if not (k == "ports" and not v)}
                           for e in desc["exports"]]
    if desc["connections"]:
        spec["connections"] = desc["connections"]
    return spec


def _errors(items) -> dict | None:
    errs = [str(rec) for _, rec, _ in items if isinstance(rec, model.ModelError)]
    return {"errors": errs} if errs else None


def from_snapshot(items: list[tuple[ParsedKey, Any, bytes]], kinds: Iterable[str] = KINDS,
                  prefer_groups: bool = True) -> list[dict]:
    """The datastore's keys as documents, kind by kind.  A profile that is a plain group is
    given as a group where both kinds are asked for and ``prefer_groups`` is set."""
    kinds = list(kinds)
    by_kind: dict[Kind, list] = {}
    for item in items:
        by_kind.setdefault(item[0].kind, []).append(item)
    out: list[dict] = []
    statuses = {pk.endpoint_id: rec for pk, rec, _ in by_kind.get(Kind.ENDPOINT_STATUS, [])}
    profiles: dict[str, dict] = {}
    for kind, part in ((Kind.PROFILE_RULES, "rules"), (Kind.PROFILE_TAGS, "tags"),
                       (Kind.PROFILE_LABELS, "labels")):
        for pk, rec, raw in by_kind.get(kind, []):
            profiles.setdefault(pk.parts["profile"], {})[part] = rec
            profiles[pk.parts["profile"]].setdefault("_items", []).append((pk, rec, raw))
    for kind in kinds:
        if kind == "endpoint":
            out += [endpoint_document(pk.endpoint_id, rec, statuses.get(pk.endpoint_id), raw)
                    for pk, rec, raw in by_kind.get(Kind.ENDPOINT, [])]
        elif kind in ("profile", "group"):
            for name, parts in sorted(profiles.items()):
                gspec = group_spec(name, parts)
                if kind == "group" and gspec is not None:
                    out.append(document("group", {"name": name}, gspec))
                elif kind == "profile" and not (gspec is not None and prefer_groups
                                                and "group" in kinds):
                    out.append(document("profile", {"name": name}, profile_spec(parts),
                                        _errors(parts["_items"])))
        elif kind == "pool":
            out += [document("pool", {"cidr": pk.parts["cidr"]},
                             {k: v for k, v in (_record_spec(rec, raw) or {}).items()
                              if k != "cidr"} if isinstance(rec, model.Pool) else
                             _record_spec(rec, raw), _errors([(pk, rec, raw)]))
                    for pk, rec, raw in by_kind.get(Kind.POOL, [])]
        elif kind in ("bgpPeer", "routeReflector"):
            k = Kind.BGP_PEER if kind == "bgpPeer" else Kind.BGP_ROUTE_REFLECTOR
            for pk, rec, raw in by_kind.get(k, []):
                spec = _record_spec(rec, raw)
                if isinstance(spec, dict):
                    spec.pop("ip", None)
                out.append(document(kind, {"ip": pk.parts["ip"], "host": pk.host}, spec,
                                    _errors([(pk, rec, raw)])))
        elif kind == "bgpConfig":
            out += _bgp_documents(by_kind)
        elif kind == "config":
            scopes: dict[str | None, dict] = {}
            for pk, rec, raw in by_kind.get(Kind.CONFIG, []):
                scopes.setdefault(pk.host, {})[pk.parts["name"]] = rec
            out += [document("config", {"host": host}, dict(sorted(spec.items())))
                    for host, spec in sorted(scopes.items(), key=lambda x: x[0] or "")]
    return out


_BGP_NAMES = {Kind.BGP_AS_NUM: "as_num", Kind.BGP_MODE: "mode", Kind.BGP_NODE_MESH: "node_mesh",
              Kind.BGP_RR_CLUSTER_ID: "rr_cluster_id"}


def _bgp_documents(by_kind: dict) -> list[dict]:
    scopes: dict[str | None, dict] = {}
    errors: dict[str | None, list] = {}
    for kind in (*_BGP_NAMES, Kind.BGP_HOST_IP):
        for pk, rec, raw in by_kind.get(kind, []):
            name = _BGP_NAMES.get(kind) or f"ip_addr_v{pk.parts['version']}"
            if isinstance(rec, model.ModelError):
                errors.setdefault(pk.host, []).append(str(rec))
                continue
            if rec is None:     # an empty host address: the host has none of that version
                continue
            scopes.setdefault(pk.host, {})[name] = rec.enabled if kind is Kind.BGP_NODE_MESH \
                else rec
    hosts = sorted(set(scopes) | set(errors), key=lambda h: h or "")
    return [document("bgpConfig", {"host": h}, scopes.get(h, {}),
                     {"errors": errors[h]} if h in errors else None) for h in hosts]
