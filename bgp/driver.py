"""One long-lived ExaBGP process: started, fed, watched and restarted by the agent.

The driver owns ExaBGP's lifecycle as an explicit state machine::

    STOPPED --start--> STARTING --helper connected--> RUNNING
       ^                  |                              |
       |               (exit)                         (exit, hang)
       |                  v                              v
       +---close---   BACKOFF <--------------------------+
                          |  (0.5 s, doubling to 30 s; reset after 60 s of good run)
                          +--> STARTING ...

and the announcements as a set: ``set_routes(prefixes)`` records what the host must
announce; the driver's control thread sends ExaBGP the difference with what the running
process has acknowledged (``announce``/``withdraw`` commands, batched, each answered
``done`` or ``error``).  A new process starts from nothing, so after a restart everything is
announced again, then End-of-RIB goes to each peer as it comes up (graceful restart:
the peer keeps the host's routes until then).  ExaBGP may be configured before the caller
knows what to announce (so that it starts meanwhile): until the first ``set_routes()`` the
driver sends nothing, End-of-RIB included.  ExaBGP runs through ``bgp.launcher`` unless
an executable is given.  Events from ExaBGP (session states, received
routes, notifications) are parsed by ``bgp.api`` and handed to ``on_event`` from the
driver's reader thread, together with the driver's own ``ProcessUp``/``ProcessDown``.

All writes to ExaBGP happen on the control thread; the caller's thread only sets the
desired state and may wait for it to be acknowledged.
"""

from __future__ import annotations

import collections
import ctypes
import enum
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from bgp import api
from bgp.exabgp_config import environment
from bgp.launcher import SPARE_FLAG, WARNING_TAG

log = logging.getLogger(__name__)
exabgp_log = logging.getLogger("bgp.exabgp")

_PR_SET_PDEATHSIG = 1


class State(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    CLOSED = "closed"


@dataclass(frozen=True)
class ProcessUp:
    generation: int


@dataclass(frozen=True)
class ProcessDown:
    generation: int
    reason: str


@dataclass(frozen=True)
class Acknowledged:
    """ExaBGP has taken announcements that a ``set_routes`` gave up waiting for: what the
    agent reports (peer status ``sent``) can be brought up to date."""


class DriverError(RuntimeError):
    pass


def launcher_argv() -> list[str]:
    """ExaBGP installed beside this Python, run through ``bgp.launcher``."""
    return [sys.executable, "-m", "bgp.launcher"]


class Spare:
    """ExaBGP started ahead of its configuration: the launcher imports ExaBGP (about 0.3 s)
    while the agent reads the datastore, then waits for what to run.  The first process the
    driver starts is this one, if it is still alive; later ones start from scratch."""

    def __init__(self):
        self.proc: subprocess.Popen | None = subprocess.Popen(
            launcher_argv() + [SPARE_FLAG], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def take(self, argv: list[str], env: dict[str, str], cwd: str) -> subprocess.Popen | None:
        """The waiting process, told to run ExaBGP with ``argv`` in ``cwd``, its environment
        updated with ``env``; None if it is gone (or was taken)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.stdin.write(json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
                                 + b"\n")
                proc.stdin.close()
                return proc
        except OSError:
            pass
        self.proc = proc
        self.close()            # gone, or would not listen: its pipes closed, reaped
        return None

    def close(self) -> None:
        """End an unused spare, at once: it holds nothing yet."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass        # a write into it had failed


class _Session:
    """One running ExaBGP process and its API connection."""

    def __init__(self, generation: int, proc: subprocess.Popen):
        self.generation = generation
        self.proc = proc
        self.conn: socket.socket | None = None
        self.acks: queue.Queue = queue.Queue()
        self.sent: set[str] = set()          # prefixes this process acknowledged
        self.up_peers: set[str] = set()
        self.eor_pending: set[str] = set()
        self.started = time.monotonic()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=20)
        self.dead = threading.Event()


class ExaBgpDriver:
    def __init__(self, run_dir: str, on_event: Callable[[object], None], *,
                 exabgp: str | None = None, wrap: Sequence[str] = (),
                 ack_timeout: float = 15.0, connect_timeout: float = 15.0,
                 backoff: tuple[float, float] = (0.5, 30.0), healthy_after: float = 60.0,
                 log_level: str = "WARNING", spare: Spare | None = None):
        self.run_dir = run_dir
        self.on_event = on_event
        # A configured executable runs as it is; by default ExaBGP runs through our launcher.
        self.command = [exabgp] if exabgp else launcher_argv()
        # The spare is the driver's from here: its first start takes it; one it cannot use
        # ends now (it would run our launcher, not what was asked for), one never started
        # from ends in close().
        if spare is not None and (exabgp or wrap):
            spare.close()
            spare = None
        self._spare = spare
        self.wrap = list(wrap)                 # e.g. ["ip", "netns", "exec", NS] in tests
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.backoff_min, self.backoff_max = backoff
        self.healthy_after = healthy_after
        self.log_level = log_level
        self.config_path = os.path.join(run_dir, "exabgp.conf")
        self.env_path = os.path.join(run_dir, "exabgp.env")
        self.socket_path = os.path.join(run_dir, "api.sock")

        self.state = State.STOPPED
        self.restarts = 0
        self.last_error: str | None = None
        self.peer_families: dict[str, int] = {}   # peer ip -> 4|6, as configured

        self._lock = threading.Lock()
        self._desired: frozenset[str] | None = None   # None: not known yet, send nothing
        self._desired_version = 0
        self._acked_version = 0
        self._acked = threading.Condition(self._lock)
        self._gave_up = False       # a set_routes stopped waiting before the acknowledgement
        self._config: str | None = None
        self._listen: tuple[str, ...] = ()
        self._tasks: queue.Queue = queue.Queue()
        self._session: _Session | None = None
        self._generation = 0
        self._backoff = self.backoff_min
        self._thread: threading.Thread | None = None

    # -- caller side ---------------------------------------------------------------------
    def configure(self, config_text: str, peer_families: dict[str, int],
                  listen: tuple[str, ...] = ()) -> None:
        """Run ExaBGP with this configuration (restarting it if it changed); ``listen``:
        addresses to accept sessions on."""
        with self._lock:
            if config_text == self._config and tuple(listen) == self._listen:
                return
            self._config = config_text
            self._listen = tuple(listen)
            self.peer_families = dict(peer_families)
        self._ensure_thread()
        self._tasks.put(("configure",))

    def set_routes(self, prefixes: set[str] | frozenset[str], wait: float | None = None) -> bool:
        """Announce exactly ``prefixes``.  With ``wait``, block until the running ExaBGP has
        acknowledged them, at most ``wait`` seconds; False when it has not by then (with
        ``wait=0``: whether it has, without blocking; the same prefixes again are no new
        task).  Without ``wait``, or with no process running (a new one announces everything
        when it starts), returns True at once.  Either way the announcements go on in the
        driver's thread, which restarts an ExaBGP that stops acknowledging
        (``ack_timeout``)."""
        with self._lock:
            if self._desired is None or frozenset(prefixes) != self._desired:
                self._desired = frozenset(prefixes)
                self._desired_version += 1
                self._tasks.put(("sync",))
            version = self._desired_version
            if wait is None or self.state is not State.RUNNING:
                return True
            deadline = time.monotonic() + wait
            while self._acked_version < version and self.state is State.RUNNING:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._gave_up = True
                    return False
                self._acked.wait(left)
            return self._acked_version >= version

    @property
    def helper_argv(self) -> tuple[str, ...]:
        """The API helper ExaBGP must run (``process`` section of its configuration)."""
        return (sys.executable, "-m", "bgp.bridge", self.socket_path)

    @property
    def announced(self) -> frozenset[str]:
        """What the running ExaBGP has acknowledged (empty when none runs)."""
        s = self._session
        return frozenset(s.sent) if s and self.state is State.RUNNING else frozenset()

    @property
    def pid(self) -> int | None:
        s = self._session
        return s.proc.pid if s and s.proc.poll() is None else None

    def close(self, timeout: float = 10.0) -> None:
        """Stop ExaBGP (its sessions close without NOTIFICATION, so that graceful-restart
        peers keep this host's routes) and the control thread; end the spare if no ExaBGP
        was started from it."""
        if self._thread is not None:
            self._tasks.put(("close",))
            self._thread.join(timeout)
            self._thread = None
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
        with self._lock:
            self._config = None       # a later configure() starts afresh
            self._desired = None
            self.state = State.CLOSED

    # -- control thread ------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="exabgp-driver", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        restart_at: float | None = None
        while True:
            timeout = None if restart_at is None else max(0.0, restart_at - time.monotonic())
            try:
                task = self._tasks.get(timeout=timeout)
            except queue.Empty:
                task = ("restart",)
            kind = task[0]
            try:
                if kind == "close":
                    self._stop_process("closing")
                    return
                if kind in ("configure", "restart"):
                    restart_at = None
                    self._stop_process("new configuration" if kind == "configure" else None)
                    if not self._start_process():
                        restart_at = self._schedule_restart()
                elif kind == "died":
                    s = self._session
                    if s is not None and s.generation == task[1]:
                        self._stop_process(task[2])
                        restart_at = self._schedule_restart()
                elif kind in ("sync", "peer_up"):
                    self._sync()
                    self._send_eors()
            except DriverError as e:
                log.warning("ExaBGP: %s; restarting it", e)
                self._stop_process(str(e))
                restart_at = self._schedule_restart()
            except Exception as e:
                # Whatever went wrong, the driver thread must live on to restart ExaBGP.
                self.last_error = f"ExaBGP driver: {e!r}"
                log.exception("ExaBGP driver failed; restarting ExaBGP")
                self._stop_process(self.last_error)
                restart_at = self._schedule_restart()

    def _schedule_restart(self) -> float:
        delay = self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)
        self.state = State.BACKOFF
        log.info("ExaBGP restarts in %.1fs", delay)
        return time.monotonic() + delay

    def _start_process(self) -> bool:
        with self._lock:
            config = self._config
        if config is None:
            return True
        os.makedirs(self.run_dir, exist_ok=True)
        with open(self.config_path, "w") as f:
            f.write(config)
        if not os.path.exists(self.env_path):
            open(self.env_path, "w").close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.exists(self.socket_path):
                os.unlink(self.socket_path)
            listener.bind(self.socket_path)
            listener.listen(1)
        except OSError as e:
            # e.g. a run directory so deep that the socket path exceeds 107 bytes
            listener.close()
            self.last_error = f"cannot listen on {self.socket_path} for ExaBGP: {e}"
            log.error("%s", self.last_error)
            return False
        listener.settimeout(0.1)
        settings = environment(self.env_path, self.log_level, self._listen)
        self._generation += 1
        self.state = State.STARTING
        spare, self._spare = self._spare, None
        try:
            # ExaBGP read EXABGP_ENVFILE when it was imported: name the file on its command line.
            proc = spare.take(["--env-file", self.env_path, self.config_path], settings,
                              self.run_dir) if spare else None
            if proc is None:
                proc = subprocess.Popen(self.wrap + self.command + [self.config_path],
                                        env={**os.environ, **settings},
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                        cwd=self.run_dir)
        except OSError as e:
            listener.close()
            self.last_error = f"cannot start {self.command[0]}: {e.strerror}"
            log.error("%s", self.last_error)
            return False
        s = _Session(self._generation, proc)
        self._session = s
        threading.Thread(target=self._read_output, args=(s,), daemon=True,
                         name=f"exabgp-log-{s.generation}").start()
        deadline = time.monotonic() + self.connect_timeout
        try:
            while s.conn is None:
                try:
                    s.conn, _ = listener.accept()
                except socket.timeout:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        s.dead.wait(1.0)        # let the output reader collect the reason
                        why = "exited" if proc.poll() is not None else "did not connect"
                        self.last_error = f"ExaBGP {why} at startup: " + \
                            (" | ".join(s.stderr_tail) or f"exit code {proc.returncode}")
                        log.error("%s", self.last_error)
                        self._stop_process(None)
                        return False
        finally:
            listener.close()
            os.unlink(self.socket_path)
        s.conn.settimeout(None)
        self.state = State.RUNNING
        if self.restarts or self._generation > 1:
            log.info("ExaBGP running again (pid %d, start #%d)", proc.pid, self._generation)
        else:
            log.info("ExaBGP running (pid %d)", proc.pid)
        threading.Thread(target=self._read_events, args=(s,), daemon=True,
                         name=f"exabgp-api-{s.generation}").start()
        self._emit(ProcessUp(s.generation))
        self._sync()
        return True

    def _stop_process(self, reason: str | None) -> None:
        s = self._session
        if s is None:
            return
        self._session = None
        if s.proc.poll() is None:
            try:
                s.proc.terminate()
                s.proc.wait(5)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()
        if s.conn is not None:
            try:
                s.conn.close()
            except OSError:
                pass
        if reason and reason not in ("closing", "new configuration"):
            self.restarts += 1
            self.last_error = reason
        if time.monotonic() - s.started > self.healthy_after:
            self._backoff = self.backoff_min
        with self._lock:
            self.state = State.STOPPED
            self._acked.notify_all()
        self._emit(ProcessDown(s.generation, reason or "stopped"))

    def _sync(self) -> None:
        """Send the difference between desired and acknowledged announcements."""
        s = self._session
        if s is None or self.state is not State.RUNNING:
            return
        with self._lock:
            desired, version = self._desired, self._desired_version
            families = dict(self.peer_families)
        if desired is None:
            return
        by_family: dict[int, list[str]] = {}
        for peer, v in sorted(families.items()):
            by_family.setdefault(v, []).append(peer)
        wanted = {p for p in desired if ip_version(p) in by_family}
        withdraw, announce = s.sent - wanted, wanted - s.sent
        commands: list[tuple[str, set[str], bool]] = []
        for v, peers in by_family.items():
            w = {p for p in withdraw if ip_version(p) == v}
            a = {p for p in announce if ip_version(p) == v}
            commands += [(c, w, False) for c in api.withdraw_commands(w, peers)]
            commands += [(c, a, True) for c in api.announce_commands(a, peers)]
        if commands:
            results = self._send([c for c, _, _ in commands])
            failed = [c for (c, _, _), ok in zip(commands, results) if not ok]
            for (_, prefixes, is_announce), ok in zip(commands, results):
                if ok:
                    if is_announce:
                        s.sent |= prefixes & announce
                    else:
                        s.sent -= prefixes
            if failed:
                self.last_error = f"ExaBGP refused {len(failed)} command(s), e.g. {failed[0][:200]}"
                log.error("%s", self.last_error)
        with self._lock:
            # A refused command is not retried until the next change (it would be refused
            # again); the caller sees last_error rather than waiting forever.
            self._acked_version = max(self._acked_version, version)
            self._acked.notify_all()
            late = self._gave_up and self._acked_version == self._desired_version
            if late:
                self._gave_up = False
        if late:
            self._emit(Acknowledged())

    def _send_eors(self) -> None:
        """End-of-RIB to the peers that came up, once the announcements are known (until
        then a restarted host's peers keep its routes from before)."""
        s = self._session
        if s is None or not s.eor_pending or self._desired is None:
            return
        peers = sorted(s.eor_pending)
        s.eor_pending.clear()
        commands = [api.eor_command(p, self.peer_families.get(p, 4)) for p in peers]
        # An "error" here means the session went down again meanwhile; it gets its
        # End-of-RIB when it comes back up.
        self._send(commands)

    def _send(self, commands: list[str]) -> list[bool]:
        """Write commands (pipelined) and wait for one acknowledgement each."""
        s = self._session
        if s is None or s.conn is None:
            raise DriverError("no ExaBGP process")
        data = "".join(c + "\n" for c in commands).encode()
        try:
            s.conn.sendall(data)
        except OSError as e:
            raise DriverError(f"writing to ExaBGP failed: {e}") from None
        results = []
        deadline = time.monotonic() + self.ack_timeout
        for _ in commands:
            try:
                ack = s.acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DriverError(f"no acknowledgement from ExaBGP within "
                                  f"{self.ack_timeout:.0f}s") from None
            if ack is None:
                raise DriverError("ExaBGP went away before acknowledging")
            results.append(ack.ok)
        return results

    # -- reader threads ------------------------------------------------------------------
    def _read_events(self, s: _Session) -> None:
        reason = "ExaBGP closed its API connection"
        try:
            with s.conn.makefile("r", encoding="utf-8", errors="replace", newline="\n") as f:
                for line in f:
                    ev = api.parse(line)
                    if isinstance(ev, api.Ack):
                        s.acks.put(ev)
                        continue
                    if isinstance(ev, api.PeerState):
                        if ev.state == "up":
                            s.up_peers.add(ev.peer)
                            s.eor_pending.add(ev.peer)
                            self._tasks.put(("peer_up", ev.peer))
                        elif ev.state == "down":
                            s.up_peers.discard(ev.peer)
                            s.eor_pending.discard(ev.peer)
                    elif isinstance(ev, api.Unknown):
                        if ev.line and not ev.line.startswith("reload in progress"):
                            log.warning("ExaBGP said something unexpected (%s): %.200s",
                                        ev.reason, ev.line)
                        continue
                    self._emit(ev)
        except (OSError, ValueError) as e:
            reason = f"ExaBGP API connection failed: {e}"
        s.acks.put(None)
        code = None
        try:
            code = s.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        s.dead.wait(1.0)
        tail = " | ".join(list(s.stderr_tail)[-3:])
        if code is not None:
            reason = f"ExaBGP exited ({_exit_text(code)})" + (f": {tail}" if tail else "")
        self._tasks.put(("died", s.generation, reason))

    def _read_output(self, s: _Session) -> None:
        for raw in s.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                s.stderr_tail.append(line)
                level = logging.WARNING if line.startswith(WARNING_TAG) else logging.INFO
                exabgp_log.log(level, "%s", line)
        s.dead.set()

    def _emit(self, event: object) -> None:
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001  (a consumer bug must not kill the driver)
            log.exception("BGP event handler failed on %r", event)


def ip_version(text: str) -> int:
    """4 or 6: the family of an address or prefix written as text (only IPv6 has a ":")."""
    return 6 if ":" in text else 4


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _die_with_parent() -> None:
    """ExaBGP must not outlive the agent (it would hold the sessions with stale routes)."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
