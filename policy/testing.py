"""Test and benchmark support: feed a Store from plain values; evaluate policy on the model.

``Feeder(store).endpoint(host, wl, {...})`` encodes the value, decodes it through the model
exactly as an update from etcd would be, and files it in the store (errors included).
``Oracle(store).allowed(Packet(...))`` says what the profiles mean for one packet, straight
from the model and the rules in ``docs/policy.md``; tests hold the kernel's behaviour (and
the compiler's output) against it.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from felix_py import model
from felix_py.calc.store import Store
from felix_py.datastore.keys import EndpointId, Kind, KeyLayout
from felix_py.datastore.syncer import Update
from policy.selector import parse_selector


class Feeder:
    def __init__(self, store: Store, prefix: str = "/calico", orchestrator: str = "test"):
        self.store = store
        self.layout = KeyLayout(prefix)
        self.orchestrator = orchestrator

    def put(self, key: str, value) -> None:
        raw = value if isinstance(value, (bytes, str)) else json.dumps(value)
        raw = raw.encode() if isinstance(raw, str) else raw
        pk = self.layout.parse(key)
        try:
            self.store.apply(Update(key, pk, model.decode(pk, raw)))
        except model.ModelError as e:
            self.store.apply(Update(key, pk, error=e))

    def delete(self, key: str) -> None:
        self.store.apply(Update(key, self.layout.parse(key), deleted=True))

    def endpoint_key(self, host: str, workload: str, endpoint: str = "eth0") -> str:
        return self.layout.build(Kind.ENDPOINT, host=host, orchestrator=self.orchestrator,
                                 workload=workload, endpoint=endpoint)

    def endpoint_id(self, host: str, workload: str, endpoint: str = "eth0") -> EndpointId:
        return EndpointId(host, self.orchestrator, workload, endpoint)

    def endpoint(self, host: str, workload: str, value: dict, endpoint: str = "eth0") -> EndpointId:
        self.put(self.endpoint_key(host, workload, endpoint), value)
        return self.endpoint_id(host, workload, endpoint)

    def remove_endpoint(self, host: str, workload: str, endpoint: str = "eth0") -> None:
        self.delete(self.endpoint_key(host, workload, endpoint))

    def profile(self, pid: str, rules=None, tags=None, labels=None) -> None:
        for kind, value in ((Kind.PROFILE_RULES, rules), (Kind.PROFILE_TAGS, tags),
                            (Kind.PROFILE_LABELS, labels)):
            if value is not None:
                if isinstance(value, model.ProfileRules):
                    value = value.to_json()
                self.put(self.layout.build(kind, profile=pid), value)

    def group(self, name: str) -> None:
        from policy import groups
        rules, tags = groups.new_group(name)
        self.profile(name, rules=rules, tags=tags)


# -- a reference evaluator -----------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    protocol: str = "tcp"            # tcp | udp | icmp | icmpv6 | a number
    dst_port: int | None = None
    src_port: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None


_PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}


class Oracle:
    """What the profiles in a Store say about a packet, evaluated directly on the model
    (written apart from the compiler, so tests can compare the kernel against it)."""

    def __init__(self, store: Store):
        self.store = store
        self.by_ip: dict[str, model.Endpoint] = {}
        for ep in store.endpoints.values():
            if ep.state == "active":
                for a in ep.addresses:
                    self.by_ip[a] = ep

    def allowed(self, pkt: Packet) -> bool:
        src, dst = self.by_ip.get(pkt.src), self.by_ip.get(pkt.dst)
        if src is not None and not self.decide(src, "outbound", pkt):
            return False
        return dst is None or self.decide(dst, "inbound", pkt)

    def decide(self, ep: model.Endpoint, direction: str, pkt: Packet) -> bool:
        for pid in dict.fromkeys(ep.profile_ids):
            rules = self.store.profile_rules.get(pid)
            if rules is None:
                if any(k.endswith(f"/policy/profile/{pid}/rules") for k in self.store.errors):
                    return False
                continue
            rule_list = getattr(rules, f"{direction}_rules")
            known = {t for tags in self.store.profile_tags.values() for t in tags}
            for r in rule_list:
                if any(t and t not in known for t in (r.src_tag, r.dst_tag, r.not_src_tag,
                                                       r.not_dst_tag)):
                    return False
            for r in rule_list:
                if self._matches(r, pkt):
                    if r.action == "allow":
                        return True
                    if r.action == "deny":
                        return False
        return False

    def _tags(self, ip: str) -> set[str]:
        ep = self.by_ip.get(ip)
        return {t for pid in ep.profile_ids for t in self.store.profile_tags.get(pid, ())} \
            if ep else set()

    def _labels(self, ip: str) -> dict | None:
        ep = self.by_ip.get(ip)
        if ep is None:
            return None
        labels: dict = {}
        for pid in ep.profile_ids:
            labels.update(self.store.profile_labels.get(pid, {}))
        labels.update(ep.labels)
        return labels

    def _matches(self, r: model.Rule, p: Packet) -> bool:
        version = ipaddress.ip_address(p.src).version
        if r.version not in (None, version):
            return False
        proto = _PROTO.get(p.protocol, p.protocol)
        if r.protocol is not None and _PROTO.get(r.protocol, r.protocol) != proto:
            return False
        if r.not_protocol is not None and _PROTO.get(r.not_protocol, r.not_protocol) == proto:
            return False
        for side in ("src", "dst"):
            ip = getattr(p, side)
            addr = ipaddress.ip_address(ip)
            tests = {
                "net": lambda n: addr in ipaddress.ip_network(n),
                "tag": lambda t: t in self._tags(ip),
                "selector": lambda s: self._labels(ip) is not None
                and parse_selector(s).evaluate(self._labels(ip)),
                "ports": lambda ps: _in_ports(getattr(p, f"{side}_port"), ps),
            }
            for key, test in tests.items():
                value, negated = getattr(r, f"{side}_{key}"), getattr(r, f"not_{side}_{key}")
                if value is not None and not test(value):
                    return False
                if negated is not None and test(negated):
                    return False
        if r.icmp_type is not None and (p.icmp_type != r.icmp_type or (
                r.icmp_code is not None and p.icmp_code != r.icmp_code)):
            return False
        if r.not_icmp_type is not None and p.icmp_type == r.not_icmp_type and (
                r.not_icmp_code is None or p.icmp_code == r.not_icmp_code):
            return False
        return True


def _in_ports(port: int | None, ports) -> bool:
    if port is None:
        return False
    for spec in ports:
        if isinstance(spec, str):
            lo, hi = (int(x) for x in spec.split(":"))
            if lo <= port <= hi:
                return True
        elif port == spec:
            return True
    return False
