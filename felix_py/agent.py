"""The agent's main loop: datastore -> store -> managers -> kernel, and status back.

One thread owns the store and the managers.  The syncer, the link monitor and any manager's
own threads (ExaBGP's reader) only post messages to its queue.  Per batch of messages the
loop files updates in the store, lets every manager recompute what changed, and applies.
Nothing touches the dataplane before the first snapshot is in sync and the first link dump
is complete, so a restarting agent never acts on a partial view.  On SIGTERM it stops and
leaves the dataplane as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from bgp.driver import Spare
from bgp.manager import BgpManager
from felix_py import __version__
from felix_py import config as config_mod
from felix_py.calc.store import Changes, Store
from felix_py.datastore.client import DatastoreError, EtcdClient, TlsFiles, resolve_endpoints
from felix_py.datastore.keys import Kind, KeyLayout
from felix_py.datastore.syncer import InSync, Syncer, Unavailable, Updates
from felix_py.dataplane.interfaces import InterfaceManager
from felix_py.dataplane.links import (LinkMonitor, LinkMonitorFailed, Links, LinksSynced,
                                      LinkUpdate)
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane.policy import PolicyGuard, PolicyManager
from felix_py.dataplane.routes import RouteManager
from felix_py.health import Health, Metrics, serve, status_snapshot
from felix_py.status import StatusReporter

log = logging.getLogger("felix_py.agent")

# Settings the running agent cannot change in place.
RESTART_SETTINGS = ("RouteProtocol", "HealthHost", "HealthPort", "ReportingTtlSecs",
                    "ReportingIntervalSecs", "InterfacePrefix", "BgpGracefulRestartSecs",
                    "DataplaneRefreshSecs")
# /status, when served, is rebuilt at least this often, for what changes between batches
# (ExaBGP acknowledging announcements): the loop turns at least once a second.
STATUS_REFRESH_SECS = 1.0


@dataclass
class Context:
    """What managers are built from.  ``routes`` is built by ``build_managers``, which
    gives it the policy guard as its gate; BGP hands it the routes it learns."""
    config: config_mod.Config
    hostname: str
    post: Callable[[object], None]
    client: EtcdClient
    layout: KeyLayout
    exabgp_spare: Spare | None = None
    routes: RouteManager | None = None


@dataclass(frozen=True)
class ApplyOrder:
    """The managers in the order they apply (``docs/design.md``, "On a fresh host, announce
    before policy, behind a guard"), in three groups: ``head`` ends with the policy guard,
    ``rest`` is interfaces and policy, ``early`` routes and BGP's announcements.

    ``managers`` (head, rest, early) is every batch's order.  ``fresh_host`` (head, early,
    rest) is the order of a fresh host's first batch.  Which of the two a first batch follows
    is known only once the guard has applied, so ``batch`` decides there."""
    head: tuple
    rest: tuple
    early: tuple

    @property
    def guard(self) -> PolicyGuard:
        return self.head[-1]

    @property
    def managers(self) -> tuple:
        return self.head + self.rest + self.early

    @property
    def fresh_host(self) -> tuple:
        return self.head + self.early + self.rest

    def batch(self, first: bool) -> Iterator:
        """The managers of one batch, each yielded once the one before it has applied."""
        yield from self.head
        # Read only now, after the guard has applied.
        if first and self.guard.fresh_host:
            yield from self.early + self.rest
        else:
            yield from self.rest + self.early


def build_managers(ctx: Context) -> ApplyOrder:
    """Every dataplane manager, in apply order:

    - BGP: ExaBGP starts (or is reconfigured) while the rest is programmed, and the route
      manager gets the learned routes (and those found at start, kept until the peers
      resend them);
    - the policy guard: on a host without felix-py's chains, their skeleton first, which
      drops all traffic to and from workload interfaces that have no chains of their own;
    - interfaces (proxy ARP and NDP for the workloads' gateway) and the endpoints' policy
      chains, so that a workload's chains are in place before its route makes it
      reachable;
    - routes, then BGP's announcements of the routes that are in place.

    Workload routes wait until the guard has succeeded (a host whose iptables cannot be
    programmed routes no workload); learned routes do not.

    On a fresh host's first batch routes and announcements go before interfaces and policy
    instead: no chains but the skeleton's exist there, so a workload routed before its own
    chains are written has its traffic dropped, and the fabric learns the routes while the
    chains are written."""
    policy = PolicyManager.from_ctx(ctx)
    ctx.routes = RouteManager(ctx.config.route_protocol, post=ctx.post,
                              gate=lambda: policy.guard.done)
    bgp = BgpManager(ctx)
    early = (ctx.routes, bgp.announcer)
    head = (bgp, policy.guard)
    rest = (InterfaceManager(prefixes=ctx.config.interface_prefix), policy)
    return ApplyOrder(head, rest, early)


class Agent:
    def __init__(self, cfg: config_mod.Config, client: EtcdClient,
                 env: dict[str, str], file_values: dict[str, str]):
        self.config = cfg
        self.env, self.file_values = env, file_values
        self.hostname = cfg.hostname
        self.client = client
        self.layout = KeyLayout(cfg.etcd_prefix)
        self.queue: queue.Queue = queue.Queue()
        self.store = Store(self.hostname)
        self.links = Links()
        self.metrics = Metrics()
        self.health = Health(hostname=self.hostname)
        self.syncer = Syncer(client, self.layout, self.layout.agent_watch_prefixes, self.post)
        self.link_monitor = LinkMonitor(self.post)
        self.status = StatusReporter(client, self.layout, self.hostname,
                                     cfg.reporting_interval_secs, cfg.reporting_ttl_secs)
        self.managers: tuple = ()
        self.order: ApplyOrder | None = None
        self.ctx: Context | None = None
        self.spare: Spare | None = None
        self._refresh: Ticker | None = None
        self.in_sync = False
        self._stopping = False
        self._retry_at: float | None = None
        self._backoff = 0.5
        self._status_dirty = True
        # eid -> ((state, reason), (status key, JSON text)): a status is encoded once.
        self._status_texts: dict = {}
        self._last_apply: tuple[float, bool] | None = None      # (seconds, succeeded)
        self._endpoint_counts: dict[str, int] = {}              # as last published
        self._status_at = 0.0                                   # /status snapshot built
        self._status_failing: set[str] = set()                  # managers' status() failing
        self._http = None

    def post(self, msg: object) -> None:
        self.queue.put(msg)

    def stop(self, *_args) -> None:
        self._stopping = True
        self.post(None)

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int:
        log.info("felix-py %s starting on host %s (datastore %s, prefix %s)", __version__,
                 self.hostname, self.client.endpoints, self.layout.prefix)
        if self.config.health_port:
            self._http = serve(self.health, self.metrics, self.config.health_host,
                               self.config.health_port)
        if not self.config.exabgp_path:
            # ExaBGP imports itself while the datastore is read (bgp.driver.Spare).
            try:
                self.spare = Spare()
            except OSError as e:
                log.warning("cannot start ExaBGP ahead of its configuration: %s", e)
        self.link_monitor.start()
        self.syncer.start()
        self.status.start()
        while not self._stopping:
            self._turn()
        self._shutdown()
        return 0

    def _turn(self) -> None:
        timeout = 1.0
        if self._retry_at is not None:
            timeout = max(0.0, min(timeout, self._retry_at - time.monotonic()))
        try:
            msgs = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            msgs = []
        while len(msgs) < 20000:
            try:
                msgs.append(self.queue.get_nowait())
            except queue.Empty:
                break
        self.health.tick()
        manager_msgs = []
        for msg in msgs:
            if msg is not None and not self._handle(msg):
                manager_msgs.append(msg)
        if not (self.in_sync and self.links.synced):
            return
        if not self.managers:
            self._build()
        for msg in manager_msgs:
            for m in self.managers:
                handler = getattr(m, "on_message", None)
                if handler:
                    handler(msg)
        changes = self.store.drain()
        if changes.config:
            self._reload_config()
        retry_due = self._retry_at is not None and time.monotonic() >= self._retry_at
        if changes or manager_msgs or retry_due or not self.health.applied:
            self._apply(changes)
            self._status_dirty = True
        if self._status_dirty:
            self._publish_status()
        elif time.monotonic() - self._status_at >= STATUS_REFRESH_SECS:
            self._snapshot_status()

    def _handle(self, msg: object) -> bool:
        """File a message; False for messages meant for the managers."""
        if isinstance(msg, Updates):
            for u in msg.items:
                self.store.apply(u)
        elif isinstance(msg, LinkUpdate):
            if self.links.apply(msg):
                self.store.changes.endpoints.update(self.store.by_interface.get(msg.name, ()))
        elif isinstance(msg, LinksSynced):
            for name in self.links.replace(msg.links):
                self.store.changes.endpoints.update(self.store.by_interface.get(name, ()))
        elif isinstance(msg, InSync):
            if self.in_sync:
                self.metrics.resyncs.inc()
            self.in_sync = self.health.in_sync = self.health.datastore_in_sync = True
            self.metrics.in_sync.set(1)
        elif isinstance(msg, Unavailable):
            self.metrics.errors.labels("datastore").inc()
            self.metrics.in_sync.set(0)
            self.health.datastore_in_sync = False
        elif isinstance(msg, LinkMonitorFailed):
            self.metrics.errors.labels("links").inc()
            self.link_monitor.stop()
            self.link_monitor = LinkMonitor(self.post).start()
        else:
            return False
        return True

    def _build(self) -> None:
        self._reload_config(first=True)
        self.ctx = Context(self.config, self.hostname, self.post, self.client, self.layout,
                           self.spare)
        self.order = build_managers(self.ctx)
        self.managers = self.order.managers
        if self.config.dataplane_refresh_secs:        # the etcd settings are known now
            self._refresh = Ticker(self.config.dataplane_refresh_secs,
                                   lambda: self.post(DataplaneRefresh()))
        # The first on_changes must see everything, not just what changed since start.
        everything = Changes(endpoints=set(self.store.endpoints) | set(self.store.endpoint_errors),
                             profiles=set(self.store.profile_rules) | set(self.store.profile_errors),
                             config=True, bgp=True, pools=True, ipam=True)
        self.store.changes = _merge(self.store.changes, everything)
        log.info("in sync: %d endpoints (%d local), %d profiles; %d links; managers: %s",
                 len(self.store.endpoints), len(self.store.local_endpoints),
                 len(self.store.profile_rules), len(self.links.names()),
                 ", ".join(m.name for m in self.managers))

    def _reload_config(self, first: bool = False) -> None:
        new = config_mod.load(self.env, self.file_values, self.store.host_config,
                              self.store.global_config)
        if not first:
            stale = [n for n in RESTART_SETTINGS if new[n] != self.config[n]]
            if stale:
                log.warning("setting(s) %s changed in etcd; restart the agent to apply them",
                            ", ".join(stale))
        self.config = new
        logging.getLogger().setLevel(new.log_level)
        if self.ctx is not None:
            self.ctx.config = new

    def _apply(self, changes: Changes) -> None:
        """Each manager in turn works out what changed and applies it, so that ExaBGP
        starts before the later managers have even computed their work."""
        t0 = time.monotonic()
        took: list[str] | None = None if self.health.applied else []   # for the first only
        ok = True
        for m in self.order.batch(first=not self.health.applied):
            ok = self._apply_one(m, changes, took) and ok
        elapsed = time.monotonic() - t0
        self._last_apply = (elapsed, ok)
        self.metrics.apply_seconds.observe(elapsed)
        self.metrics.routes.set(len(self.ctx.routes.actual))
        self.metrics.route_conflicts.set(len(self.ctx.routes.conflicts))
        if ok:
            if not self.health.applied:
                log.info("first apply done in %.3fs; ready (%s)", elapsed, ", ".join(took))
            self.health.applied = True
            self._retry_at, self._backoff = None, 0.5
        else:
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)

    def _apply_one(self, m, changes: Changes, took: list[str] | None) -> bool:
        t = time.monotonic()
        m.on_changes(self.store, changes, self.links)
        try:
            m.apply()
            return True
        except DataplaneError as e:
            self.metrics.errors.labels(m.name).inc()
            log.error("%s: %s", m.name, e)
        except Exception:
            self.metrics.errors.labels(m.name).inc()
            log.exception("%s failed to apply; will retry", m.name)
        finally:
            if took is not None:
                took.append(f"{m.name} {time.monotonic() - t:.3f}s")
        return False

    def _publish_status(self) -> None:
        self._status_dirty = False
        problems: dict = {}
        for m in self.managers:
            for eid, (state, reason) in m.endpoint_problems().items():
                if problems.get(eid, ("",))[0] != "error":
                    problems[eid] = (state, reason)
        statuses: dict[str, str] = {}
        counts = {"up": 0, "down": 0, "error": 0}
        texts, self._status_texts = self._status_texts, {}
        for eid in set(self.store.local_endpoints) | set(self.store.endpoint_errors):
            err = self.store.endpoint_errors.get(eid)
            if err is not None:
                state, reason = "error", str(err)
            else:
                state, reason = problems.get(eid, ("up", None))
            counts[state] += 1
            cached = texts.get(eid)
            if cached is None or cached[0] != (state, reason):
                body = {"status": state, "reason": reason} if reason else {"status": state}
                cached = ((state, reason), (self.layout.endpoint_status(eid), json.dumps(body)))
            self._status_texts[eid] = cached
            key, text = cached[1]
            statuses[key] = text
        for m in self.managers:
            peer_status = getattr(m, "peer_status", None)
            if peer_status:
                for ip, st in peer_status().items():
                    key = self.layout.build(Kind.BGP_PEER_STATUS, host=self.hostname, ip=ip)
                    statuses[key] = st.to_json()
        for state, n in counts.items():
            self.metrics.endpoints.labels(state).set(n)
        self._endpoint_counts = counts
        # Settings the agent cannot follow, for the heartbeat (felixctl node status).
        host_problems = [p for m in self.managers
                         for p in (getattr(m, "host_problems", None) or list)()]
        self.status.publish(statuses, first_update=self.health.applied,
                            ready=self.health.ready, problems=host_problems)
        self._snapshot_status()

    def _snapshot_status(self) -> None:
        """/status: built here, in the thread that owns the managers, and handed to the
        HTTP threads whole (they never call into the managers).  Cheap: 0.2-0.3 ms with
        10,000 local endpoints, against 15-30 ms for the rest of ``_publish_status``.
        Not built at all when no health port is served: nobody could read it."""
        if self._http is None:
            return
        secs, ok = self._last_apply or (None, None)
        self.health.set_status(status_snapshot(self._endpoint_counts, secs, ok,
                                               self.managers, self._status_failing))
        self._status_at = time.monotonic()

    def _shutdown(self) -> None:
        log.info("stopping; the dataplane stays as it is")
        self.syncer.stop()
        self.link_monitor.stop()
        self.status.stop()
        if self._refresh is not None:
            self._refresh.stop()
        for m in self.managers:
            try:
                m.close()
            except Exception:
                log.exception("closing %s", m.name)
        if self.spare is not None:
            self.spare.close()
        if self._http:
            self._http.shutdown()


class Ticker(threading.Thread):
    """Calls ``fn`` every ``interval`` seconds until stopped; a call that raises is logged
    and the next one comes on time."""

    def __init__(self, interval: float, fn: Callable[[], None]):
        super().__init__(daemon=True, name="felix-refresh")
        self.interval, self.fn = interval, fn
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                self.fn()
            except Exception:
                log.exception("periodic %s failed; it runs again in %gs", self.name,
                              self.interval)

    def stop(self) -> None:
        self._halt.set()


def _merge(a: Changes, b: Changes) -> Changes:
    return Changes(endpoints=a.endpoints | b.endpoints, profiles=a.profiles | b.profiles,
                   config=a.config or b.config, bgp=a.bgp or b.bgp, pools=a.pools or b.pools,
                   ipam=a.ipam or b.ipam)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="felix-py", description="felix-py host agent: routes, "
                                "policy and BGP for this host's workloads. Every setting can "
                                "also come from FELIX_<NAME> variables, --config, or etcd.")
    p.add_argument("--hostname", help="this host's name in the datastore")
    p.add_argument("--etcd-endpoints", help="comma-separated etcd URLs (default: the local "
                   "embedded etcd)")
    p.add_argument("--etcd-prefix", help="key prefix (default /calico)")
    p.add_argument("--config", help="YAML file of Name: value settings")
    p.add_argument("--version", action="version", version=f"felix-py {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(os.environ)
    for flag, name in ((args.hostname, "Hostname"), (args.etcd_endpoints, "EtcdEndpoints"),
                       (args.etcd_prefix, "EtcdPrefix")):
        if flag:
            env[config_mod.BY_NAME[name].env] = flag
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        file_values = config_mod.read_file(args.config)
        cfg = config_mod.load(env, file_values)
        logging.getLogger().setLevel(cfg.log_level)
        client = EtcdClient(resolve_endpoints(cfg.etcd_endpoints),
                            TlsFiles(cfg.etcd_ca_file, cfg.etcd_cert_file, cfg.etcd_key_file))
    except (config_mod.ConfigError, DatastoreError) as e:
        print(f"felix-py: {e}", file=sys.stderr)
        return 2
    agent = Agent(cfg, client, env, file_values)
    signal.signal(signal.SIGTERM, agent.stop)
    signal.signal(signal.SIGINT, agent.stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
