"""The status reporter: the agent's heartbeat and per-endpoint / per-peer status in etcd.

Runs in its own thread so that a dead etcd never stalls the dataplane loop.  The main loop
hands it the latest wanted status (``publish``); the reporter writes only the keys whose
value changed since it last wrote them, deletes those no longer wanted, and keeps the
heartbeat alive.  Every key is bound to one etcd lease, so all of them vanish when the agent
dies; if the lease is lost (etcd was away longer than its TTL) a new one is taken and every
key is written again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone

from felix_py import __version__
from felix_py.datastore.client import DatastoreError, EtcdClient
from felix_py.datastore.keys import KeyLayout

log = logging.getLogger(__name__)


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusReporter:
    def __init__(self, client: EtcdClient, layout: KeyLayout, hostname: str,
                 interval: float, ttl: int):
        self.client, self.layout, self.hostname = client, layout, hostname
        self.interval, self.ttl = interval, ttl
        self.started = time.monotonic()
        self._want: dict[str, str] = {}
        self._written: dict[str, str] = {}
        self._lease = None
        self._first_update = False
        self._ready = False
        self._problems: list[str] = []
        self._beat_now = False          # the heartbeat's content changed: write it at once
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.healthy = False

    def start(self) -> "StatusReporter":
        self._thread = threading.Thread(target=self._run, name="felix-status", daemon=True)
        self._thread.start()
        return self

    def publish(self, statuses: dict[str, str], first_update: bool, ready: bool,
                problems: list[str] = ()) -> None:
        """The complete set of status keys the agent wants (key -> JSON text), and what the
        heartbeat says: whether the agent is ready, and the problems it reports."""
        with self._cond:
            self._want = statuses
            problems = list(problems)
            if (first_update, ready, problems) != (self._first_update, self._ready,
                                                   self._problems):
                self._beat_now = True
            self._first_update = first_update
            self._ready = ready
            self._problems = problems
            self._cond.notify()

    def stop(self, revoke: bool = True) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread:
            self._thread.join(5)
        if revoke and self._lease is not None:
            try:
                self._lease.revoke()   # a stopped agent is not alive: its status goes now
            except Exception as e:
                log.warning("could not revoke the status lease: %s", e)

    def _heartbeat(self) -> str:
        return json.dumps({"time": utc_now(), "uptime": round(time.monotonic() - self.started, 1),
                           "first_update": self._first_update, "version": __version__,
                           "ready": self._ready, "problems": self._problems})

    def _run(self) -> None:
        next_beat = 0.0
        while True:
            with self._cond:
                timeout = max(0.0, next_beat - time.monotonic())
                if not (self._stop or self._beat_now) and self._want == self._written \
                        and timeout > 0:
                    self._cond.wait(timeout)
                if self._stop:
                    return
                want = dict(self._want)
                beat, self._beat_now = self._beat_now or time.monotonic() >= next_beat, False
                heartbeat = self._heartbeat()
            try:
                if self._ensure_lease():
                    beat = True         # the heartbeat went with the old lease
                if beat:
                    self.client.put(self.layout.host_status(self.hostname), heartbeat,
                                    lease=self._lease)
                    next_beat = time.monotonic() + self.interval
                self._sync(want)
                self.healthy = True
            except DatastoreError as e:
                if self.healthy:
                    log.warning("cannot report status: %s", e)
                self.healthy = False
                next_beat = time.monotonic() + min(self.interval, 2.0)
                with self._cond:
                    self._cond.wait(min(self.interval, 2.0))

    def _ensure_lease(self) -> bool:
        """Refresh the lease; True when a new one had to be taken (every key is gone)."""
        if self._lease is not None:
            if self.client.refresh_lease(self._lease) > 0:
                return False
            log.warning("status lease expired; taking a new one and rewriting status")
        self._lease = self.client.lease(self.ttl)
        self._written = {}
        return True

    def _sync(self, want: dict[str, str]) -> None:
        for key in [k for k in self._written if k not in want]:
            self.client.delete(key)
            del self._written[key]
        for key, value in want.items():
            if self._written.get(key) != value:
                self.client.put(key, value, lease=self._lease)
                self._written[key] = value
