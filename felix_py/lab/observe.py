"""What the lab holds, read from its parts: the datastore, the switches' BIRD, the hosts' kernels.

``read`` loads the datastore once as every host's agent sees it.  ``expected`` says which
routes each node should hold, per IP version, from the datastore alone: a host its local
workloads' /32s and one default route (and its IPAM blocks' blackholes); a ToR the
prefixes its rack's hosts announce (``calc.routes.exported_prefixes``, the function the
agents announce with); the core all of them.  ``report`` sets what each node really holds
(BIRD's table, the host's kernel routes of the agent's protocol), its BGP sessions and
heartbeat against that, one ``NodeReport`` per node.  ``lab up`` waits until no report
has a problem; ``lab status`` prints them.

Each IP version of the lab (IPv4; IPv6 too in a dual-stack lab) is checked apart: a
node's ``FamilyReport`` per version holds its routes of that version (BIRD's ``master4`` or
``master6`` table, ``ip -4`` or ``ip -6`` on a host) and its sessions of that version (an
agent's peer by the family of its address, a BIRD session by the family of its channel:
``Bird.sessions()``, one ``show protocols all``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from bgp.driver import ip_version
from bgp.lab import Bird
from felix_py import config as config_mod
from felix_py import model
from felix_py.calc.routes import exported_prefixes
from felix_py.calc.store import Store
from felix_py.datastore.keys import Kind, KeyLayout
from felix_py.datastore.syncer import decode_kv
from felix_py.lab.netns import Netns, NetnsError
from felix_py.lab.plan import HOST_AS, Plan

DEFAULTS = {4: "0.0.0.0/0", 6: "::/0"}
TABLES = {4: "master4", 6: "master6"}          # BIRD's table of each version
HOST_LEN = {4: 32, 6: 128}


@dataclass
class View:
    """The datastore as every host's agent sees it, read once."""
    stores: dict[str, Store]            # host -> its Store ("" : no host's)
    statuses: dict                      # host -> (heartbeat, {peer ip: BgpPeerStatus})

    @property
    def any(self) -> Store:
        return self.stores[""]


def read(client, layout: KeyLayout, hosts) -> View:
    stores = {h: Store(h) for h in ["", *hosts]}
    for prefix in layout.agent_watch_prefixes:
        for key, value, _ in client.get_prefix(prefix)[0]:
            update = decode_kv(layout, key, value)
            for s in stores.values():
                s.apply(update)
    statuses: dict = {h: [None, {}] for h in hosts}
    for key, value, _ in client.get_prefix(layout.dir("felix/v1/host"))[0]:
        try:
            pk = layout.parse(key)
        except ValueError:
            continue
        if pk.host not in statuses or pk.kind not in (Kind.HOST_STATUS, Kind.BGP_PEER_STATUS):
            continue
        try:
            rec = model.decode(pk, value)
        except model.ModelError as e:
            rec = e
        if pk.kind is Kind.HOST_STATUS:
            statuses[pk.host][0] = rec
        else:
            statuses[pk.host][1][pk.parts["ip"]] = rec
    return View(stores, {h: tuple(v) for h, v in statuses.items()})


@dataclass
class Expected:
    """What the nodes should hold of one IP version."""
    host_workloads: dict[str, set[str]]     # host -> its local workloads' /32 (/128) routes
    announced: dict[str, set[str]]          # host -> what it announces
    switch: dict[str, set[str]]             # core / ToR -> workload prefixes it should hold


def expected(plan: Plan, view: View) -> dict[int, Expected]:
    """What the nodes should hold, for each IP version of the lab."""
    host_wl = {v: {} for v in plan.versions}
    announced = {v: {} for v in plan.versions}
    for h in plan.hosts:
        store = view.stores[h.name]
        active = [ep for ep in store.local_endpoints.values() if ep.state == "active"]
        prefixes = exported_prefixes(store)             # once per host, split by version
        for v in plan.versions:
            host_wl[v][h.name] = {f"{ipaddress.ip_interface(n).ip}/{HOST_LEN[v]}"
                                  for ep in active for n in ep.nets(v)}
            announced[v][h.name] = {p for p in prefixes if ip_version(p) == v}
    out = {}
    for v in plan.versions:
        switch = {t.name: set().union(*(announced[v][h.name] for h in plan.hosts_of(t.name)))
                  for t in plan.tors}
        switch[plan.core.name] = set().union(*announced[v].values())
        out[v] = Expected(host_wl[v], announced[v], switch)
    return out


def host_config(view: View, host: str) -> config_mod.Config:
    """The host's settings as far as the datastore sets them (route protocol, TTLs)."""
    store = view.stores[host]
    return config_mod.load({}, {}, store.host_config, store.global_config)


@dataclass
class HostRoutes:
    workloads: set[str] = field(default_factory=set)    # /32s routed to a workload interface
    blackholes: set[str] = field(default_factory=set)
    default_via: list[str] = field(default_factory=list)
    other: set[str] = field(default_factory=set)         # none in downward default


def observe_host(ns: Netns, protocol: int, version: int = 4) -> HostRoutes:
    """The IPv4 (IPv6) routes the agent (its route protocol) put into the host's kernel."""
    out = HostRoutes()
    current = None
    default = DEFAULTS[version]
    for line in ns.run(["ip", f"-{version}", "route", "show", "proto",
                        str(protocol)]).stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if line[0].isspace():                       # a further next hop of an ECMP route
            if current == default and "via" in words:
                out.default_via.append(words[words.index("via") + 1])
            continue
        if words[0] == "blackhole":
            out.blackholes.add(words[1])
            current = words[1]
            continue
        current = default if words[0] == "default" else _prefix(words[0], version)
        if current == default:
            if "via" in words:
                out.default_via.append(words[words.index("via") + 1])
        elif "dev" in words and "via" not in words:
            out.workloads.add(current)
        else:
            out.other.add(current)
    return out


def _prefix(text: str, version: int = 4) -> str:
    return text if "/" in text else f"{text}/{HOST_LEN[version]}"


def bird_log(workdir: str, name: str) -> str:
    """Where a switch's BIRD writes its own log."""
    return os.path.join(workdir, f"{name}.bird.log")


def switch_bird(plan: Plan, name: str, workdir: str) -> Bird:
    """The BIRD of a switch the lab started (its control socket is all that is needed)."""
    return Bird(Netns(plan.netns(name)), name, workdir)


@dataclass
class FamilyReport:
    """One IP version of a node: the routes it holds against those it should hold, and
    its BGP sessions of that version; ``problems`` is empty when all of it is well."""
    version: int
    held: set[str]                      # workload routes (host) or prefixes (switch)
    expected: set[str]
    default: list[str]                  # next hops of the default route ("" : originated)
    sessions: dict[str, str]            # peer -> BGP state
    blackholes: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


@dataclass
class NodeReport:
    """One node of the fabric: a ``FamilyReport`` per IP version of the lab and (hosts) its
    agent's heartbeat.  ``problems`` lists all of them, node-wide ones (``shared``: BIRD
    does not answer, no heartbeat) and every family's, in a dual-stack lab each marked
    with its version; it is empty when all is well."""
    tier: str                           # core | tor | host
    name: str
    netns: str
    as_num: int
    families: dict[int, FamilyReport]
    heartbeat: object = None            # HostStatus, ModelError or None (hosts only)
    ttl: float = 0.0
    problems: list[str] = field(default_factory=list)
    shared: list[str] = field(default_factory=list)

    def problem(self, text: str, version: int | None = None) -> None:
        if version is None:
            self.shared.append(text)
        else:
            self.families[version].problems.append(text)
            if len(self.families) > 1:
                text = f"IPv{version}: {text}"
        self.problems.append(text)


def report(plan: Plan, view: View, workdir: str) -> list[NodeReport]:
    versions = plan.versions
    want = expected(plan, view)
    out = []
    for sw in (plan.core, *plan.tors):
        bird = switch_bird(plan, sw.name, workdir)
        try:
            routes = {v: bird.routes(TABLES[v]) for v in versions}
            sessions = bird.sessions()
        except NetnsError:
            routes, sessions = {v: {} for v in versions}, {}
            broken = f"BIRD does not answer on {bird.sock} (log: {bird_log(workdir, sw.name)})"
        else:
            broken = None
        families = {}
        for v in versions:
            held = {p for p in routes[v] if p != DEFAULTS[v]}
            default = (sorted(routes[v][DEFAULTS[v]]) or [""]) if DEFAULTS[v] in routes[v] \
                else []
            # A session in the family of its channel (bgp.fabric gives each one); one
            # without a channel counts as IPv4.
            families[v] = FamilyReport(v, held, want[v].switch[sw.name], default,
                                       {p: s.state for p, s in sessions.items()
                                        if (s.version or 4) == v})
        n = NodeReport("core" if sw.rack is None else "tor", sw.name, plan.netns(sw.name),
                       sw.as_num, families)
        if broken:
            n.problem(broken)
        for v, f in families.items():
            if f.expected - f.held:
                n.problem(f"lacks {', '.join(sorted(f.expected - f.held))}", v)
            if f.held - f.expected:
                n.problem(f"holds unexpected {', '.join(sorted(f.held - f.expected))}", v)
        out.append(n)
    for h in plan.hosts:
        cfg = host_config(view, h.name)
        got, broken = {}, None
        for v in versions:
            try:
                got[v] = observe_host(Netns(plan.netns(h.name)), cfg.route_protocol, v)
            except NetnsError as e:
                got[v], broken = HostRoutes(), f"routes unreadable ({e})"
        hb, peers = view.statuses[h.name]
        bgp = view.any.bgp
        families = {v: FamilyReport(v, got[v].workloads, want[v].host_workloads[h.name],
                                    sorted(got[v].default_via),
                                    {ip: getattr(st, "state", "invalid")
                                     for ip, st in peers.items() if ip_version(ip) == v},
                                    got[v].blackholes)
                    for v in versions}
        n = NodeReport("host", h.name, plan.netns(h.name),
                       bgp.host_as_num.get(h.name, bgp.as_num or HOST_AS), families, hb,
                       cfg.reporting_ttl_secs)
        for v, f in families.items():
            if not f.default:
                n.problem("no default route", v)
            if f.held != f.expected:
                n.problem(f"routes {len(f.held & f.expected)} of {len(f.expected)} local "
                          "workloads" + (f" and {len(f.held - f.expected)} stale"
                                         if f.held - f.expected else ""), v)
            if got[v].other:
                n.problem(f"holds unexpected {', '.join(sorted(got[v].other))}", v)
        if hb is None:
            n.problem("no agent heartbeat")
        if broken:
            n.problem(broken)
        out.append(n)
    for n in out:
        for v, f in n.families.items():
            peers = [p for p, st in f.sessions.items() if st.lower() != "established"]
            if not f.sessions:
                n.problem("no BGP session", v)
            elif peers:
                n.problem(f"BGP session(s) not established: {', '.join(sorted(peers))}", v)
    return out
