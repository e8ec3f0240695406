"""Processes of the lab and the tests: the agent running for real inside a host namespace."""

from __future__ import annotations

import os
import signal
import sys

from felix_py.lab.netns import wait_for


def agent_argv(hostname: str, endpoints: str, prefix: str) -> list[str]:
    """The command that runs the agent with this interpreter (and so this environment)."""
    return [sys.executable, "-m", "felix_py.agent", "--hostname", hostname,
            "--etcd-endpoints", endpoints, "--etcd-prefix", prefix]


class AgentProcess:
    """felix-py running for real inside a host namespace (a Netns)."""

    def __init__(self, ns, hostname: str, endpoints: str, prefix: str, log_path: str,
                 env: dict | None = None):
        self.ns, self.hostname, self.endpoints, self.prefix = ns, hostname, endpoints, prefix
        self.log_path = log_path
        self.env = env or {}
        self.proc = None

    def start(self):
        env = {**os.environ, "FELIX_HEALTH_PORT": "0", "FELIX_REPORTING_INTERVAL_SECS": "1",
               "FELIX_REPORTING_TTL_SECS": "5", **self.env}
        self.proc = self.ns.popen(agent_argv(self.hostname, self.endpoints, self.prefix),
                                  log_path=self.log_path, env=env)
        return self

    def stop(self, sig=None):
        if self.proc is not None:
            self.ns.stop(self.proc, sig or signal.SIGTERM)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def wait_ready(self, registry, timeout: float = 30):
        """Wait until the agent's heartbeat says it is ready (in sync, first apply done)."""
        def ready():
            if not self.alive():
                raise RuntimeError(f"agent on {self.hostname} exited:\n{self.log()[-3000:]}")
            st = registry.host_status(self.hostname)
            return st is not None and st.ready
        try:
            return wait_for(ready, timeout, 0.2, f"agent {self.hostname} ready")
        except TimeoutError:
            raise TimeoutError(f"agent {self.hostname} not ready:\n{self.log()[-3000:]}") from None
