"""The lab's connectivity matrix: every workload pings every other one (ICMP echo).

The expected result of each pair comes from the datastore's policy, evaluated by
``policy.testing.Oracle`` (written apart from the rule compiler); the observed one from a
real ping out of the source workload's namespace, all pairs at once.  A pair that gets no
answer is tried once more before it counts as closed, so that one packet lost while ARP
(neighbour discovery) resolves is not reported as policy.

A dual-stack lab has a matrix per IP version (``run(plan, store, 6)``): the same pairs,
ICMPv6 echo between the workloads' IPv6 addresses, expected by the same oracle.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from felix_py.calc.store import Store
from felix_py.lab.netns import Netns
from felix_py.lab.plan import Plan, address_of
from policy.testing import Oracle, Packet

PARALLEL = 64
# The echo request of each version, as the oracle matches it (protocol, type, code).
ECHO = {4: ("icmp", 8, 0), 6: ("icmpv6", 128, 0)}


@dataclass(frozen=True)
class Pair:
    src: str
    dst: str
    expected: bool
    observed: bool

    @property
    def passed(self) -> bool:
        return self.expected == self.observed


@dataclass
class Matrix:
    names: list[str]                     # workloads in plan order
    addresses: dict[str, str]            # workload -> its IPv4 (IPv6) address
    pairs: dict[tuple[str, str], Pair]
    version: int = 4

    @property
    def passed(self) -> int:
        return sum(p.passed for p in self.pairs.values())

    @property
    def failed(self) -> int:
        return len(self.pairs) - self.passed


def addresses(plan: Plan, store: Store, version: int = 4) -> dict[str, str]:
    """Each planned workload's IPv4 (IPv6) address, from its endpoint in the datastore."""
    out = {}
    for eid, ep in store.endpoints.items():
        nets = ep.nets(version)
        if eid.workload in {w.name for w in plan.workloads} and nets:
            out[eid.workload] = address_of(nets[0])
    return out


def run(plan: Plan, store: Store, version: int = 4) -> Matrix:
    ips = addresses(plan, store, version)
    names = [w.name for w in plan.workloads if w.name in ips]
    oracle = Oracle(store)
    todo = [(s, d) for s in names for d in names if s != d]
    protocol, echo, code = ECHO[version]
    want = {(s, d): oracle.allowed(Packet(ips[s], ips[d], protocol, icmp_type=echo,
                                          icmp_code=code))
            for s, d in todo}

    def ping(pair, count=1):      # iputils' ping takes either family's address
        s, d = pair
        return Netns(plan.netns(s)).ping(ips[d], count=count, timeout=1)

    with ThreadPoolExecutor(PARALLEL) as pool:
        got = dict(zip(todo, pool.map(ping, todo)))
        silent = [p for p in todo if not got[p]]
        got.update(zip(silent, pool.map(lambda p: ping(p, count=2), silent)))
    return Matrix(names, ips, {p: Pair(*p, want[p], got[p]) for p in todo}, version)


def grid(m: Matrix) -> list[list[str]]:
    """Rows of the grid: a header of destinations, then one row per source; each cell
    ``expected/observed`` (y: answered, n: no answer), ``!`` after a mismatch."""
    rows = [["from \\ to", *m.names]]
    for s in m.names:
        row = [s]
        for d in m.names:
            p = m.pairs.get((s, d))
            if p is None:
                row.append(".")
            else:
                cell = f"{'y' if p.expected else 'n'}/{'y' if p.observed else 'n'}"
                row.append(cell if p.passed else cell + "!")
        rows.append(row)
    return rows
