"""BIRD switches in network namespaces, for the FV tests, the benchmarks and the lab.

``Bird(ns, name, workdir).start(conf)`` runs ``bird`` inside ``ns`` with its own
configuration, control socket and pid file under ``workdir``; ``routes()``,
``protocols()`` and ``sessions()`` read its state through ``birdc``; ``stop()`` ends it
by its pid.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from typing import NamedTuple

from felix_py.lab.netns import Netns, NetnsError, wait_for

_ROUTE_RE = re.compile(r"^(\S+/\d+)\s+(unicast|blackhole|unreachable|prohibit)")
_VIA_RE = re.compile(r"^\s+via (\S+)")
_CHANNEL_RE = re.compile(r"^\s+Channel ipv([46])\b")
# BIRD's control protocol: "NNNN-text" and " text" go on, "NNNN text" ends a reply.
_CODE_RE = re.compile(r"^(\d{4})([ -])")


def _birdc_line(line: str) -> str | None:
    """A reply line as birdc prints it: without its code; code 0000 prints nothing."""
    line = line.rstrip("\n")
    if line.startswith("+"):                  # an asynchronous message
        return f">>> {line[1:]}\n"
    if line.startswith(" "):
        return line[1:] + "\n"
    m = _CODE_RE.match(line)
    if m:
        return None if m.group(1) == "0000" else line[5:] + "\n"
    return f"??? <{line}>\n" if line else None


def _bgp_summary(line: str) -> tuple[str, str] | None:
    """(name, BGP state) of a BGP protocol's summary line (``show protocols``, and the
    first line of each protocol in ``show protocols all``); None for any other line."""
    parts = line.split()
    if len(parts) >= 4 and parts[1] == "BGP":
        return parts[0], parts[-1] if parts[3] == "up" else parts[3]
    return None


class Session(NamedTuple):
    """A BGP session of BIRD's: its state as ``protocols()`` gives it, and the IP version
    of its channel (None: it has none)."""
    state: str
    version: int | None


class Bird:
    def __init__(self, ns: Netns, name: str, workdir: str):
        self.ns, self.name = ns, name
        self.conf = os.path.join(workdir, f"{name}.conf")
        self.sock = os.path.join(workdir, f"{name}.ctl")
        self.pidfile = os.path.join(workdir, f"{name}.pid")
        self.log = os.path.join(workdir, f"{name}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, conf_text: str) -> "Bird":
        with open(self.conf, "w") as f:
            f.write(conf_text)
        self.proc = self.ns.popen(["bird", "-f", "-c", self.conf, "-s", self.sock,
                                   "-P", self.pidfile], log_path=self.log)
        wait_for(lambda: self.proc.poll() is not None or self._ready(), 10,
                 what=f"BIRD {self.name} control socket")
        if self.proc.poll() is not None:
            raise RuntimeError(f"BIRD {self.name} exited: {self._log_tail()}")
        return self

    def _ready(self) -> bool:
        try:
            return os.path.exists(self.sock) and bool(self.birdc("show", "status"))
        except NetnsError:
            return False

    def _log_tail(self) -> str:
        try:
            with open(self.log) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def configure(self, conf_text: str) -> None:
        with open(self.conf, "w") as f:
            f.write(conf_text)
        out = self.birdc("configure")
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise RuntimeError(f"BIRD {self.name} refused its new configuration: {out}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.ns.stop(self.proc, sig)
            self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def birdc(self, *args: str, timeout: float = 30.0) -> str:
        """What ``birdc -s SOCK ARGS`` prints, read from the control socket itself: a
        benchmark polling BIRD every 20 ms would otherwise start two processes each time,
        competing for the CPU with what it measures.  Raises NetnsError where birdc would
        fail: BIRD cannot be reached, or it answers with an error (codes 8000-9999)."""
        command = " ".join(args)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.sock)
                with s.makefile("rw", encoding="utf-8", errors="replace", newline="\n") as f:
                    out = [_birdc_line(f.readline())]         # the greeting
                    f.write(command + "\n")
                    f.flush()
                    for line in f:
                        out.append(_birdc_line(line))
                        if (last := _CODE_RE.match(line)) and last.group(2) == " ":
                            break
                    else:
                        raise OSError("the connection closed in the middle of a reply")
        except OSError as e:
            raise NetnsError(f"birdc {command!r} to BIRD {self.name} at {self.sock}: {e}") \
                from None
        text = "".join(x for x in out if x is not None)
        if int(last.group(1)) >= 8000:
            raise NetnsError(f"birdc {command!r} to BIRD {self.name} failed: {text.strip()}")
        return text

    def routes(self, table: str = "master4") -> dict[str, set[str]]:
        """prefix -> next hops of every route BIRD holds (empty set: blackhole etc.)."""
        out: dict[str, set[str]] = {}
        current = None
        for line in self.birdc("show", "route", "table", table).splitlines():
            m = _ROUTE_RE.match(line)
            if m:
                current = m.group(1)
                out.setdefault(current, set())
                continue
            m = _VIA_RE.match(line)
            if m and current:
                out[current].add(m.group(1))
        return out

    def protocols(self) -> dict[str, str]:
        """BGP protocol name -> its BGP state (Established, Active, Connect, ...)."""
        out = {}
        for line in self.birdc("show", "protocols").splitlines():
            if summary := _bgp_summary(line):
                name, state = summary
                out[name] = state
        return out

    def sessions(self) -> dict[str, Session]:
        """BGP protocol name -> its state and the IP version of its channel, from one
        ``show protocols all``: a protocol's summary line (as in ``show protocols``) at the
        left margin, its details indented below it.  A session with several channels gets
        the version of the last (each session of ``bgp.fabric`` has one)."""
        out: dict[str, Session] = {}
        current = None
        for line in self.birdc("show", "protocols", "all").splitlines():
            if line and not line[0].isspace():      # a protocol's summary, or a heading
                current = None
                if summary := _bgp_summary(line):
                    current, state = summary
                    out[current] = Session(state, None)
                continue
            m = _CHANNEL_RE.match(line)
            if m and current:
                out[current] = out[current]._replace(version=int(m.group(1)))
        return out

