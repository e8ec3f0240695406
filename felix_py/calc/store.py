"""The agent's in-memory copy of the datastore, indexed for the calc layer.

``Store.apply(update)`` files one syncer update under its kind and records what changed in
``changes`` (drained once per batch by the agent).  A key whose value is invalid is removed
from the store and its error kept in ``errors`` so that status can be reported; the rest of
the store is untouched.  Pure data: no etcd, no kernel, no clock.

``Store.blocks`` holds every host's IPAM blocks (all of ``ipam/v2``) and keeps apart the
CIDRs of this host's (``Blocks.mine``), so that what this host owns is found without going
through the whole cluster's blocks on every batch (``calc.routes.owned_blocks``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from felix_py import model
from felix_py.datastore.keys import EndpointId, Kind, ParsedKey
from felix_py.datastore.syncer import Update


@dataclass
class Changes:
    """What changed since the last drain, by kind of thing."""
    endpoints: set[EndpointId] = field(default_factory=set)
    profiles: set[str] = field(default_factory=set)
    config: bool = False
    bgp: bool = False
    pools: bool = False
    ipam: bool = False

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.profiles or self.config or self.bgp or self.pools
                    or self.ipam)


@dataclass
class BgpSettings:
    """Everything under /calico/bgp/v1, split global / per host."""
    as_num: int | None = None
    mode: str | None = None
    node_mesh: model.NodeMesh | None = None
    peers: dict[str, model.BgpPeer] = field(default_factory=dict)              # global, by ip
    host_as_num: dict[str, int] = field(default_factory=dict)
    host_mode: dict[str, str] = field(default_factory=dict)
    host_peers: dict[str, dict[str, model.BgpPeer]] = field(default_factory=dict)
    host_ip_v4: dict[str, str] = field(default_factory=dict)
    host_ip_v6: dict[str, str] = field(default_factory=dict)
    rr_cluster_id: dict[str, str] = field(default_factory=dict)
    route_reflectors: dict[str, model.RouteReflector] = field(default_factory=dict)


class Blocks(dict):
    """IPAM blocks by CIDR, with ``mine``: the CIDRs of those affine to ``host``.

    ``mine`` follows every way of changing the dict (a block that arrives, changes host,
    loses its affinity, is deleted or replaced by an invalid value, ``clear()``, ...), so it
    holds exactly ``{cidr for cidr, b in self.items() if b.host == self.host}``.  Blocks are
    frozen records: a block's host changes only by putting a new record under its CIDR."""

    def __init__(self, host: str, *args, **kwargs):
        super().__init__()
        self.host = host
        self.mine: set[str] = set()
        self.update(*args, **kwargs)

    def __setitem__(self, cidr: str, block: model.Block) -> None:
        ours = block.host == self.host      # first: what is not a block changes nothing
        super().__setitem__(cidr, block)
        if ours:
            self.mine.add(cidr)
        else:
            self.mine.discard(cidr)

    def __delitem__(self, cidr: str) -> None:
        super().__delitem__(cidr)
        self.mine.discard(cidr)

    def pop(self, cidr: str, *default):
        self.mine.discard(cidr)
        return super().pop(cidr, *default)

    def popitem(self):
        cidr, block = super().popitem()
        self.mine.discard(cidr)
        return cidr, block

    def clear(self) -> None:
        super().clear()
        self.mine.clear()

    def setdefault(self, cidr: str, block=None):
        if cidr not in self:
            self[cidr] = block
        return self[cidr]

    def update(self, *args, **kwargs) -> None:
        for cidr, block in dict(*args, **kwargs).items():
            self[cidr] = block

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        # copy.copy() and pickle: a new index, not one shared with (or missing from) a copy.
        return type(self), (self.host, dict(self))


class Store:
    def __init__(self, hostname: str):
        self.hostname = hostname
        self.ready = False
        self.endpoints: dict[EndpointId, model.Endpoint] = {}
        self.local_endpoints: dict[EndpointId, model.Endpoint] = {}
        self.by_interface: dict[str, set[EndpointId]] = {}    # local endpoints by interface
        self.profile_rules: dict[str, model.ProfileRules] = {}
        self.profile_tags: dict[str, tuple[str, ...]] = {}
        self.profile_labels: dict[str, dict] = {}
        self.pools: dict[str, model.Pool] = {}
        self.global_config: dict[str, str] = {}
        self.host_config: dict[str, str] = {}
        self.bgp = BgpSettings()
        # Every host's blocks.  A plain dict put in its place (tests do) is still right,
        # only slower: owned_blocks() then goes through all of it.
        self.blocks: dict[str, model.Block] = Blocks(hostname)
        self.errors: dict[str, Exception] = {}           # key -> why its value was skipped
        self.endpoint_errors: dict[EndpointId, Exception] = {}
        self.profile_errors: dict[str, Exception] = {}   # profile id -> first error
        self.changes = Changes()

    def drain(self) -> Changes:
        out, self.changes = self.changes, Changes()
        return out

    # -- applying updates ----------------------------------------------------------------
    def apply(self, u: Update) -> None:
        self.errors.pop(u.key, None)
        if u.parsed is None:
            if u.error is not None:
                self.errors[u.key] = u.error
            return
        record = None if (u.deleted or u.error is not None) else u.record
        if u.error is not None:
            self.errors[u.key] = u.error
        handler = _HANDLERS.get(u.parsed.kind)
        if handler:
            handler(self, u.parsed, record, u.error)

    def _endpoint(self, pk: ParsedKey, rec, err) -> None:
        eid = pk.endpoint_id
        _put(self.endpoints, eid, rec)
        if eid.host == self.hostname:
            old = self.local_endpoints.get(eid)
            if old is not None and (rec is None or rec.name != old.name):
                users = self.by_interface.get(old.name, set())
                users.discard(eid)
                if not users:
                    self.by_interface.pop(old.name, None)
            if rec is not None:
                self.by_interface.setdefault(rec.name, set()).add(eid)
            _put(self.local_endpoints, eid, rec)
            _put(self.endpoint_errors, eid, err)
        self.changes.endpoints.add(eid)

    def _profile(self, pk: ParsedKey, rec, err) -> None:
        pid = pk.parts["profile"]
        table = {Kind.PROFILE_RULES: self.profile_rules, Kind.PROFILE_TAGS: self.profile_tags,
                 Kind.PROFILE_LABELS: self.profile_labels}[pk.kind]
        _put(table, pid, rec)
        if err is not None:
            self.profile_errors[pid] = err
        elif pk.kind is Kind.PROFILE_RULES or pid in self.profile_errors:
            # Any part of a profile that becomes valid again clears its error once no
            # other part of it is still invalid.
            self.profile_errors.pop(pid, None)
            prefix = pk.key.rsplit("/", 1)[0] + "/"
            for key, e in self.errors.items():
                if key.startswith(prefix):
                    self.profile_errors[pid] = e
        self.changes.profiles.add(pid)

    def _config(self, pk: ParsedKey, rec, err) -> None:
        table = self.host_config if pk.host is not None else self.global_config
        if pk.host is not None and pk.host != self.hostname:
            return
        _put(table, pk.parts["name"], rec)
        self.changes.config = True

    def _pool(self, pk: ParsedKey, rec, err) -> None:
        _put(self.pools, pk.parts["cidr"], rec)
        self.changes.pools = True

    def _block(self, pk: ParsedKey, rec, err) -> None:
        _put(self.blocks, pk.parts["cidr"], rec)
        self.changes.ipam = True

    def _ready(self, pk: ParsedKey, rec, err) -> None:
        self.ready = bool(rec)
        self.changes.config = True

    def _bgp(self, pk: ParsedKey, rec, err) -> None:
        b, host, kind = self.bgp, pk.host, pk.kind
        if kind is Kind.BGP_AS_NUM:
            if host is None:
                b.as_num = rec
            else:
                _put(b.host_as_num, host, rec)
        elif kind is Kind.BGP_MODE:
            if host is None:
                b.mode = rec
            else:
                _put(b.host_mode, host, rec)
        elif kind is Kind.BGP_NODE_MESH:
            b.node_mesh = rec
        elif kind is Kind.BGP_PEER:
            table = b.peers if host is None else b.host_peers.setdefault(host, {})
            _put(table, pk.parts["ip"], rec)
        elif kind is Kind.BGP_HOST_IP:
            _put(b.host_ip_v4 if pk.parts["version"] == 4 else b.host_ip_v6, host, rec)
        elif kind is Kind.BGP_RR_CLUSTER_ID:
            _put(b.rr_cluster_id, host, rec)
        elif kind is Kind.BGP_ROUTE_REFLECTOR:
            _put(b.route_reflectors, pk.parts["ip"], rec)
        self.changes.bgp = True


def _put(table: dict, key: Any, value: Any) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


_HANDLERS = {
    Kind.ENDPOINT: Store._endpoint,
    Kind.PROFILE_RULES: Store._profile,
    Kind.PROFILE_TAGS: Store._profile,
    Kind.PROFILE_LABELS: Store._profile,
    Kind.CONFIG: Store._config,
    Kind.POOL: Store._pool,
    Kind.IPAM_BLOCK: Store._block,
    Kind.READY: Store._ready,
    Kind.BGP_AS_NUM: Store._bgp,
    Kind.BGP_MODE: Store._bgp,
    Kind.BGP_NODE_MESH: Store._bgp,
    Kind.BGP_PEER: Store._bgp,
    Kind.BGP_HOST_IP: Store._bgp,
    Kind.BGP_RR_CLUSTER_ID: Store._bgp,
    Kind.BGP_ROUTE_REFLECTOR: Store._bgp,
}
