"""What the lab holds, read from its parts: the datastore, the switches' BIRD, the hosts' kernels.

``read`` loads the datastore once as every host's agent sees it.  ``expected`` says which
routes each node should hold, from the datastore alone: a host its local workloads' /32s
and one default route (and its IPAM blocks' blackholes); a ToR the prefixes its rack's
hosts announce (``calc.routes.exported_prefixes``, the function the agents announce with);
the core all of them.  ``report`` sets what each node really holds (BIRD's table, the
host's kernel routes of the agent's protocol), its BGP sessions and heartbeat against
that, one ``NodeReport`` per node.  ``lab up`` waits until no report has a problem;
``lab status`` prints them.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from bgp.lab import Bird
from felix_py import config as config_mod
from felix_py import model
from felix_py.calc.routes import exported_prefixes
from felix_py.calc.store import Store
from felix_py.datastore.keys import Kind, KeyLayout
from felix_py.datastore.syncer import decode_kv
from felix_py.lab.netns import Netns, NetnsError
from felix_py.lab.plan import HOST_AS, Plan

DEFAULT = "0.0.0.0/0"


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
    host_workloads: dict[str, set[str]]     # host -> its local workloads' /32 routes
    announced: dict[str, set[str]]          # host -> what it announces
    switch: dict[str, set[str]]             # core / ToR -> workload prefixes it should hold


def expected(plan: Plan, view: View) -> Expected:
    host_wl, announced = {}, {}
    for h in plan.hosts:
        store = view.stores[h.name]
        host_wl[h.name] = {f"{ipaddress.ip_interface(n).ip}/32"
                           for ep in store.local_endpoints.values() if ep.state == "active"
                           for n in ep.ipv4_nets}
        announced[h.name] = {p for p in exported_prefixes(store) if ":" not in p}
    switch = {t.name: set().union(*(announced[h.name] for h in plan.hosts_of(t.name)))
              for t in plan.tors}
    switch[plan.core.name] = set().union(*announced.values())
    return Expected(host_wl, announced, switch)


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


def observe_host(ns: Netns, protocol: int) -> HostRoutes:
    """The IPv4 routes the agent (its route protocol) put into the host's kernel."""
    out = HostRoutes()
    current = None
    for line in ns.run(["ip", "-4", "route", "show", "proto", str(protocol)]).stdout.splitlines():
        words = line.split()
        if not words:
            continue
        if line[0].isspace():                       # a further next hop of an ECMP route
            if current == DEFAULT and "via" in words:
                out.default_via.append(words[words.index("via") + 1])
            continue
        if words[0] == "blackhole":
            out.blackholes.add(words[1])
            current = words[1]
            continue
        current = DEFAULT if words[0] == "default" else _prefix(words[0])
        if current == DEFAULT:
            if "via" in words:
                out.default_via.append(words[words.index("via") + 1])
        elif "dev" in words and "via" not in words:
            out.workloads.add(current)
        else:
            out.other.add(current)
    return out


def _prefix(text: str) -> str:
    return text if "/" in text else f"{text}/32"


def bird_log(workdir: str, name: str) -> str:
    """Where a switch's BIRD writes its own log."""
    return os.path.join(workdir, f"{name}.bird.log")


def switch_bird(plan: Plan, name: str, workdir: str) -> Bird:
    """The BIRD of a switch the lab started (its control socket is all that is needed)."""
    return Bird(Netns(plan.netns(name)), name, workdir)


@dataclass
class NodeReport:
    """One node of the fabric: the routes it holds against those it should hold, its BGP
    sessions and (hosts) its agent's heartbeat; ``problems`` is empty when all is well."""
    tier: str                           # core | tor | host
    name: str
    netns: str
    as_num: int
    held: set[str]                      # workload routes (host) or prefixes (switch)
    expected: set[str]
    default: list[str]                  # next hops of the default route ("" : originated)
    sessions: dict[str, str]            # peer -> BGP state
    blackholes: set[str] = field(default_factory=set)
    heartbeat: object = None            # HostStatus, ModelError or None (hosts only)
    ttl: float = 0.0
    problems: list[str] = field(default_factory=list)


def report(plan: Plan, view: View, workdir: str) -> list[NodeReport]:
    want = expected(plan, view)
    out = []
    for sw in (plan.core, *plan.tors):
        bird = switch_bird(plan, sw.name, workdir)
        try:
            routes, sessions = bird.routes(), bird.protocols()
        except NetnsError:
            routes, sessions = {}, {}
            broken = f"BIRD does not answer on {bird.sock} (log: {bird_log(workdir, sw.name)})"
        else:
            broken = None
        held = {p for p in routes if p != DEFAULT}
        default = (sorted(routes[DEFAULT]) or [""]) if DEFAULT in routes else []
        n = NodeReport("core" if sw.rack is None else "tor", sw.name, plan.netns(sw.name),
                       sw.as_num, held, want.switch[sw.name], default, sessions)
        if broken:
            n.problems.append(broken)
        if n.expected - held:
            n.problems.append(f"lacks {', '.join(sorted(n.expected - held))}")
        if held - n.expected:
            n.problems.append(f"holds unexpected {', '.join(sorted(held - n.expected))}")
        out.append(n)
    for h in plan.hosts:
        cfg = host_config(view, h.name)
        try:
            got, broken = observe_host(Netns(plan.netns(h.name)), cfg.route_protocol), None
        except NetnsError as e:
            got, broken = HostRoutes(), f"routes unreadable ({e})"
        hb, peers = view.statuses[h.name]
        sessions = {ip: getattr(st, "state", "invalid") for ip, st in peers.items()}
        bgp = view.any.bgp
        n = NodeReport("host", h.name, plan.netns(h.name),
                       bgp.host_as_num.get(h.name, bgp.as_num or HOST_AS), got.workloads,
                       want.host_workloads[h.name], sorted(got.default_via), sessions,
                       got.blackholes, hb, cfg.reporting_ttl_secs)
        if not got.default_via:
            n.problems.append("no default route")
        if got.workloads != n.expected:
            n.problems.append(f"routes {len(got.workloads & n.expected)} of "
                              f"{len(n.expected)} local workloads"
                              + (f" and {len(got.workloads - n.expected)} stale"
                                 if got.workloads - n.expected else ""))
        if got.other:
            n.problems.append(f"holds unexpected {', '.join(sorted(got.other))}")
        if hb is None:
            n.problems.append("no agent heartbeat")
        if broken:
            n.problems.append(broken)
        out.append(n)
    for n in out:
        peers = [p for p, st in n.sessions.items() if st.lower() != "established"]
        if not n.sessions:
            n.problems.append("no BGP session")
        elif peers:
            n.problems.append(f"BGP session(s) not established: {', '.join(sorted(peers))}")
    return out
