"""The lab's record on disk: everything ``lab up`` made, so that ``lab down`` can undo it.

``<lab dir>/state.json`` (the lab dir is ``$FELIX_LAB_DIR``, else ``lab`` under felix-py's
state dir, /run/felix-py) is created exclusively, so two ``lab up`` never build at once, and
is rewritten (atomically) *before* each namespace is created and right after each process
starts: after a crash at any point it names everything there is to remove.  Every file
the lab writes lives under ``<lab dir>/<lab id>/``.

A process is recorded with its pid and its start time (``/proc/<pid>/stat``), so a pid
the kernel has since given to another program is never signalled.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from felix_py.datastore import client as client_mod
from felix_py.procfs import start_time

STATE_FILE = "state.json"
# Unix sockets live in the lab's workdir (BIRD's control sockets, etcd's, ExaBGP's API in a
# temporary directory below it) and their paths may not exceed 107 bytes; the deepest is
# "<workdir>/felix-bgp-<host>-<8 random>/api.sock", 37 bytes below the workdir.
MAX_WORKDIR = 107 - 37


class LabExists(RuntimeError):
    """A lab is recorded already (up, or left over by a crash)."""


class LabDirTooLong(ValueError):
    """The lab dir is so deep that the lab's unix sockets would not fit."""


def lab_dir() -> str:
    # Read at call time: tests point FELIX_LAB_DIR (and FELIX_STATE_DIR) elsewhere.
    return os.environ.get("FELIX_LAB_DIR") or os.path.join(client_mod.STATE_DIR, "lab")


@dataclass
class LabState:
    path: str
    lab_id: str
    workdir: str
    phase: str = "building"                     # building | up
    created: float = field(default_factory=time.time)
    plan: dict | None = None
    namespaces: list[str] = field(default_factory=list)
    processes: list[dict] = field(default_factory=list)
    etcd: dict = field(default_factory=dict)    # url, unix endpoint, data dir
    record: str | None = None                   # EMBEDDED_RECORD, when the lab wrote it

    @classmethod
    def create(cls, lab_id: str, directory: str | None = None) -> "LabState":
        directory = os.path.abspath(directory or lab_dir())
        if len(os.path.join(directory, lab_id)) > MAX_WORKDIR:
            raise LabDirTooLong(f"the lab dir {directory} is too long for the unix sockets the "
                                f"lab keeps in it (at most {MAX_WORKDIR - len(lab_id) - 1} "
                                "characters); set FELIX_LAB_DIR to a shorter path")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, STATE_FILE)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise LabExists(f"a lab is already recorded in {path}; run `felixctl lab down` "
                            "first (it also cleans up after a crashed one)") from None
        os.close(fd)
        state = cls(path, lab_id, os.path.join(directory, lab_id))
        os.makedirs(state.workdir, exist_ok=True)
        state.save()
        return state

    @classmethod
    def load(cls, directory: str | None = None) -> "LabState | None":
        """The recorded lab; None if there is none.  A record cut short by a crash while
        it was being written still names the lab id, which is enough to clean up."""
        path = os.path.join(directory or lab_dir(), STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            data = {}
        lab_id = data.get("lab_id", "")
        return cls(path, lab_id, data.get("workdir") or os.path.join(os.path.dirname(path),
                                                                      lab_id),
                   data.get("phase", "building"), data.get("created", 0.0), data.get("plan"),
                   data.get("namespaces", []), data.get("processes", []),
                   data.get("etcd", {}), data.get("record"))

    def save(self) -> None:
        data = {"lab_id": self.lab_id, "workdir": self.workdir, "phase": self.phase,
                "created": self.created, "plan": self.plan, "namespaces": self.namespaces,
                "processes": self.processes, "etcd": self.etcd, "record": self.record}
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add_namespace(self, name: str) -> None:
        """Called before the namespace is created."""
        if name not in self.namespaces:
            self.namespaces.append(name)
            self.save()

    def add_process(self, role: str, pid: int, netns: str) -> None:
        self.processes.append({"role": role, "pid": pid, "netns": netns,
                               "start_time": start_time(pid)})
        self.save()

    def running(self, proc: dict) -> bool:
        """The recorded process still runs (the same one, not a reused pid; a zombie is
        gone)."""
        now = start_time(proc["pid"])
        return now is not None and now == proc.get("start_time")

    def remove(self) -> None:
        for path in (self.path, self.path + ".tmp"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
