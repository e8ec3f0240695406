"""Health and metrics over HTTP: /livez, /readyz, Prometheus /metrics and JSON /status.

/livez answers 200 while the main loop keeps turning; /readyz answers 200 once the datastore
is in sync and the first apply succeeded; /status is the operator's summary: the agent's own
state and each dataplane manager's ``status()``.  Serve it on loopback (the default) unless a
monitoring system needs it elsewhere.

The server runs in its own threads and never calls into the managers, whose state only the
main loop may touch: while the server runs, the main loop builds a snapshot (plain,
JSON-serialisable data, ``status_snapshot``) after each status publish and at least once a
second, and hands it over (``Health.set_status``, one reference swapped); the handler
serialises the latest one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

from felix_py import __version__

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.endpoints = Gauge("felix_local_endpoints", "Local workload endpoints by status",
                               ["status"], registry=r)
        self.routes = Gauge("felix_routes", "Kernel routes the agent owns", registry=r)
        self.route_conflicts = Gauge(
            "felix_route_conflicts",
            "Workload routes not installed because a route felix-py does not own holds the "
            "prefix", registry=r)
        self.apply_seconds = Histogram("felix_apply_seconds", "Duration of one dataplane apply",
                                       buckets=(.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10),
                                       registry=r)
        self.resyncs = Counter("felix_resyncs_total", "Full datastore snapshots read",
                               registry=r)
        self.errors = Counter("felix_errors_total", "Errors by kind", ["kind"], registry=r)
        self.in_sync = Gauge("felix_in_sync", "1 when the datastore is in sync", registry=r)


class Health:
    """State the main loop updates and the HTTP server reads.

    ``in_sync``: the datastore has been in sync (it stays set: the dataplane is kept through
    an outage); ``datastore_in_sync``: it is now, as the ``felix_in_sync`` metric says."""

    def __init__(self, stall_after: float = 30.0, hostname: str = ""):
        self.stall_after = stall_after
        self.hostname = hostname
        self.started = self.last_loop = time.monotonic()
        self.in_sync = False
        self.datastore_in_sync = False
        self.applied = False
        # (monotonic time, snapshot): replaced whole, never changed in place, so that the
        # HTTP threads read one consistent pair without a lock.
        self._status: tuple[float, dict] | None = None

    def tick(self) -> None:
        self.last_loop = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.last_loop < self.stall_after

    @property
    def ready(self) -> bool:
        return self.live and self.in_sync and self.applied

    def set_status(self, snapshot: dict) -> None:
        """Hand over the main loop's latest snapshot (``status_snapshot``).  The caller must
        not change it afterwards: the HTTP threads read it without a lock."""
        self._status = (time.monotonic(), snapshot)

    def status(self) -> dict:
        """What /status shows: the latest snapshot under what this object knows itself and
        keeps current (uptime, live, in sync, ready).  Before the first snapshot, that much
        and empty fields."""
        held = self._status
        now = time.monotonic()
        live = {"host": self.hostname, "version": __version__,
                "uptime_secs": round(now - self.started, 1), "live": self.live,
                "in_sync": self.datastore_in_sync, "ready": self.ready}
        out: dict = {**live, "snapshot_age_secs": None, "endpoints": None,
                     "last_apply_secs": None, "last_apply_ok": None, "managers": {}}
        if held is not None:
            at, snapshot = held
            out.update(snapshot)
            out.update(live, snapshot_age_secs=round(now - at, 3))     # these win
        return out


def status_snapshot(endpoints: dict[str, int], last_apply_secs: float | None,
                    last_apply_ok: bool | None, managers: Iterable,
                    failing: set[str]) -> dict:
    """The main loop's part of /status: the local endpoints by state (as
    ``felix_local_endpoints`` counts them), the last apply, and ``status()`` of every
    manager that has one, by the manager's ``name``.  Call it in the main loop only: it
    reads the managers' state.  A ``status()`` must return fresh plain data (dicts, lists,
    str, numbers, bool, None) that the manager does not change afterwards.

    ``failing`` is the caller's set of the managers whose ``status()`` is failing, kept
    from one call to the next and updated here: a failure is logged when it starts, again
    only after that manager's ``status()`` has worked in between."""
    by_manager: dict[str, object] = {}
    for m in managers:
        fn = getattr(m, "status", None)
        if fn is None:
            continue
        try:
            by_manager[m.name] = fn()
            failing.discard(m.name)
        except Exception as e:
            if m.name not in failing:
                failing.add(m.name)
                log.exception("%s: status() failed; /status shows the error", m.name)
            by_manager[m.name] = {"error": f"status() failed: {e!r}"}
    return {"endpoints": dict(endpoints),
            "last_apply_secs": None if last_apply_secs is None else round(last_apply_secs, 4),
            "last_apply_ok": last_apply_ok, "managers": by_manager}


def serve(health: Health, metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/livez":
                self._reply(200 if health.live else 503, b"ok\n" if health.live else b"stalled\n")
            elif path == "/readyz":
                self._reply(200 if health.ready else 503,
                            b"ready\n" if health.ready else b"not ready\n")
            elif path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/status":
                # default=str: a value a manager's status() should not have returned still
                # shows (as text) rather than failing the whole answer.
                body = json.dumps(health.status(), indent=2, default=str) + "\n"
                self._reply(200, body.encode(), "application/json")
            else:
                self._reply(404, b"not found: try /livez, /readyz, /metrics or /status\n")

        def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="felix-health", daemon=True).start()
    log.info("health, metrics and status on http://%s:%d/", host, server.server_address[1])
    return server
