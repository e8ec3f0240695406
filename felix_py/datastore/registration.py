"""The API orchestrators and felixctl write through.

Every write is validated by the same decoder the agents read with, before anything is
written (a ``ModelError`` names the key and field), and changes of more than one key are
one etcd transaction.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable

from felix_py import config as config_mod
from felix_py import model
from felix_py.datastore.client import Conflict, EtcdClient
from felix_py.datastore.keys import EndpointId, Kind, KeyLayout

PROFILE_KINDS = (Kind.PROFILE_RULES, Kind.PROFILE_TAGS, Kind.PROFILE_LABELS)


class NotFound(LookupError):
    pass


class Registry:
    def __init__(self, client: EtcdClient, layout: KeyLayout | None = None):
        self.client = client
        self.layout = layout or KeyLayout()

    # -- helpers -------------------------------------------------------------------------
    def validated(self, key: str, value: Any) -> tuple[str, Any]:
        """(text to store, decoded record); raises ModelError without writing anything."""
        text = model.encode(value)
        return text, model.decode(self.layout.parse(key), text.encode())

    def _read(self, key: str):
        raw = self.client.get(key)
        if raw is None:
            return None
        return model.decode(self.layout.parse(key), raw)

    def _write(self, pairs: Iterable[tuple[str, Any]], deletes: Iterable[str] = (),
               expect_absent: Iterable[str] = (), expect_present: Iterable[str] = ()) -> None:
        puts = [(k, self.validated(k, v)[0]) for k, v in pairs]
        self.client.atomic(puts, deletes, expect_absent, expect_present)

    def _list(self, prefix: str, kind: Kind) -> list[tuple[Any, Any]]:
        out = []
        for key, value, _ in self.client.get_prefix(prefix)[0]:
            try:
                pk = self.layout.parse(key)
            except ValueError:
                continue
            if pk.kind is not kind:
                continue
            try:
                out.append((pk, model.decode(pk, value)))
            except model.ModelError as e:
                out.append((pk, e))
        return out

    def mark_ready(self) -> None:
        self.client.put(self.layout.ready(), "true")

    # -- endpoints -----------------------------------------------------------------------
    def register_endpoint(self, eid: EndpointId, endpoint: model.Endpoint | dict,
                          create_only: bool = False) -> model.Endpoint:
        key = self.layout.endpoint(eid)
        text, record = self.validated(key, endpoint)
        self.client.atomic([(key, text)], expect_absent=[key] if create_only else [])
        return record

    def register_endpoints(self, items: Iterable[tuple[EndpointId, model.Endpoint | dict]]) -> int:
        """Many endpoints in one transaction; all are validated before any is written."""
        pairs = [(self.layout.endpoint(eid), ep) for eid, ep in items]
        self._write(pairs)
        return len(pairs)

    def update_endpoint(self, eid: EndpointId, **changes) -> model.Endpoint:
        """Change some fields of an existing endpoint (compare-and-swap on its value)."""
        key = self.layout.endpoint(eid)
        raw = self.client.get(key)
        if raw is None:
            raise NotFound(f"endpoint {eid} does not exist")
        current = json.loads(raw)
        current.update(changes)
        text, record = self.validated(key, current)
        t = self.client.transactions
        if not self.client.txn([t.value(key) == raw], [t.put(key, text)]):
            raise Conflict(f"endpoint {eid} changed while it was being updated; try again")
        return record

    def remove_endpoint(self, eid: EndpointId) -> None:
        key = self.layout.endpoint(eid)
        if self.client.get(key) is None:
            raise NotFound(f"endpoint {eid} does not exist")
        self.client.atomic(deletes=[key, self.layout.endpoint_status(eid)])

    def move_endpoint(self, eid: EndpointId, new_host: str) -> EndpointId:
        """Move a workload to another host, keeping its addresses: one transaction."""
        old_key = self.layout.endpoint(eid)
        raw = self.client.get(old_key)
        if raw is None:
            raise NotFound(f"endpoint {eid} does not exist")
        new = eid._replace(host=new_host)
        new_key = self.layout.endpoint(new)
        text, _ = self.validated(new_key, raw.decode())
        t = self.client.transactions
        ok = self.client.txn([t.value(old_key) == raw, t.version(new_key) == 0],
                             [t.delete(old_key), t.delete(self.layout.endpoint_status(eid)),
                              t.put(new_key, text)])
        if not ok:
            raise Conflict(f"endpoint {eid} changed, or {new} exists; nothing was moved")
        return new

    def get_endpoint(self, eid: EndpointId) -> model.Endpoint:
        ep = self._read(self.layout.endpoint(eid))
        if ep is None:
            raise NotFound(f"endpoint {eid} does not exist")
        return ep

    def list_endpoints(self, host: str | None = None) -> list[tuple[EndpointId, Any]]:
        prefix = self.layout.host_dir(host) if host else self.layout.dir("v1/host")
        return [(pk.endpoint_id, rec) for pk, rec in self._list(prefix, Kind.ENDPOINT)]

    def endpoint_status(self, eid: EndpointId) -> model.EndpointStatus | None:
        return self._read(self.layout.endpoint_status(eid))

    def endpoint_statuses(self, host: str | None = None) -> dict[EndpointId, Any]:
        prefix = self.layout.felix_host_dir(host) if host else self.layout.dir("felix/v1/host")
        return {pk.endpoint_id: rec for pk, rec in self._list(prefix, Kind.ENDPOINT_STATUS)}

    def host_status(self, host: str) -> model.HostStatus | None:
        return self._read(self.layout.host_status(host))

    def bgp_peer_statuses(self, host: str) -> dict[str, Any]:
        """Peer address -> the host agent's BGP status for it (a ModelError if unreadable)."""
        return {pk.parts["ip"]: rec for pk, rec in
                self._list(self.layout.felix_host_dir(host) + "bgp/peer/", Kind.BGP_PEER_STATUS)}

    # -- profiles ------------------------------------------------------------------------
    def set_profile(self, profile: str, rules: model.ProfileRules | dict | None = None,
                    tags: Iterable[str] | None = None, labels: dict | None = None) -> None:
        """Write the given parts of a profile (rules default to none) atomically."""
        pairs = [(self.layout.profile(Kind.PROFILE_RULES, profile),
                  rules if rules is not None else {"inbound_rules": [], "outbound_rules": []})]
        if tags is not None:
            pairs.append((self.layout.profile(Kind.PROFILE_TAGS, profile), list(tags)))
        if labels is not None:
            pairs.append((self.layout.profile(Kind.PROFILE_LABELS, profile), labels))
        self._write(pairs)

    def get_profile(self, profile: str) -> dict[str, Any]:
        out = {}
        for kind in PROFILE_KINDS:
            out[kind.value.split("_", 1)[1]] = self._read(self.layout.profile(kind, profile))
        if out["rules"] is None and out["tags"] is None and out["labels"] is None:
            raise NotFound(f"profile {profile!r} does not exist")
        return out

    def profile_exists(self, profile: str) -> bool:
        return self.client.get(self.layout.profile(Kind.PROFILE_RULES, profile)) is not None

    def remove_profile(self, profile: str) -> None:
        if not self.profile_exists(profile):
            raise NotFound(f"profile {profile!r} does not exist")
        self.client.atomic(deletes=[self.layout.profile(k, profile) for k in PROFILE_KINDS])

    def list_profiles(self) -> list[str]:
        return sorted(pk.parts["profile"] for pk, _ in
                      self._list(self.layout.dir("v1/policy/profile"), Kind.PROFILE_RULES))

    # -- pools ---------------------------------------------------------------------------
    def add_pool(self, cidr: str, masquerade: bool = False, disabled: bool = False,
                 block_size: int | None = None) -> model.Pool:

        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            raise model.ModelError(f"pool {cidr}", "cidr", f"{cidr!r} is not a valid "
                                   f"network CIDR ({e})") from None
        key = self.layout.build(Kind.POOL, version=net.version, cidr=str(net))
        value = {"cidr": str(net), "masquerade": masquerade, "disabled": disabled}
        if block_size is not None:
            value["block_size"] = block_size
        text, record = self.validated(key, value)
        for pk, other in self._list(self.layout.dir("v1/ipam", f"v{net.version}", "pool"), Kind.POOL):
            if isinstance(other, model.Pool) and pk.key != key and \
                    ipaddress.ip_network(other.cidr).overlaps(net):
                raise model.ModelError(key, "cidr", f"{net} overlaps the existing pool "
                                                    f"{other.cidr}")
        self.client.atomic([(key, text)])
        return record

    def remove_pool(self, cidr: str) -> None:

        net = ipaddress.ip_network(cidr, strict=False)
        key = self.layout.build(Kind.POOL, version=net.version, cidr=str(net))
        if not self.client.delete(key):
            raise NotFound(f"pool {cidr} does not exist")

    def list_pools(self) -> list[Any]:
        return [rec for _, rec in self._list(self.layout.dir("v1/ipam"), Kind.POOL)]

    # -- BGP -----------------------------------------------------------------------------
    def set_as_number(self, as_num: int | str, host: str | None = None) -> None:
        self._write([(self.layout.build(Kind.BGP_AS_NUM, host=host), as_num)])

    def set_bgp_mode(self, mode: str, host: str | None = None) -> None:
        self._write([(self.layout.build(Kind.BGP_MODE, host=host), mode)])

    def set_node_mesh(self, enabled: bool) -> None:
        self._write([(self.layout.build(Kind.BGP_NODE_MESH), {"enabled": enabled})])

    def set_host_bgp_address(self, host: str, ip: str, version: int = 4) -> None:
        self._write([(self.layout.build(Kind.BGP_HOST_IP, host=host, version=version), ip)])

    def set_rr_cluster_id(self, host: str, cluster_id: str) -> None:
        self._write([(self.layout.build(Kind.BGP_RR_CLUSTER_ID, host=host), cluster_id)])

    def add_bgp_peer(self, ip: str, as_num: int | str, host: str | None = None,
                     password: str | None = None, port: int | None = None) -> model.BgpPeer:

        try:
            version = ipaddress.ip_address(ip).version
        except ValueError:
            raise model.ModelError(f"peer {ip}", "ip", f"{ip!r} is not an IP address") from None
        key = self.layout.build(Kind.BGP_PEER, host=host, version=version, ip=ip)
        value = {"ip": ip, "as_num": as_num}
        if password is not None:
            value["password"] = password
        if port is not None:
            value["port"] = port
        text, record = self.validated(key, value)
        self.client.atomic([(key, text)])
        return record

    def remove_bgp_peer(self, ip: str, host: str | None = None) -> None:

        version = ipaddress.ip_address(ip).version
        key = self.layout.build(Kind.BGP_PEER, host=host, version=version, ip=ip)
        if not self.client.delete(key):
            raise NotFound(f"BGP peer {ip} does not exist" + (f" on host {host}" if host else ""))

    def add_route_reflector(self, ip: str, cluster_id: str) -> model.RouteReflector:

        version = ipaddress.ip_address(ip).version
        key = self.layout.build(Kind.BGP_ROUTE_REFLECTOR, version=version, ip=ip)
        text, record = self.validated(key, {"ip": ip, "cluster_id": cluster_id})
        self.client.atomic([(key, text)])
        return record

    def remove_route_reflector(self, ip: str) -> None:

        version = ipaddress.ip_address(ip).version
        if not self.client.delete(self.layout.build(Kind.BGP_ROUTE_REFLECTOR, version=version,
                                                    ip=ip)):
            raise NotFound(f"route reflector {ip} does not exist")

    # -- config --------------------------------------------------------------------------
    def set_config(self, name: str, value: str, host: str | None = None) -> None:
        setting = config_mod.BY_NAME.get(name)
        if setting is None:
            raise config_mod.ConfigError(f"unknown setting {name!r}; known: "
                                         f"{', '.join(config_mod.BY_NAME)}")
        if setting.local_only:
            raise config_mod.ConfigError(f"setting {name} is local to each host (environment "
                                         "or config file); it cannot be stored in etcd")
        config_mod.parse_value(name, value)
        self.client.put(self.layout.config(name, host), str(value))

    def get_config(self, host: str | None = None) -> dict[str, str]:
        prefix = self.layout.dir("v1/host", host, "config") if host else self.layout.dir("v1/config")
        return {pk.parts["name"]: rec for pk, rec in self._list(prefix, Kind.CONFIG)}

    def unset_config(self, name: str, host: str | None = None) -> None:
        if not self.client.delete(self.layout.config(name, host)):
            where = f" on host {host}" if host else " globally"
            raise NotFound(f"setting {name} is not set{where}")

    # -- compare-and-swap (read-modify-write by felixctl) --------------------------------
    def swap(self, changes: Iterable[tuple[str, bytes | None, Any]]) -> None:
        """Apply (key, raw value as read or None when absent, new value or None to delete)
        in one transaction that succeeds only if no key changed since it was read; raises
        Conflict otherwise.  Every new value is validated before anything is written."""
        t = self.client.transactions
        compare, ops = [], []
        for key, old, new in changes:
            compare.append(t.version(key) == 0 if old is None else t.value(key) == old)
            ops.append(t.delete(key) if new is None else t.put(key, self.validated(key, new)[0]))
        if ops and not self.client.txn(compare, ops):
            raise Conflict("the data changed while it was being written; try again")
