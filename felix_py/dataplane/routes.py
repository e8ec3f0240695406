"""The route manager: every kernel route carrying the agent's protocol number.

Routes come from several sources: local workloads and owned IPAM blocks (computed here from
the store by ``felix_py.calc.routes``) and any other manager through
``set_source_routes`` (BGP-learned routes).  ``apply()`` diffs the union against what the
kernel holds and sends the difference in one netlink batch.  The first ``apply()`` dumps the
kernel's routes with our protocol number: a route still wanted is left alone (a restart
flaps nothing), one no longer wanted is deleted, routes of any other protocol are never
touched.  A ``DataplaneRefresh`` makes the next apply dump them again, which puts back a
route deleted from outside.

A new route is created with NLM_F_EXCL: where a route of another protocol holds the prefix,
the kernel refuses it.  That conflict is logged once, reported in the owning endpoint's
status, and tried again only when the wanted route changes or the other route is deleted
(``route_conflicts``); any other refusal is retried on the agent's backoff.
"""

from __future__ import annotations

import errno
import logging
from types import MappingProxyType
from typing import Callable, Mapping

from felix_py.calc import routes as calc
from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import Links
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane.netlink import Netlink, Route
from felix_py.dataplane.route_conflicts import Conflict, ConflictWatch

log = logging.getLogger(__name__)

# When two sources want the same destination, the earlier one in this order wins.
SOURCE_PRIORITY = ("workloads", "blackholes")


class RouteManager:
    name = "routes"

    def __init__(self, proto: int, netlink: Netlink | None = None,
                 post: Callable[[object], None] | None = None,
                 watch: ConflictWatch | None = None,
                 gate: Callable[[], bool] = lambda: True):
        """``post`` (the agent's queue) lets a conflict's end wake the agent's loop; without
        it, a freed prefix is tried on the next apply that happens for another reason.
        ``gate`` says whether workload routes may change: the agent makes them wait for the
        skeleton of felix-py's chains (the policy guard), so that no workload is routed
        unpoliced; until then none is added or replaced (removals go ahead: they expose
        nothing)."""
        self.proto = proto
        self.nl = netlink or Netlink()
        self._watch = watch or ConflictWatch(post)
        self._conflicts: dict[str, Conflict] = {}
        self._sources: dict[str, dict[str, Route]] = {"workloads": {}, "blackholes": {}}
        self._neigh_want: dict[tuple[int, str], str] = {}
        self._neigh_have: dict[tuple[int, str], str] = {}
        self._actual: dict[str, Route] | None = None
        self._reread = False
        self._problems: dict[EndpointId, tuple[str, str]] = {}
        self._failed: dict[str, str] = {}
        self._owners: dict[str, EndpointId] = {}
        self._dirty = True
        self.gate = gate
        self._held: set[str] = set()

    # -- desired state -------------------------------------------------------------------
    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        if changes.endpoints or changes.ipam:
            ws = calc.workload_state(store.local_endpoints, links.get)
            self._sources["workloads"] = ws.routes
            self._sources["blackholes"] = calc.blackhole_routes(store)
            self._neigh_want = ws.neighbours
            self._problems = ws.problems
            self._owners = ws.owners
            self._dirty = True

    def on_message(self, msg: object) -> None:
        if isinstance(msg, DataplaneRefresh):
            # Read our routes back on the next apply: one deleted meanwhile is put back (or,
            # where another route took its prefix, reported as a conflict, not overwritten).
            # Until the read succeeds, what we believe stays (the announcer relies on it).
            self._reread = True
            self._dirty = True

    def set_source_routes(self, source: str, routes: dict[str, Route]) -> None:
        if self._sources.get(source) != routes:
            self._sources[source] = dict(routes)
            self._dirty = True

    def desired(self) -> dict[str, Route]:
        order = list(SOURCE_PRIORITY) + sorted(set(self._sources) - set(SOURCE_PRIORITY))
        out: dict[str, Route] = {}
        for source in reversed(order):
            out.update(self._sources.get(source, {}))
        return out

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        problems = dict(self._problems)
        failed = {**self._failed, **{dst: _conflict_reason(dst, c)
                                     for dst, c in self._conflicts.items()},
                  **{dst: f"route {dst} waits until felix-py's iptables chains can be "
                          "created (see the policy-guard errors in the agent's log)"
                     for dst in self._held}}
        for dst, reason in failed.items():
            if dst in self._owners:
                problems[self._owners[dst]] = ("error", reason)
        return problems

    @property
    def actual(self) -> Mapping[str, Route]:
        """The routes with our protocol in the kernel, as last applied: a read-only view,
        not a copy (the agent and the BGP announcer look at it every batch)."""
        return MappingProxyType(self._actual if self._actual is not None else {})

    @property
    def conflicts(self) -> dict[str, Conflict]:
        """dst -> the route wanted there and the route of another protocol holding it."""
        return dict(self._conflicts)

    # -- kernel --------------------------------------------------------------------------
    def apply(self) -> None:
        freed = self._watch.take_freed()
        if not (self._dirty or freed):
            return
        if self._actual is None or self._reread:
            self._actual = self.nl.dump_routes(self.proto)
            self._reread = False
            log.info("read %d routes with protocol %d from the kernel", len(self._actual),
                     self.proto)
        want = self.desired()
        previous = self._conflicts
        # A conflict waits until its prefix is freed or the route wanted there changes.
        self._conflicts = {dst: c for dst, c in previous.items()
                           if dst not in freed and want.get(dst) == c.route}
        self._held = set() if self.gate() else {
            dst for dst in self._sources["workloads"]
            if not want[dst].is_in(self._actual.get(dst))}
        changes = [("replace" if dst in self._actual else "create", r)
                   for dst, r in want.items()
                   if not r.is_in(self._actual.get(dst)) and dst not in self._conflicts
                   and dst not in self._held]
        changes += [("delete", r) for dst, r in self._actual.items() if dst not in want]
        neigh = [("replace", k, mac) for k, mac in self._neigh_want.items()
                 if self._neigh_have.get(k) != mac]
        neigh += [("delete", k, None) for k in self._neigh_have if k not in self._neigh_want]
        msgs, unsendable = [], {}
        for op, r in changes:
            try:
                msgs.append((*self.nl.route_message(op, r, self.proto), (op, r)))
            except ValueError as e:     # e.g. a link-local gateway whose link went away
                unsendable[(op, r)] = str(e)
        msgs += [(*self.nl.neigh_message(op, k[0], k[1], mac), (op, k, mac)) for op, k, mac in neigh]
        failed = self.nl.batch(msgs) if msgs else {}
        failed.update(dict.fromkeys(unsendable, errno.EINVAL))
        attempted = len(changes) + len(neigh)
        # Deleting what is already gone (its link was removed, taking its routes) is success.
        failed = {tag: code for tag, code in failed.items()
                  if not (tag[0] == "delete" and code in (errno.ESRCH, errno.ENOENT, errno.ENODEV))}
        conflicts = self._record_conflicts(failed, previous)
        failed = {tag: code for tag, code in failed.items() if tag not in conflicts}
        changes = [c for c in changes if c not in conflicts]
        self._failed = {}
        for op, r in changes:
            code = failed.get((op, r))
            if op != "delete" and not code:
                self._actual[r.dst] = r
            elif op == "delete" and not code:
                self._actual.pop(r.dst, None)
            elif code:
                why = unsendable.get((op, r)) or errno.errorcode.get(code, code)
                self._failed[r.dst] = f"route {r.dst}: {why}"
        for op, k, mac in neigh:
            code = failed.get((op, k, mac))
            if op == "replace" and not code:
                self._neigh_have[k] = mac
            elif op == "delete" and not code:
                self._neigh_have.pop(k, None)
        self._dirty = bool(failed or self._held)
        if failed:
            sample = "; ".join(f"{tag[0]} {tag[1].dst if isinstance(tag[1], Route) else tag[1]}: "
                               f"{unsendable.get(tag) or errno.errorcode.get(c, c)}"
                               for tag, c in list(failed.items())[:3])
            raise DataplaneError(f"{len(failed)} of {attempted} route/neighbour changes failed "
                                 f"({sample})")
        if changes or neigh:
            log.info("routes: %d added or replaced, %d deleted; neighbours: %d changed",
                     sum(op != "delete" for op, _ in changes),
                     sum(op == "delete" for op, _ in changes), len(neigh))

    def _record_conflicts(self, failed: dict, previous: dict[str, Conflict]) -> set:
        """Keep the creates the kernel refused with EEXIST as conflicts, each with the route
        that holds its prefix; returns their tags.  One whose holder cannot be found (it
        went away meanwhile) stays a failure, retried like any other."""
        refused = {tag[1].dst: tag for tag, code in failed.items()
                   if tag[0] == "create" and code == errno.EEXIST}
        # Watch before looking: a holder deleted after the look-up is then reported.
        self._watch.watch(set(self._conflicts) | set(refused))
        holders = self.nl.route_holders(refused) if refused else {}
        for dst, holder in holders.items():
            conflict = Conflict(refused[dst][1], holder)
            if previous.get(dst) != conflict:
                log.warning("route %s not installed: a route felix-py does not own holds that "
                            "prefix (%s); left alone until it is deleted or the route wanted "
                            "there changes", dst, holder)
            self._conflicts[dst] = conflict
        if len(holders) < len(refused):
            self._watch.watch(self._conflicts)
        return {refused[dst] for dst in holders}

    def close(self) -> None:
        self._watch.close()
        self.nl.close()


def _conflict_reason(dst: str, conflict: Conflict) -> str:
    return (f"route {dst} is held by a route felix-py does not own ({conflict.holder}); "
            "delete that route, or give the workload another address")
