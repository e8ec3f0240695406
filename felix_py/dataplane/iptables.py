"""iptables: felix-py's chains in the filter table, one ``iptables-restore`` batch per apply.

``IptablesTable`` keeps one family's ``felix-`` chains equal to a desired
``{chain: (rule body, ...)}``.  Every rule it writes carries ``-m comment --comment
felix:<hash>``; an apply diffs the hashes of a chain against the desired ones and sends
only deletes and inserts for what differs, in one ``iptables-restore --noflush`` commit,
so rules that did not change keep their counters.  The jumps from INPUT, FORWARD and
OUTPUT are kept first in their chains.  A full reconcile (the first apply, after a failure,
and on ``refresh()``) reads the table back with ``iptables-save`` and also removes
``felix-`` chains nobody wants any more; rules and chains that are not ours are never
touched.

Why not python-iptables: measured in bench/bench_policy.py's first run, building rules
through it costs about 0.7 ms each (50-65x ``iptables-restore`` for the same rules), far
from the 3x target; see docs/policy.md.  Like python-iptables, the restore tools used here
program the legacy (x_tables) backend; ``host_backend()`` says which one the host's own
``iptables`` command uses so the agent can warn when they differ.
"""

from __future__ import annotations

import difflib
import logging
import re
import subprocess
from dataclasses import dataclass, field

from felix_py.dataplane.manager import DataplaneError
from policy import names

log = logging.getLogger(__name__)

TOOLS = {4: ("iptables-legacy-save", "iptables-legacy-restore"),
         6: ("ip6tables-legacy-save", "ip6tables-legacy-restore")}
_HASH_RE = re.compile(r'--comment "?felix:([0-9a-f]{16})"?')
_JUMP_RE = re.compile(r"\s-[jg] (\S+)")
_ERR_LINE_RE = re.compile(r"line:? (\d+)")


class IptablesError(DataplaneError):
    """iptables-restore refused a batch, or a tool could not be run."""


def host_backend(run=subprocess.run) -> str:
    """"legacy", "nf_tables" or "unknown": what the host's ``iptables`` command programs."""
    try:
        out = run(["iptables", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    m = re.search(r"\((legacy|nf_tables)\)", out)
    return m.group(1) if m else "unknown"


class RestoreBackend:
    """The real kernel: ``ip(6)tables-legacy-save`` / ``-restore`` of the filter table."""

    def __init__(self, family: int, wait_secs: int = 10):
        self.family = family
        self.save_cmd, self.restore_cmd = TOOLS[family]
        self.wait_secs = wait_secs

    def save(self) -> str:
        r = self._run([self.save_cmd, "-t", "filter"], None)
        return r.stdout

    def restore(self, text: str) -> None:
        r = self._run([self.restore_cmd, "--noflush", "-w", str(self.wait_secs)], text,
                      check=False)
        if r.returncode != 0:
            raise IptablesError(f"{self.restore_cmd} failed: {_explain(r.stderr, text)}")

    def _run(self, argv: list[str], stdin: str | None, check: bool = True):
        try:
            r = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                               timeout=self.wait_secs + 60)
        except (OSError, subprocess.SubprocessError) as e:
            raise IptablesError(f"could not run {argv[0]}: {e}") from None
        if check and r.returncode != 0:
            raise IptablesError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
        return r


def _explain(stderr: str, text: str) -> str:
    msg = stderr.strip() or "no message"
    m = _ERR_LINE_RE.search(msg)
    lines = text.splitlines()
    if m and 0 < int(m.group(1)) <= len(lines):
        msg += f" (line {m.group(1)}: {lines[int(m.group(1)) - 1]})"
    return msg


@dataclass
class TableState:
    """What the filter table holds, as far as felix-py cares."""
    chains: dict[str, list[str | None]] = field(default_factory=dict)  # felix chain -> hashes
    builtins: dict[str, list[str | None]] = field(default_factory=dict)  # -> felix jump targets


def parse_save(text: str) -> TableState:
    """The felix- chains (with each rule's hash, None for a rule we did not write) and,
    for every built-in chain, which of its rules jump to a felix- chain."""
    state, table = TableState(), None
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        if table != "filter":
            continue
        if line.startswith(":"):
            chain = line[1:].split()[0]
            if names.is_ours(chain):
                state.chains[chain] = []
            elif chain in names.HOOKS:
                state.builtins[chain] = []
        elif line.startswith("-A "):
            chain = line.split()[1]
            if chain in state.chains:
                m = _HASH_RE.search(line)
                state.chains[chain].append(m.group(1) if m else None)
            elif chain in state.builtins:
                m = _JUMP_RE.search(line)
                target = m.group(1) if m else None
                state.builtins[chain].append(target if target and names.is_ours(target)
                                             else None)
    return state


def render(desired: dict[str, tuple[str, ...]], dirty: set[str],
           state: TableState) -> tuple[list[str], TableState]:
    """The ``iptables-restore --noflush`` lines that bring the chains in ``dirty`` (a name
    missing from ``desired`` is removed) and the hooks in line, and the state after them."""
    # Lists are replaced, never changed in place, so the old state stays valid on failure.
    new_state = TableState(dict(state.chains), {c: list(t) for c, t in state.builtins.items()})
    lines = []
    creates = sorted(c for c in dirty if c in desired and c not in state.chains)
    lines += [f":{c} - [0:0]" for c in creates]

    for builtin, target in names.HOOKS.items():
        current = new_state.builtins.get(builtin, [])
        if current[:1] == [target] and not any(current[1:]):
            continue
        for i in reversed(range(len(current))):
            if current[i] is not None:
                lines.append(f"-D {builtin} {i + 1}")
                del current[i]
        lines.append(f"-I {builtin} 1 {_line(builtin, f'-j {target}')}")
        new_state.builtins[builtin] = [target] + current

    for chain in sorted(dirty):
        rules = desired.get(chain)
        if rules is None:
            continue
        want = [names.rule_hash(chain, body) for body in rules]
        have = new_state.chains.get(chain)
        if have is None:
            lines += [f"-A {chain} {_line(chain, body, h)}" for body, h in zip(rules, want)]
        elif have != want:
            lines += _diff(chain, have, want, rules)
        new_state.chains[chain] = want

    stale = sorted(c for c in dirty if c not in desired and c in new_state.chains)
    lines += [f"-F {c}" for c in stale]
    lines += [f"-X {c}" for c in stale]
    for c in stale:
        del new_state.chains[c]
    return lines, new_state


def _diff(chain: str, have: list, want: list[str], rules: tuple[str, ...]) -> list[str]:
    ops = difflib.SequenceMatcher(None, have, want, autojunk=False).get_opcodes()
    if not any(tag == "equal" for tag, *_ in ops):
        return [f"-F {chain}"] + [f"-A {chain} {_line(chain, b, h)}" for b, h in zip(rules, want)]
    out = []
    # From the end of the chain backwards, so that positions still to be edited hold.
    for tag, i1, i2, j1, j2 in reversed(ops):
        if tag in ("replace", "delete"):
            out += [f"-D {chain} {i1 + 1}"] * (i2 - i1)
        if tag in ("replace", "insert"):
            out += [f"-I {chain} {i1 + 1 + k} {_line(chain, rules[j], want[j])}"
                    for k, j in enumerate(range(j1, j2))]
    return out


def _line(chain: str, body: str, digest: str | None = None) -> str:
    return f'-m comment --comment "felix:{digest or names.rule_hash(chain, body)}" {body}'


class IptablesTable:
    """One family's filter table, brought in line with desired chains batch by batch."""

    def __init__(self, family: int, backend=None):
        self.family = family
        self.backend = backend or RestoreBackend(family)
        self.state: TableState | None = None    # None: read the kernel before the next apply
        self.last_batch_lines = 0

    def refresh(self) -> None:
        """Forget what we believe the table holds: the next apply reads and reconciles."""
        self.state = None

    def apply(self, desired: dict[str, tuple[str, ...]], dirty: set[str]) -> None:
        full = self.state is None
        if full:
            self.state = parse_save(self.backend.save())
            dirty = set(desired) | set(self.state.chains)
        lines, new_state = render(desired, dirty, self.state)
        self.last_batch_lines = len(lines)
        if not lines:
            return
        if full:
            stale = sorted(c for c in self.state.chains if c not in desired)
            if stale:
                log.info("IPv%d: removing %d stale felix chain(s): %s", self.family,
                         len(stale), ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))
        try:
            self.backend.restore("*filter\n" + "\n".join(lines) + "\nCOMMIT\n")
        except IptablesError:
            self.state = None     # we no longer know what the table holds
            raise
        self.state = new_state
