"""Health and metrics over HTTP: /livez, /readyz and Prometheus /metrics.

/livez answers 200 while the main loop keeps turning; /readyz answers 200 once the datastore
is in sync and the first apply succeeded.  Serve it on loopback (the default) unless a
monitoring system needs it elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

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
    """State the main loop updates and the HTTP server reads."""

    def __init__(self, stall_after: float = 30.0):
        self.stall_after = stall_after
        self.last_loop = time.monotonic()
        self.in_sync = False
        self.applied = False

    def tick(self) -> None:
        self.last_loop = time.monotonic()

    @property
    def live(self) -> bool:
        return time.monotonic() - self.last_loop < self.stall_after

    @property
    def ready(self) -> bool:
        return self.live and self.in_sync and self.applied


def serve(health: Health, metrics: Metrics, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/livez":
                self._reply(200 if health.live else 503, b"ok\n" if health.live else b"stalled\n")
            elif self.path == "/readyz":
                self._reply(200 if health.ready else 503,
                            b"ready\n" if health.ready else b"not ready\n")
            elif self.path == "/metrics":
                self._reply(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found: try /livez, /readyz or /metrics\n")

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
    log.info("health and metrics on http://%s:%d/", host, server.server_address[1])
    return server
