"""ipsets: felix-py's ``felix-`` address sets, written in one ``ipset restore`` per phase.

Sets change in two phases around the iptables commit: ``update()`` creates sets and adds
or removes members before the rules that match them are written, ``remove_stale()``
destroys sets no rule needs any more after the rules that matched them are gone.  Members
are diffed against what we last wrote, so an endpoint joining a group is one ``add``.  A
full reconcile (first apply, after a failure, on ``refresh()``) reads the sets back with
``ipset save``; sets not named ``felix-`` are never touched.

Why not pyroute2's ipset API: it sends one netlink request per member and waits for each
answer, measured at 50-100x ``ipset restore`` for 5,000 members (docs/policy.md).
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass

from felix_py.dataplane.manager import DataplaneError
from policy import names
from policy.host import SetSpec

log = logging.getLogger(__name__)

MAXELEM = 1048576
_FAMILY = {4: "inet", 6: "inet6"}
_ERR_LINE_RE = re.compile(r"[Ee]rror in line (\d+)")


class IpsetError(DataplaneError):
    """``ipset`` refused a batch or could not be run."""


class IpsetBackend:
    """The real kernel, through the ``ipset`` command."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout

    def save(self) -> str:
        return self._run(["ipset", "save"], None).stdout

    def restore(self, text: str) -> None:
        self._run(["ipset", "restore", "-exist"], text)

    def _run(self, argv, stdin):
        try:
            r = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                               timeout=self.timeout)
        except (OSError, subprocess.SubprocessError) as e:
            raise IpsetError(f"could not run {argv[0]}: {e}") from None
        if r.returncode != 0:
            msg = r.stderr.strip() or "no message"
            m = _ERR_LINE_RE.search(msg)
            lines = (stdin or "").splitlines()
            if m and 0 < int(m.group(1)) <= len(lines):
                msg += f" (line: {lines[int(m.group(1)) - 1]})"
            raise IpsetError(f"{' '.join(argv)} failed: {msg}")
        return r


@dataclass
class _Held:
    family: int | None        # None: a felix- set of a type we do not make
    members: set[str]


def parse_save(text: str) -> dict[str, _Held]:
    sets: dict[str, _Held] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or not names.is_ours(parts[1]):
            continue
        if parts[0] == "create":
            family = None
            if parts[2] == "hash:ip" and "family" in parts:
                fam = parts[parts.index("family") + 1]
                family = {v: k for k, v in _FAMILY.items()}.get(fam)
            sets[parts[1]] = _Held(family, set())
        elif parts[0] == "add" and parts[1] in sets:
            sets[parts[1]].members.add(parts[2])
    return sets


class Ipsets:
    def __init__(self, backend=None):
        self.backend = backend or IpsetBackend()
        self.held: dict[str, _Held] | None = None   # None: read the kernel first

    def refresh(self) -> None:
        self.held = None

    def update(self, desired: dict[str, SetSpec], dirty: set[str]) -> None:
        """Create the sets in ``desired`` that ``dirty`` names and bring their members in line."""
        if self.held is None:
            self.held = parse_save(self.backend.save())
            dirty = set(desired)
        lines = []
        plan: dict[str, _Held] = {}
        for name in sorted(dirty):
            spec = desired.get(name)
            if spec is None:
                continue
            held = self.held.get(name)
            if held is not None and held.family != spec.family:
                # Not a set we would have made: replace it (fails loudly if still in use).
                lines.append(f"destroy {name}")
                held = None
            if held is None:
                lines.append(f"create {name} hash:ip family {_FAMILY[spec.family]} "
                             f"maxelem {MAXELEM}")
                held = _Held(spec.family, set())
            lines += [f"del {name} {a}" for a in sorted(held.members - spec.members)]
            lines += [f"add {name} {a}" for a in sorted(spec.members - held.members)]
            plan[name] = _Held(spec.family, set(spec.members))
        self._restore(lines)
        self.held.update(plan)

    def remove_stale(self, desired: dict[str, SetSpec]) -> None:
        """Destroy every felix- set not in ``desired`` (call after the iptables commit)."""
        if self.held is None:
            return
        stale = sorted(n for n in self.held if n not in desired)
        if not stale:
            return
        log.info("destroying %d felix ipset(s) no rule uses: %s", len(stale),
                 ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))
        self._restore([f"destroy {n}" for n in stale])
        for n in stale:
            del self.held[n]

    def _restore(self, lines: list[str]) -> None:
        if not lines:
            return
        try:
            self.backend.restore("\n".join(lines) + "\nCOMMIT\n")
        except IpsetError:
            self.held = None
            raise
