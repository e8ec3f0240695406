"""The BGP manager: this host's announcements out through ExaBGP, learned routes in.

On every batch it resolves the host's BGP plan (``bgp.config``) and the prefixes the host
may announce (``felix_py.calc.routes.exported_prefixes``).  It works in two steps, which the
agent applies apart (``agent.build_managers``): ``BgpManager`` first of all managers, its
``announcer`` after the route manager:

- ``BgpManager.apply()`` renders ExaBGP's configuration (starting ExaBGP, or restarting it
  only when the configuration changed) and hands the route manager the routes learned since
  the last batch, once per batch.  Coming first, ExaBGP starts and its sessions come up
  while the agent programs interfaces, policy and routes.
- ``BgpAnnouncer.apply()`` hands the driver the prefixes to announce, which it sends as a
  diff; a batch that hands over a new set waits (up to ``ACK_WAIT``) for ExaBGP to
  acknowledge it, later ones only look: the owned IPAM blocks (their blackhole routes
  drop what is unused), and each workload address whose route the route manager has
  installed.  Coming after it, it sees what the route manager installed or lost in the
  same batch (a link event leads to a batch): a workload is announced only once its route
  is in place (and, except on a fresh host's first batch, its policy), and withdrawn when
  its route is gone (its interface deleted), so that traffic for it never loops between
  host and ToR.  Until the first announcement the driver sends peers nothing, not even
  End-of-RIB.

ExaBGP's events come back through the agent's queue (``BgpEvent`` messages to
``on_message``) into the per-peer table (``bgp.rib``), whose accepted routes go to the
route manager as the "bgp" source.

Graceful restart, on both sides: ExaBGP announces it, and sends End-of-RIB only once the
agent has re-announced everything; routes learned before ExaBGP (or the agent) restarted
stay in the kernel until the peers have re-sent theirs, or the restart time runs out.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from bgp import api
from bgp.config import BgpPlan, resolve
from bgp.driver import Acknowledged, ExaBgpDriver, ProcessDown, ProcessUp, ip_version
from bgp.exabgp_config import ConfigRejected, Options, listen_addresses, render
from bgp.rib import ERROR, ESTABLISHED, Rib
from felix_py import model
from felix_py.calc.routes import exported_prefixes, owned_blocks
from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId, Kind, KeyLayout, KeyLayoutError
from felix_py.dataplane.links import Links
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane.netlink import Netlink, NetlinkError, Route
from felix_py.procfs import start_time

log = logging.getLogger(__name__)

SOURCE = "bgp"
# How long a batch waits for ExaBGP to take its announcements before going on: long enough
# for thousands (ExaBGP then has the CPU to itself), short enough that a stuck ExaBGP does
# not hold the agent's loop; the driver restarts one that stops answering.
ACK_WAIT = 3.0


@dataclass(frozen=True)
class BgpEvent:
    """An event from the ExaBGP driver, carried through the agent's queue."""
    event: object


@dataclass(frozen=True)
class StaleTimer:
    """Time to drop stale routes whose graceful-restart time ran out."""


def kernel_source_address(peer: str) -> str | None:
    """The address this namespace's kernel would send from to reach ``peer`` (no packet
    leaves: connecting a UDP socket only looks the route up); None without a route."""
    family = socket.AF_INET6 if ":" in peer else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((peer, 179))
            return s.getsockname()[0]
        except OSError:
            return None


def kernel_link_to(peer: str) -> str | None:
    """The interface this namespace's kernel reaches ``peer`` on; None without a route."""
    try:
        nl = Netlink()
    except OSError:
        return None
    try:
        oif = nl.route_oif(peer)
        return socket.if_indextoname(oif) if oif else None
    except (OSError, ValueError, NetlinkError):
        return None
    finally:
        nl.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


RUN_DIR_PREFIX = "felix-bgp-"
OWNER_FILE = "agent.pid"


def owner_line() -> str:
    """The pid file's line for this agent: its pid, its PID namespace and (where /proc
    tells) its start time, which tells it from a later process given the same pid."""
    start = start_time(os.getpid())
    return " ".join([str(os.getpid()), _pid_namespace(),
                     *([str(start)] if start is not None else [])]) + "\n"


def remove_stale_run_dirs(parent: str, proc: str = "/proc") -> list[str]:
    """Remove the run directories (ExaBGP's configuration, socket) that agents killed
    without a chance to clean up left in ``parent``: ours by owner, and naming in their
    pid file a process of this PID namespace that no longer exists (gone, a zombie, or its
    pid taken by a process started later).  Returns what was removed."""
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(RUN_DIR_PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        try:
            if os.lstat(path).st_uid != os.getuid() or not os.path.isdir(path):
                continue
            with open(os.path.join(path, OWNER_FILE)) as f:
                # "pid pidns start": older agents wrote no start time
                pid_text, pidns, *start = f.read().split()
            pid = int(pid_text)
            if len(start) > 1:
                raise ValueError("too many fields")
        except (OSError, ValueError):
            continue            # not one of ours, or one still being set up
        # Our own directory is alive by the same test; a directory of an earlier process
        # that had our pid is not (its start time differs).
        if pidns != _pid_namespace() or _alive(pid, start[0] if start else None, proc):
            continue            # an agent we cannot see (another PID namespace), or alive

        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed %d run director%s left by agents that died: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", ", ".join(removed[:5]))
    return removed


def _pid_namespace() -> str:
    """This process's PID namespace: pids written by agents in another are not ours to
    check."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def _alive(pid: int, start: str | None, proc: str = "/proc") -> bool:
    """Whether the agent that wrote ``pid`` (started at ``start``, if known) runs: not a
    zombie, nor another process that was given its pid later."""
    if start is None:
        # A pid file without a start time (an older agent's): whether the pid exists.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = start_time(pid, proc)
    return now is not None and str(now) == start


class BgpManager:
    name = "bgp"

    def __init__(self, ctx, *, driver_factory: Callable[..., ExaBgpDriver] | None = None,
                 dump_routes: Callable[[], dict[str, Route]] | None = None,
                 source_address: Callable[[str], str | None] | None = None,
                 link_to: Callable[[str], str | None] = kernel_link_to,
                 clock: Callable[[], float] = time.time, run_dir: str | None = None):
        self.ctx = ctx
        self.hostname: str = ctx.hostname
        self.layout: KeyLayout = ctx.layout
        self.clock = clock
        self._own_run_dir = run_dir is None
        if run_dir is None:
            remove_stale_run_dirs(tempfile.gettempdir())
            run_dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{self.hostname[:20]}-")
            with open(os.path.join(run_dir, OWNER_FILE), "w") as f:
                f.write(owner_line())
        self.run_dir = run_dir
        level = "INFO" if ctx.config.log_level == "DEBUG" else "WARNING"
        make = driver_factory or (lambda **kw: ExaBgpDriver(
            exabgp=ctx.config.exabgp_path or None, log_level=level, spare=ctx.exabgp_spare,
            **kw))
        self.driver = make(run_dir=self.run_dir, on_event=lambda e: ctx.post(BgpEvent(e)))
        self._dump_routes = dump_routes or self._kernel_routes
        self._source_address = source_address or kernel_source_address
        self.plan = BgpPlan(self.hostname, enabled=False)
        self.own: frozenset[str] = frozenset()        # what the host may announce
        self.blocks: frozenset[str] = frozenset()     # its IPAM blocks, announced whole
        # What the driver last reported taken (announce()): ExaBGP's acknowledgement, or at
        # once while no ExaBGP runs (a new one announces everything it is told).
        self.exported: frozenset[str] = frozenset()
        self.problems: tuple[str, ...] = ()
        self.key_errors: dict[str, str] = {}       # peer ip -> invalid peer key's error
        self.rejected: dict[str, str] = {}         # peer ip -> refused by exabgp_config
        self.rib = Rib(self.plan.import_policy, ctx.config.bgp_max_default_routes, link_to)
        self.inherited: dict[str, Route] = {}      # routes of ours found at start (restart)
        self.inherited_until: float | None = None
        self.eor_seen: set[str] = set()
        self._warned_ignored: set[str] = set()
        self._applied_plan: BgpPlan | None = None
        self._timer: threading.Timer | None = None
        self._first_apply = True
        self._dirty = True              # the plan changed: (re)configure ExaBGP
        self._learned_dirty = True      # the routes for the kernel may have changed
        # The announcements last handed to the driver (None: it must be told afresh), and
        # whether ExaBGP has yet to acknowledge them (announce()).
        self._told: frozenset[str] | None = None
        self._awaiting = False
        self.announcer = BgpAnnouncer(self)

    # -- datastore -----------------------------------------------------------------------
    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        if changes.bgp or changes.config or self._first_apply:
            self.plan = resolve(store.bgp, self.hostname)
            self.key_errors = self._peer_key_errors(store)
            self.rib.set_policy(self.plan.import_policy)
            self.rib.max_default_paths = self.ctx.config.bgp_max_default_routes
            self._dirty = True
        if changes.endpoints or changes.ipam or changes.bgp or self._first_apply:
            self.blocks = frozenset(owned_blocks(store))
            self.own = frozenset(exported_prefixes(store))

    def _peer_key_errors(self, store: Store) -> dict[str, str]:
        """Invalid peer keys that concern this host: reported as peers in state error."""
        out = {}
        for key, err in store.errors.items():
            try:
                pk = self.layout.parse(key)
            except KeyLayoutError:
                continue
            if pk.kind is Kind.BGP_PEER and pk.host in (None, self.hostname):
                out[pk.parts["ip"]] = getattr(err, "message", None) or str(err)
        return out

    # -- events from the driver ----------------------------------------------------------
    def on_message(self, msg: object) -> None:
        if isinstance(msg, StaleTimer):
            self._expire()
        elif isinstance(msg, BgpEvent):
            self._event(msg.event)
        elif isinstance(msg, DataplaneRefresh):
            self.rib.relink()           # link-local next hops: their links looked up again
        else:
            return
        # Pushed once per batch, in apply(): thousands of routes arrive in a few messages
        # and the kernel routes are recomputed from all of them.
        self._learned_dirty = True

    def _event(self, ev: object) -> None:
        now = self.clock()
        if isinstance(ev, api.PeerState):
            if ev.state == "down":
                self.eor_seen.discard(ev.peer)
                self._warned_ignored.discard(ev.peer)
                log.info("BGP peer %s down: %s", ev.peer, ev.reason or "no reason given")
            elif ev.state == "up":
                log.info("BGP peer %s established", ev.peer)
            self.rib.session(ev.peer, ev.state, now, ev.local, ev.reason)
        elif isinstance(ev, api.RouteUpdate):
            self.rib.update(ev.peer, ev.announced, ev.withdrawn)
            if ev.peer not in self._warned_ignored:
                ignored = [pf for pf, nh in ev.announced.items()
                           if not self.rib.accepts(pf, nh)]
                if ignored:
                    # Once per session: the count is in the peer's status.
                    self._warned_ignored.add(ev.peer)
                    log.warning("BGP peer %s sends routes the %s import policy ignores "
                                "(e.g. %s); they are counted, not installed", ev.peer,
                                self.rib.policy, ignored[0])
        elif isinstance(ev, api.EndOfRib):
            self.rib.end_of_rib(ev.peer)
            self.eor_seen.add(ev.peer)
            self._maybe_drop_inherited()
        elif isinstance(ev, api.Notification):
            text = f"notification {ev.direction}: code {ev.code} subcode {ev.subcode}" + \
                (f" ({ev.message})" if ev.message else "")
            log.warning("BGP peer %s: %s", ev.peer, text)
            self.rib.note(ev.peer, text)
        elif isinstance(ev, ProcessDown):
            self.eor_seen.clear()
            self.rib.process_stopped(now, self.ctx.config.bgp_graceful_restart_secs)
            self._arm_timer()
        elif isinstance(ev, (ProcessUp, Acknowledged)):
            pass    # Acknowledged: the batch this message brings looks again (announce())

    # -- apply ---------------------------------------------------------------------------
    def apply(self) -> None:
        """Configure ExaBGP and hand the route manager what was learned (first of the
        managers); announcements are the announcer's."""
        if self._first_apply:
            self._first_apply = False
            self._inherit()
        try:
            if self._dirty:
                self._configure()
            elif self._applied_plan is not None:
                # The import filter leaves out our own prefixes, which may have changed:
                # the RIB compares, and marks itself changed if they did.
                self.rib.set_own(self.own, self._applied_plan.own_addresses)
        finally:
            # Even when ExaBGP cannot be configured: routes kept from before a restart
            # must reach the route manager before its first apply.
            if self._learned_dirty or self.rib.changed:
                self._push_routes()

    def _configure(self) -> None:
        plan = self.plan
        self._learned_dirty = True
        if not plan.enabled:
            if self._applied_plan is not None and self._applied_plan.enabled:
                log.info("BGP disabled on this host: %s", "; ".join(plan.problems))
            if self._applied_plan is None or self._applied_plan.enabled:
                self.driver.close()     # with the spare ExaBGP, unused, on a first apply
            self.rib.set_peers({}, {}, self.clock())
            self._applied_plan = plan
            self._dirty = False
            return
        cfg = self.ctx.config
        options = Options(helper=self.driver.helper_argv, hold_time=cfg.bgp_hold_time_secs,
                          graceful_restart=cfg.bgp_graceful_restart_secs)
        try:
            text, self.rejected = render(plan, options,
                                         {p.ip: a for p in plan.peers
                                          if (a := self._source_address(p.ip))})
        except ConfigRejected as e:
            raise DataplaneError(f"BGP configuration refused: {e}") from None
        for ip, why in self.rejected.items():
            log.error("BGP peer %s left out of ExaBGP's configuration: %s", ip, why)
        running = {p.ip: p for p in plan.peers if p.ip not in self.rejected}
        errors = {**self.key_errors, **self.rejected}
        self.rib.set_peers({ip: p.peer_type for ip, p in running.items()}, errors, self.clock())
        self.rib.set_own(self.own, plan.own_addresses)
        # Problems do not take part in comparing plans: one can come or go alone (a host's
        # ip_addr_v6, which the plan only checks).
        applied = self._applied_plan
        if plan != applied or plan.problems != applied.problems:
            for problem in plan.problems:
                log.warning("BGP: %s", problem)
        self.driver.configure(text, {ip: p.version for ip, p in running.items()},
                              listen_addresses(plan))
        self._applied_plan = plan
        self._dirty = False
        self._told = None               # a driver closed meanwhile knows no announcements

    def announce(self) -> None:
        """Hand the driver what this host announces and wait for ExaBGP to take it: its
        blocks, and the workload addresses whose route is installed now.  Evaluated on every
        batch, after the route manager has applied: a route it added or lost is announced or
        withdrawn in the same batch.

        A batch waits (up to ``ACK_WAIT``) only when it hands the driver something new.  When
        ExaBGP has not taken the announcements by then, the driver goes on sending them (and
        restarts an ExaBGP that stops answering); later batches with the same announcements
        only look whether they have been taken, without waiting.  Once they are, the driver
        posts ``Acknowledged``, whose batch looks, so that the peers' status (``sent``) is
        not left stale until some other change."""
        if not self.plan.enabled:
            return
        # Our routes to workloads; not a learned route kept from before a restart.
        actual = self.ctx.routes.actual
        exported = frozenset(p for p in self.own if p in self.blocks
                             or (p in actual and not actual[p].gateways))
        if exported == self._told:
            if not self._awaiting:
                return
            wait = 0.0                  # the driver is at it already: only look
        else:
            wait = ACK_WAIT
        taken = self.driver.set_routes(set(exported), wait=wait)
        self._told, self._awaiting = exported, not taken
        if taken:
            self.exported = exported
        elif wait:
            # Still taking them (or stuck, which the driver deals with): the rest of the
            # batch goes on, and the next ones look again.
            log.info("ExaBGP has not taken all %d announcements within %.0fs; going on",
                     len(exported), wait)

    # -- routes to the kernel ------------------------------------------------------------
    def _push_routes(self) -> None:
        self._learned_dirty = False
        learned = self.rib.kernel_routes()
        routes = {dst: r for dst, r in self.inherited.items()}
        for dst, hops in learned.items():
            routes[dst] = Route(dst, gateways=hops)
        self.ctx.routes.set_source_routes(SOURCE, routes)

    def _kernel_routes(self) -> dict[str, Route]:
        nl = Netlink()
        try:
            return nl.dump_routes(self.ctx.config.route_protocol)
        finally:
            nl.close()

    def _inherit(self) -> None:
        """Keep the routes a previous run learned (gateway routes with our protocol) until
        the peers have re-sent theirs: an agent restart must not drop the default route."""
        try:
            found = self._dump_routes()
        except (OSError, DataplaneError) as e:
            log.warning("cannot read this host's routes at start: %s", e)
            return
        self.inherited = {dst: r for dst, r in found.items()
                          if r.gateways and r.kind == "unicast" and r.scope == "universe"}
        if self.inherited:
            self.inherited_until = self.clock() + self.ctx.config.bgp_graceful_restart_secs
            log.info("keeping %d BGP route(s) from before the restart until the peers "
                     "re-send theirs", len(self.inherited))
            self._arm_timer()

    def _maybe_drop_inherited(self) -> None:
        if not self.inherited:
            return
        live = [ip for ip, p in self.rib.peers.items() if p.state != ERROR]
        if live and all(ip in self.eor_seen for ip in live):
            self.inherited.clear()
            self.inherited_until = None

    def _expire(self) -> None:
        now = self.clock()
        if self.inherited_until is not None and now >= self.inherited_until:
            self.inherited.clear()
            self.inherited_until = None
        self.rib.expire(now)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadlines = [d for d in (self.inherited_until,
                                 *(p.stale_until for p in self.rib.peers.values())) if d]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadlines:
            delay = max(0.0, min(deadlines) - self.clock()) + 0.05
            self._timer = threading.Timer(delay, self.ctx.post, (StaleTimer(),))
            self._timer.daemon = True
            self._timer.start()

    # -- status --------------------------------------------------------------------------
    def peer_status(self) -> dict[str, model.BgpPeerStatus]:
        out = {}
        # ExaBGP gives each peer one session carrying its own address's family only
        # (``exabgp_config``), and the driver announces each prefix to the peers of its
        # family: a peer is sent the announced prefixes of its family, not all of them.
        sent = {4: 0, 6: 0}
        for prefix in self.driver.announced:
            sent[ip_version(prefix)] += 1
        for ip, p in self.rib.peers.items():
            received, accepted = self.rib.counts(ip) if p.state != ERROR else (0, 0)
            out[ip] = model.BgpPeerStatus(
                peer_type=p.peer_type, state=p.state, since=_iso(p.since),
                received=received, accepted=accepted,
                sent=sent[ip_version(ip)] if p.state == ESTABLISHED else 0,
                # A peer that is not up because ExaBGP itself cannot run says why.
                info=p.info or (self.driver.last_error if p.state != ESTABLISHED else None))
        return out

    def status(self) -> dict:
        states: dict[str, int] = {}
        for p in self.rib.peers.values():
            states[p.state] = states.get(p.state, 0) + 1
        return {"bgp_mode": self.plan.mode if self.plan.enabled else "disabled",
                "bgp_peers": states, "bgp_announced": len(self.driver.announced),
                "bgp_learned_routes": len(self.rib.routes),
                "exabgp_state": self.driver.state.value, "exabgp_restarts": self.driver.restarts,
                "exabgp_error": self.driver.last_error, "bgp_problems": list(self.plan.problems)}

    def host_problems(self) -> list[str]:
        """The BGP settings this host cannot follow as they are (``bgp.config``)."""
        return [f"BGP: {p}" for p in self.plan.problems]

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.driver.close()
        if self._own_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


class BgpAnnouncer:
    """The BGP manager's second step: its announcements, applied after the route manager
    (see the module's docstring)."""
    name = "bgp-announce"

    def __init__(self, bgp: BgpManager):
        self.bgp = bgp

    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        """The BGP manager, earlier in the list, has seen the changes."""

    def apply(self) -> None:
        self.bgp.announce()

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {}

    def close(self) -> None:
        """The BGP manager closes ExaBGP."""
