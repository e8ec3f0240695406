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

Why not python-iptables: building rules through it costs about 0.7-1 ms each, 40-100x
``iptables-restore`` for the same rules (bench/bench_policy.py), far from the 3x target;
see docs/policy.md.  Batches are streamed into the restore process as they are rendered.  Like python-iptables, the restore tools used here
program the legacy (x_tables) backend; ``host_backend()`` says which one the host's own
``iptables`` command uses so the agent can warn when they differ.
"""

from __future__ import annotations

import difflib
import logging
import re
import subprocess
from dataclasses import dataclass, field
import itertools
from typing import Iterable, Iterator

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
        try:
            r = subprocess.run([self.save_cmd, "-t", "filter"], capture_output=True, text=True,
                               timeout=self.wait_secs + 60)
        except (OSError, subprocess.SubprocessError) as e:
            raise IptablesError(f"could not run {self.save_cmd}: {e}") from None
        if r.returncode != 0:
            raise IptablesError(f"{self.save_cmd} failed: {r.stderr.strip()}")
        return r.stdout

    def restore(self, lines: Iterable[str]) -> None:
        """Stream ``lines`` (a whole ``*filter`` ... ``COMMIT`` batch) into one
        iptables-restore; it parses while the rest is still being produced."""
        argv = [self.restore_cmd, "--noflush", "-w", str(self.wait_secs)]
        sent: list[str] = []
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as e:
            raise IptablesError(f"could not run {argv[0]}: {e}") from None
        it = iter(lines)
        try:
            while chunk := list(itertools.islice(it, 2000)):
                sent += chunk
                proc.stdin.write("\n".join(chunk) + "\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass            # it gave up early; its exit status and message say why
        except BaseException:
            proc.kill()     # the batch could not be produced: commit nothing
            proc.wait()
            raise
        try:
            stderr = proc.stderr.read()
            code = proc.wait(timeout=self.wait_secs + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise IptablesError(f"{self.restore_cmd} did not finish") from None
        if code != 0:
            raise IptablesError(f"{self.restore_cmd} failed: {_explain(stderr, sent)}")


def _explain(stderr: str, lines: list[str]) -> str:
    msg = stderr.strip() or "no message"
    m = _ERR_LINE_RE.search(msg)
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
    new_state = _copy(state)
    return list(render_iter(desired, dirty, state, new_state)), new_state


def _copy(state: TableState) -> TableState:
    # Lists are replaced, never changed in place, so the old state stays valid on failure.
    return TableState(dict(state.chains), {c: list(t) for c, t in state.builtins.items()})


def render_iter(desired: dict[str, tuple[str, ...]], dirty: set[str], state: TableState,
                new_state: TableState) -> Iterator[str]:
    """``render`` as a generator that updates ``new_state`` as it goes, so that a batch can
    be streamed into iptables-restore while the rest of it is still being rendered."""
    creates = sorted(c for c in dirty if c in desired and c not in state.chains)
    for c in creates:
        yield f":{c} - [0:0]"

    for builtin, target in names.HOOKS.items():
        current = new_state.builtins.get(builtin, [])
        if current[:1] == [target] and not any(current[1:]):
            continue
        for i in reversed(range(len(current))):
            if current[i] is not None:
                yield f"-D {builtin} {i + 1}"
                del current[i]
        yield f"-I {builtin} 1 {_line(builtin, f'-j {target}')}"
        new_state.builtins[builtin] = [target] + current

    for chain in sorted(dirty):
        rules = desired.get(chain)
        if rules is None:
            continue
        want = [names.rule_hash(chain, body) for body in rules]
        have = new_state.chains.get(chain)
        if have is None:
            for body, h in zip(rules, want):
                yield f'-A {chain} -m comment --comment "felix:{h}" {body}'
        elif have != want:
            yield from _diff(chain, have, want, rules)
        new_state.chains[chain] = want

    stale = sorted(c for c in dirty if c not in desired and c in new_state.chains)
    for c in stale:
        yield f"-F {c}"
    for c in stale:
        yield f"-X {c}"
        del new_state.chains[c]


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
        self._reconcile = True                  # the next apply reconciles in full
        self.last_batch_lines = 0

    def refresh(self) -> None:
        """Forget what we believe the table holds: the next apply reads and reconciles."""
        self.state = None
        self._reconcile = True

    def ensure(self, chains: dict[str, tuple[str, ...]]) -> int:
        """Create those of ``chains`` that do not exist and put the hooks in place, changing
        nothing else: a chain that exists keeps its rules.  The next apply still reconciles
        in full (without reading the table again).  Returns how many felix- chains the
        table held before."""
        state = parse_save(self.backend.save())
        lines, new_state = render(chains, {c for c in chains if c not in state.chains}, state)
        if lines:
            self.backend.restore(["*filter", *lines, "COMMIT"])
        self.state, self._reconcile = new_state, True
        return len(state.chains)

    def apply(self, desired: dict[str, tuple[str, ...]], dirty: set[str]) -> None:
        full = self._reconcile          # also whenever the state is unknown (None)
        if full:
            if self.state is None:
                self.state = parse_save(self.backend.save())
            self._reconcile = False
            dirty = set(desired) | set(self.state.chains)
            stale = sorted(c for c in self.state.chains if c not in desired)
            if stale:
                log.info("IPv%d: removing %d stale felix chain(s): %s", self.family,
                         len(stale), ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""))
        new_state = _copy(self.state)
        lines = render_iter(desired, dirty, self.state, new_state)
        first = next(lines, None)
        self.last_batch_lines = 0
        if first is None:
            self.state = new_state
            return

        def counted():
            for line in itertools.chain((first,), lines):
                self.last_batch_lines += 1
                yield line
        try:
            self.backend.restore(itertools.chain(("*filter",), counted(), ("COMMIT",)))
        except IptablesError:
            self.refresh()        # we no longer know what the table holds
            raise
        self.state = new_state
