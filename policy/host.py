"""The desired chains and ipsets of one host, kept up to date from the Store batch by batch.

``HostPolicy.update(store, changes)`` recomputes only what the changed endpoints and
profiles touch and records what it changed in ``dirty_chains`` / ``dirty_sets`` (a dirty
name missing from ``chains`` / ``sets`` is to be removed).  Pure: no kernel, no clock.

What is built (per IP family; the layout is explained in ``docs/policy.md``):

- ``felix-INPUT``/``FORWARD``/``OUTPUT``, the targets of the hooks in the built-in chains;
- ``felix-wl-to-host``: traffic from a workload to its own host;
- dispatch trees ``felix-fromd``/``felix-tod`` keyed by interface name; the from-tree
  matches each endpoint's own addresses (and MAC), so a spoofed source falls through to DROP;
- ``felix-from-<iface>`` / ``felix-to-<iface>`` per local endpoint: its profiles in order;
- ``felix-pi-<profile>`` / ``felix-po-<profile>`` per profile a local endpoint uses;
- ipsets of the addresses of every endpoint (on any host) carrying a tag, or matching a
  selector, that some compiled rule refers to.
"""

from __future__ import annotations

import bisect
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from felix_py import model
from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId
from policy import names
from policy.rules import (DROP_UNLESS_ACCEPTED, RETURN_IF_ACCEPTED, Compiled, compile_rules,
                          deny_all)
from policy.selector import parse_selector

DIRECTIONS = ("inbound", "outbound")
DISPATCH_LEAF = 32      # a dispatch chain with more interfaces than this is split by name


@dataclass(frozen=True)
class Settings:
    interface_prefixes: tuple[str, ...] = ("cali",)
    endpoint_to_host_action: str = "DROP"
    failsafe_inbound: tuple[tuple[str, int], ...] = (("tcp", 22),)
    failsafe_outbound: tuple[tuple[str, int], ...] = (("tcp", 2379), ("tcp", 2380))
    families: tuple[int, ...] = (4, 6)

    @classmethod
    def from_config(cls, config, families: tuple[int, ...] = (4, 6)) -> "Settings":
        return cls(interface_prefixes=tuple(config["InterfacePrefix"]),
                   endpoint_to_host_action=config["DefaultEndpointToHostAction"],
                   failsafe_inbound=tuple(config["FailsafeInboundHostPorts"]),
                   failsafe_outbound=tuple(config["FailsafeOutboundHostPorts"]),
                   families=families)


@dataclass(frozen=True)
class SetSpec:
    family: int
    members: frozenset[str]


@dataclass(frozen=True)
class _Ep:
    """What policy needs to know of one endpoint."""
    iface: str
    mac: str | None
    profiles: tuple[str, ...]
    nets: tuple[tuple[str, ...], tuple[str, ...]]       # (ipv4_nets, ipv6_nets)
    labels: tuple = ()                                  # effective labels, sorted items

    def addresses(self, family: int) -> Iterable[str]:
        return (n.split("/")[0] for n in self.nets[0 if family == 4 else 1])


def _effective_labels(rec: model.Endpoint, store: Store) -> tuple:
    """Labels of the endpoint's profiles, in order, overridden by the endpoint's own."""
    labels: dict = {}
    for pid in rec.profile_ids:
        labels.update(store.profile_labels.get(pid, {}))
    labels.update(rec.labels)
    return tuple(sorted(labels.items()))


def _ep_of(rec: model.Endpoint | None, store: Store) -> _Ep | None:
    if rec is None or rec.state != "active":
        return None
    return _Ep(iface=rec.name, mac=rec.mac, profiles=tuple(dict.fromkeys(rec.profile_ids)),
               nets=(tuple(rec.ipv4_nets), tuple(rec.ipv6_nets)),
               labels=_effective_labels(rec, store))


def rules_error(store: Store, pid: str) -> Exception | None:
    """Why the profile's rules value was rejected, if it was."""
    if pid not in store.profile_errors:
        return None
    suffix = f"/policy/profile/{pid}/rules"
    return next((e for k, e in store.errors.items() if k.endswith(suffix)), None)


def mentioned_tags(rules: model.ProfileRules | None) -> set[str]:
    out = set()
    for r in (rules.inbound_rules + rules.outbound_rules) if rules else ():
        out.update(t for t in (r.src_tag, r.dst_tag, r.not_src_tag, r.not_dst_tag) if t)
    return out


@dataclass
class _Work:
    """What one update found to recompute."""
    tags: set = field(default_factory=set)
    selectors: set = field(default_factory=set)
    profiles: set = field(default_factory=set)
    ifaces: set = field(default_factory=set)          # local interfaces whose claims changed
    endpoints: set = field(default_factory=set)       # local endpoints to re-check for problems


class HostPolicy:
    def __init__(self, hostname: str, settings: Settings = Settings()):
        self.hostname = hostname
        self.settings = settings
        self.families = settings.families
        self.chains: dict[int, dict[str, tuple[str, ...]]] = {f: {} for f in self.families}
        self.sets: dict[str, SetSpec] = {}
        self.dirty_chains: dict[int, set[str]] = {f: set() for f in self.families}
        self.dirty_sets: set[str] = set()
        self.profile_problems: dict[str, str] = {}
        self.endpoint_problems: dict[EndpointId, tuple[str, str]] = {}

        self._eps: dict[EndpointId, _Ep] = {}                  # every active endpoint
        self._profile_eps: dict[str, set[EndpointId]] = defaultdict(set)
        self._profile_tags: dict[str, tuple[str, ...]] = {}
        self._profile_labels: dict[str, dict] = {}
        self._tag_profiles: dict[str, set[str]] = defaultdict(set)
        self._local: dict[EndpointId, _Ep] = {}                # active endpoints of this host
        self._claims: dict[str, set[EndpointId]] = defaultdict(set)  # iface -> local endpoints
        self._owners: dict[str, EndpointId] = {}               # iface -> endpoint served
        self._served: dict[str, _Ep] = {}                      # iface -> that endpoint
        self._dispatch = {f: (_DispatchTree(names.FROM_DISPATCH, "-i"),
                              _DispatchTree(names.TO_DISPATCH, "-o")) for f in self.families}
        self._active = Counter()                               # profile -> owners using it
        self._tag_users: dict[str, set[str]] = defaultdict(set)  # tag -> active profiles naming it
        self._user_tags: dict[str, set[str]] = {}                # active profile -> tags it names
        self._compiled: dict[tuple[str, str, int], Compiled] = {}
        self._set_refs: dict[str, set] = defaultdict(set)      # set name -> {(pid, dir)}
        self._set_of: dict[str, tuple[str, str, int]] = {}     # set name -> (kind, key, family)
        self._sel_members: dict[str, set[EndpointId]] = {}     # selector -> endpoints in it
        for family in self.families:
            for chain, rules in self.skeleton(family).items():
                self._put_chain(family, chain, rules)

    # -- public ---------------------------------------------------------------------------
    def update(self, store: Store, changes: Changes) -> None:
        work = _Work()
        for pid in changes.profiles:
            self._profile_changed(store, pid, work)
        for eid in changes.endpoints:
            self._endpoint_changed(store, eid, _ep_of(store.endpoints.get(eid), store), work)
        if work.ifaces:
            self._refresh_local(work)
        self._recompile(store, work)
        self._refresh_sets(work)
        self._refresh_problems(work)

    def take_dirty(self) -> tuple[dict[int, set[str]], set[str]]:
        chains, sets = self.dirty_chains, self.dirty_sets
        self.dirty_chains = {f: set() for f in self.families}
        self.dirty_sets = set()
        return chains, sets

    # -- profiles and endpoints -----------------------------------------------------------
    def _profile_changed(self, store: Store, pid: str, work: _Work) -> None:
        old_tags, new_tags = self._profile_tags.get(pid, ()), tuple(store.profile_tags.get(pid, ()))
        if old_tags != new_tags:
            for tag in old_tags:
                self._tag_profiles[tag].discard(pid)
                if not self._tag_profiles[tag]:
                    del self._tag_profiles[tag]
                    work.profiles |= self._tag_users.get(tag, set())   # tag disappeared
            for tag in new_tags:
                if tag not in self._tag_profiles:
                    work.profiles |= self._tag_users.get(tag, set())   # tag appeared
                self._tag_profiles[tag].add(pid)
            work.tags.update(old_tags, new_tags)
            _put(self._profile_tags, pid, new_tags or None)
        new_labels = store.profile_labels.get(pid) or {}
        if self._profile_labels.get(pid, {}) != new_labels:
            _put(self._profile_labels, pid, new_labels or None)
            for eid in list(self._profile_eps.get(pid, ())):
                self._endpoint_changed(store, eid, _ep_of(store.endpoints.get(eid), store), work)
        work.profiles.add(pid)

    def _endpoint_changed(self, store: Store, eid: EndpointId, new: _Ep | None,
                          work: _Work) -> None:
        old = self._eps.get(eid)
        if old == new:
            return
        for ep in (old, new):
            for pid in ep.profiles if ep else ():
                work.tags.update(self._profile_tags.get(pid, ()))
        if old:
            for pid in old.profiles:
                self._profile_eps[pid].discard(eid)
                if not self._profile_eps[pid]:
                    del self._profile_eps[pid]
        if new:
            for pid in new.profiles:
                self._profile_eps[pid].add(eid)
        _put(self._eps, eid, new)
        labels = dict(new.labels) if new else None
        for sel, members in self._sel_members.items():
            was = eid in members
            now = labels is not None and parse_selector(sel).evaluate(labels)
            if now:
                members.add(eid)
            else:
                members.discard(eid)
            if was or now:
                work.selectors.add(sel)
        if eid.host == self.hostname:
            if old:
                self._claims[old.iface].discard(eid)
                work.ifaces.add(old.iface)
            _put(self._local, eid, new)
            if new:
                self._claims[new.iface].add(eid)
                work.ifaces.add(new.iface)
            work.endpoints.add(eid)

    def _refresh_local(self, work: _Work) -> None:
        """Choose which endpoint serves each touched interface (the first by id, if the
        name is policed); rebuild what changed with that."""
        changed = set()
        for iface in work.ifaces:
            claims = self._claims.get(iface)
            if not claims:
                self._claims.pop(iface, None)
            owner = min(claims, key=str) if claims and self._policed(iface) else None
            _put(self._owners, iface, owner)
            work.endpoints.update(claims or ())
            old_ep, new_ep = self._served.get(iface), self._local.get(owner)
            _put(self._served, iface, new_ep)
            if old_ep == new_ep:
                continue
            changed.add(iface)
            for pid in old_ep.profiles if old_ep else ():
                self._active[pid] -= 1
                if self._active[pid] <= 0:
                    del self._active[pid]
                    work.profiles.add(pid)
            for pid in new_ep.profiles if new_ep else ():
                if pid not in self._active:
                    work.profiles.add(pid)
                self._active[pid] += 1
            for family in self.families:
                for chain, rules in self._endpoint_chains(iface, new_ep, family).items():
                    self._put_chain(family, chain, rules)
        if changed:
            for family in self.families:
                self._refresh_dispatch(family, changed)

    def _policed(self, iface: str) -> bool:
        return iface.startswith(self.settings.interface_prefixes)

    # -- profiles' chains -----------------------------------------------------------------
    def _recompile(self, store: Store, work: _Work) -> None:
        for pid in work.profiles:
            active = pid in self._active
            rules = store.profile_rules.get(pid)
            for tag in self._user_tags.pop(pid, ()):
                self._tag_users[tag].discard(pid)
                if not self._tag_users[tag]:
                    del self._tag_users[tag]
            if active:
                self._user_tags[pid] = mentioned_tags(rules)
                for tag in self._user_tags[pid]:
                    self._tag_users[tag].add(pid)
            for family in self.families:
                for direction in DIRECTIONS:
                    key = (pid, direction, family)
                    old = self._compiled.pop(key, None)
                    new = self._compile(store, pid, rules, direction, family) if active else None
                    self._swap_refs(pid, direction, family, old, new, work)
                    if new is not None:
                        self._compiled[key] = new
                    self._put_chain(family, names.profile_chain(pid, direction),
                                    new.rules if new else None)

    def _compile(self, store: Store, pid: str, rules: model.ProfileRules | None,
                 direction: str, family: int) -> Compiled:
        err = rules_error(store, pid) if rules is None else None
        if err is not None:
            # The rules could not be read: neither direction can be trusted.
            return deny_all(f"profile {pid}: {getattr(err, 'message', err)}")
        rule_list = getattr(rules, f"{direction}_rules") if rules else []
        return compile_rules(pid, direction, rule_list, family,
                             tag_exists=lambda t: t in self._tag_profiles)

    def _swap_refs(self, pid, direction, family, old: Compiled | None, new: Compiled | None,
                   work: _Work) -> None:
        def refs(c: Compiled | None):
            if c is None:
                return set()
            return ({(names.tag_set(t, family), "tag", t) for t in c.tags}
                    | {(names.selector_set(s, family), "sel", s) for s in c.selectors})
        old_refs, new_refs = refs(old), refs(new)
        for name, kind, key in old_refs - new_refs:
            self._set_refs[name].discard((pid, direction))
            if not self._set_refs[name]:
                del self._set_refs[name]
                self._set_of.pop(name, None)
                (work.tags if kind == "tag" else work.selectors).add(key)
        for name, kind, key in new_refs - old_refs:
            if name not in self._set_refs:
                self._set_of[name] = (kind, key, family)
                (work.tags if kind == "tag" else work.selectors).add(key)
                if kind == "sel" and key not in self._sel_members:
                    sel = parse_selector(key)
                    self._sel_members[key] = {eid for eid, ep in self._eps.items()
                                              if sel.evaluate(dict(ep.labels))}
            self._set_refs[name].add((pid, direction))

    # -- ipsets -----------------------------------------------------------------------------
    def _refresh_sets(self, work: _Work) -> None:
        used_sels = {key for kind, key, _ in self._set_of.values() if kind == "sel"}
        for sel in list(self._sel_members):
            if sel not in used_sels:
                del self._sel_members[sel]
        for family in self.families:
            for tag in work.tags:
                self._refresh_set(names.tag_set(tag, family), family,
                                  lambda: self._tag_endpoints(tag))
            for sel in work.selectors:
                self._refresh_set(names.selector_set(sel, family), family,
                                  lambda: self._sel_members.get(sel, ()))

    def _refresh_set(self, name: str, family: int, endpoints) -> None:
        if name not in self._set_refs:
            if self.sets.pop(name, None) is not None:
                self.dirty_sets.add(name)
            return
        members = frozenset(a for eid in endpoints() for a in self._eps[eid].addresses(family))
        spec = SetSpec(family, members)
        if self.sets.get(name) != spec:
            self.sets[name] = spec
            self.dirty_sets.add(name)

    def _tag_endpoints(self, tag: str) -> set[EndpointId]:
        return {eid for pid in self._tag_profiles.get(tag, ())
                for eid in self._profile_eps.get(pid, ())}

    # -- problems ---------------------------------------------------------------------------
    def _refresh_problems(self, work: _Work) -> None:
        for pid in work.profiles:
            errors = [(d, c.error) for d in DIRECTIONS for f in self.families
                      if (c := self._compiled.get((pid, d, f))) is not None and c.error]
            old = self.profile_problems.get(pid)
            new = None
            if errors:
                dirs = " and ".join(sorted({d for d, _ in errors}))
                new = f"{errors[0][1]} ({dirs} traffic of its members is dropped)"
            if old != new:
                _put(self.profile_problems, pid, new)
                work.endpoints.update(e for e in self._profile_eps.get(pid, ())
                                      if e.host == self.hostname)
        for eid in work.endpoints:
            _put(self.endpoint_problems, eid, self._problem(eid))

    def _problem(self, eid: EndpointId) -> tuple[str, str] | None:
        ep = self._local.get(eid)
        if ep is None:
            return None
        if not self._policed(ep.iface):
            return ("error", f"interface {ep.iface} does not start with an InterfacePrefix "
                             f"({', '.join(self.settings.interface_prefixes)}); its traffic is "
                             "not policed, fix the name or the setting")
        if self._owners.get(ep.iface) != eid:
            return ("error", f"interface {ep.iface} is already used by endpoint "
                             f"{self._owners[ep.iface]}; give each endpoint its own")
        bad = [self.profile_problems[p] for p in ep.profiles if p in self.profile_problems]
        return ("error", "; ".join(bad)) if bad else None

    # -- chains -----------------------------------------------------------------------------
    def _put_chain(self, family: int, chain: str, rules: tuple[str, ...] | None) -> None:
        table = self.chains[family]
        if rules is None:
            if table.pop(chain, None) is not None:
                self.dirty_chains[family].add(chain)
        elif table.get(chain) != rules:
            table[chain] = tuple(rules)
            self.dirty_chains[family].add(chain)

    def _endpoint_chains(self, iface: str, ep: _Ep | None, family: int) -> dict:
        """An endpoint's to- and from-chain: its profiles in order, the first that allows
        wins; none in a family it has no address in (the dispatch drops that traffic)."""
        if ep is None or not ep.nets[0 if family == 4 else 1]:
            return {names.to_endpoint(iface): None, names.from_endpoint(iface): None}
        out = {}
        for chain, direction in ((names.to_endpoint(iface), "inbound"),
                                 (names.from_endpoint(iface), "outbound")):
            rules = []
            for pid in ep.profiles:
                rules += [f"-j {names.profile_chain(pid, direction)}", RETURN_IF_ACCEPTED]
            # The last check drops unless accepted; falling off the end returns.
            rules[-1:] = [DROP_UNLESS_ACCEPTED]
            if not ep.profiles:
                rules = ['-m comment --comment "no profiles" -j DROP']
            out[chain] = tuple(rules)
        return out

    def _refresh_dispatch(self, family: int, ifaces: set[str]) -> None:
        from_tree, to_tree = self._dispatch[family]
        for iface in ifaces:
            ep = self._served.get(iface)
            nets = ep.nets[0 if family == 4 else 1] if ep else ()
            mac = f" -m mac --mac-source {ep.mac}" if ep and ep.mac else ""
            from_tree.set(iface, tuple(f"-i {iface} -s {net}{mac} -g {names.from_endpoint(iface)}"
                                       for net in nets) or None)
            to_tree.set(iface, (f"-o {iface} -g {names.to_endpoint(iface)}",) if nets else None)
        for tree in (from_tree, to_tree):
            for chain, rules in tree.update(ifaces).items():
                self._put_chain(family, chain, rules)

    def skeleton(self, family: int) -> dict:
        """The chains that do not depend on endpoints: the hooks' targets, traffic to the
        host, and the dispatch roots, which drop everything until endpoints are added."""
        s = self.settings
        wl = [f"-i {p}+" for p in s.interface_prefixes]
        to_wl = [f"-o {p}+" for p in s.interface_prefixes]
        forward = []
        forward += [f"{m} -m conntrack --ctstate INVALID -j DROP" for m in wl + to_wl]
        forward += [f"{m} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" for m in wl + to_wl]
        forward += [f"{m} -j {names.FROM_DISPATCH}" for m in wl]
        forward += [f"{m} -j {names.TO_DISPATCH}" for m in to_wl]
        forward += [f"{m} -j ACCEPT" for m in wl + to_wl]
        to_host = ["-m conntrack --ctstate INVALID -j DROP",
                   "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
        if family == 4:
            to_host.append("-p udp -m udp --sport 68 --dport 67 -j ACCEPT")    # DHCP
        else:
            to_host += [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT"
                        for t in (133, 135, 136)]                              # RS, NS, NA
            to_host.append("-p udp -m udp --sport 546 --dport 547 -j ACCEPT")  # DHCPv6
        to_host.append(f"-j {names.FROM_DISPATCH}")      # anti-spoofing and outbound policy
        to_host += [f"-p {p} -m {p} --dport 53 -j ACCEPT" for p in ("udp", "tcp")]   # DNS
        to_host += [f"-p {p} -m {p} --dport {port} -j ACCEPT"
                    for p, port in s.failsafe_inbound]
        to_host.append(f"-j {s.endpoint_to_host_action}")
        output = [f"-p {p} -m {p} --dport {port} -j ACCEPT" for p, port in s.failsafe_outbound]
        return {names.INPUT: tuple(f"{m} -g {names.WL_TO_HOST}" for m in wl),
                names.FORWARD: tuple(forward), names.OUTPUT: tuple(output),
                names.WL_TO_HOST: tuple(to_host),
                names.FROM_DISPATCH: ("-j DROP",), names.TO_DISPATCH: ("-j DROP",)}


class _DispatchTree:
    """Chains that send a packet to its interface's chain in a few hops, however many
    interfaces: a chain with too many entries is split by the next character of the name.
    ``update`` rebuilds only the chains above the interfaces that changed."""

    def __init__(self, root: str, flag: str):
        self.root, self.flag = root, flag
        self.entries: dict[str, tuple[str, ...]] = {}
        self.names: list[str] = []                      # sorted
        self.cover: dict[str, tuple[str, ...]] = {}     # chain -> the interfaces below it
        self.children: dict[str, list[str]] = {}

    def set(self, iface: str, rules: tuple[str, ...] | None) -> None:
        i = bisect.bisect_left(self.names, iface)
        present = i < len(self.names) and self.names[i] == iface
        if rules is None:
            self.entries.pop(iface, None)
            if present:
                del self.names[i]
        else:
            self.entries[iface] = rules
            if not present:
                self.names.insert(i, iface)

    def update(self, changed: set[str]) -> dict[str, tuple[str, ...] | None]:
        out: dict[str, tuple[str, ...] | None] = {}
        cover: dict[str, tuple[str, ...]] = {}
        children: dict[str, list[str]] = {}
        changed_sorted = sorted(changed)

        def touched(ifaces: tuple) -> bool:
            for c in changed_sorted:
                i = bisect.bisect_left(ifaces, c)
                if i < len(ifaces) and ifaces[i] == c:
                    return True
            return False

        def keep(chain: str) -> None:
            cover[chain] = self.cover[chain]
            children[chain] = self.children[chain]
            for child in children[chain]:
                keep(child)

        def build(chain: str, ifaces: tuple) -> None:
            if chain != self.root and self.cover.get(chain) == ifaces and not touched(ifaces):
                keep(chain)
                return
            rules: list[str] = []
            kids: list[str] = []
            if len(ifaces) <= DISPATCH_LEAF:
                for i in ifaces:
                    rules += self.entries[i]
            else:
                common = os.path.commonprefix([ifaces[0], ifaces[-1]])
                groups: dict[str, list[str]] = defaultdict(list)
                for i in ifaces:
                    if i == common:
                        rules += self.entries[i]
                    else:
                        groups[i[:len(common) + 1]].append(i)
                for key, members in groups.items():
                    if len(members) == 1:
                        rules += self.entries[members[0]]
                    else:
                        child = names.dispatch_child(self.root, key)
                        rules.append(f"{self.flag} {key}+ -g {child}")
                        kids.append(child)
                        build(child, tuple(members))
            rules.append("-j DROP")
            out[chain] = tuple(rules)
            cover[chain], children[chain] = ifaces, kids

        build(self.root, tuple(self.names))
        for chain in self.cover:
            if chain not in cover:
                out[chain] = None
        self.cover, self.children = cover, children
        return out


def _put(table: dict, key, value) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
