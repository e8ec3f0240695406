"""ExaBGP as the driver runs it: ExaBGP's own entry point, tuned for thousands of routes.

``python -m bgp.launcher ARGS`` is ``exabgp ARGS`` with three changes, which together take
ExaBGP from 1.4 s to about 0.6 s to start and announce 5,000 routes (``docs/bgp.md``,
Speed):

- ``Neighbor.remove_self``: ExaBGP hands every route injected through its API to each
  neighbour's ``remove_self``, which deep-copies the whole change (NLRI, attributes and all
  they hold) before resolving "next-hop self" to that neighbour's address.  The replacement
  makes shallow copies of the three objects the original modifies (the change, its NLRI and
  its attribute dictionary) and shares the values inside them, which ExaBGP never modifies
  once a change is parsed.  ExaBGP's parser gives the routes of one API command a single
  attribute dictionary; their copies share one too (per local address), so that it is
  copied, and its index text made, once per command rather than once per route.  Changes
  without "next-hop self" take the original path.
- ``ASYNC.LIMIT``: between two turns of its peers, ExaBGP's reactor runs at most this many
  steps of API work, one route each; every turn costs a new asyncio event loop and UPDATE
  messages of its own.  50 makes 100 turns and 100 small UPDATEs of 5,000 routes; 500
  makes 10, and holds the reactor for a few tens of milliseconds at most.
- ``Update._split_nlris`` sorts the routes of each UPDATE with ``NLRI.__lt__``, which packs
  both routes' index bytes at every comparison: about 9,000 packings for 500 routes, a
  quarter of ExaBGP's time in a bulk announcement.  The routes are sorted by that same
  index as a key first (500 packings); ExaBGP's own sort then finds them in order.  The
  order is the same; routes of a type with its own ordering are left to ExaBGP.

``python -m bgp.launcher --spare`` is the same, started before its configuration exists
(``bgp.driver.Spare``): it imports ExaBGP, which is most of its start-up time, then waits
for one JSON line on stdin, ``{"argv": [...], "env": {...}, "cwd": "..."}``, and runs
ExaBGP with those; end of input without a line makes it exit.

Each change is made only over what it was written for: the source of
``Neighbor.remove_self`` must be exactly ``ORIGINAL``, the limit ``EXABGP_API_STEPS`` and
``Update._split_nlris`` must sort with ``SORTED_NLRIS`` (pyproject pins the ExaBGP versions
this was checked against).  Otherwise that part is left
as ExaBGP has it, and the launcher says so on stderr, which the driver logs as a warning.
"""

from __future__ import annotations

import copy
import inspect
import json
import operator
import os
import sys
import textwrap

WARNING_TAG = "felix-py launcher:"
SPARE_FLAG = "--spare"

ORIGINAL = """\
def remove_self(self, changes):
    change = deepcopy(changes)
    if not change.nlri.nexthop.SELF:
        return change
    neighbor_self = self.ip_self(change.nlri.afi)
    change.nlri.nexthop = neighbor_self
    if Attribute.CODE.NEXT_HOP in change.attributes:
        change.attributes[Attribute.CODE.NEXT_HOP] = NextHop(str(neighbor_self), neighbor_self.pack())
    return change
"""
EXABGP_API_STEPS = 50
API_STEPS = 500
SORTED_NLRIS = "for nlri in sorted(self.nlris):"


def exabgp_script() -> str:
    """The exabgp command installed beside this Python."""
    return os.path.join(os.path.dirname(sys.executable), "exabgp")


def install() -> list[str]:
    """Make the changes; returns why any was left out."""
    return [p for p in (_replace_remove_self(), _raise_api_steps(), _presort_nlris()) if p]


def _replace_remove_self() -> str | None:
    from exabgp.bgp.message.update.attribute import Attribute, NextHop
    from exabgp.bgp.neighbor import Neighbor
    from exabgp.version import version

    original = Neighbor.remove_self
    try:
        source = textwrap.dedent(inspect.getsource(original))
    except (OSError, TypeError) as e:
        return f"cannot read the source of ExaBGP {version}'s Neighbor.remove_self ({e})"
    if source != ORIGINAL:
        return f"ExaBGP {version}'s Neighbor.remove_self is not the one this launcher replaces"

    resolved: dict[bytes, tuple] = {}   # our address -> (parsed attributes, resolved copy)

    def remove_self(self, changes):
        if not changes.nlri.nexthop.SELF:
            return original(self, changes)
        neighbor_self = self.ip_self(changes.nlri.afi)
        change = copy.copy(changes)
        change.nlri = copy.copy(changes.nlri)
        change.nlri.nexthop = neighbor_self
        # The changes of one API command share one attribute set; so do their copies.
        packed = neighbor_self.pack()
        parsed, attributes = resolved.get(packed, (None, None))
        if parsed is not changes.attributes:
            parsed, attributes = changes.attributes, copy.copy(changes.attributes)
            if Attribute.CODE.NEXT_HOP in attributes:
                attributes[Attribute.CODE.NEXT_HOP] = NextHop(str(neighbor_self), packed)
            resolved[packed] = parsed, attributes
        change.attributes = attributes
        return change

    remove_self.__doc__ = "Neighbor.remove_self with shallow copies (felix-py, bgp.launcher)"
    Neighbor.remove_self = remove_self
    return None


def _raise_api_steps() -> str | None:
    from exabgp.reactor.asynchronous import ASYNC
    from exabgp.version import version

    if ASYNC.LIMIT != EXABGP_API_STEPS:
        return (f"ExaBGP {version}'s reactor runs {ASYNC.LIMIT!r} API steps per turn, not "
                f"{EXABGP_API_STEPS}")
    ASYNC.LIMIT = API_STEPS
    return None


def _presort_nlris() -> str | None:
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.version import version

    original = Update._split_nlris
    try:
        source = inspect.getsource(original)
    except (OSError, TypeError) as e:
        return f"cannot read the source of ExaBGP {version}'s Update._split_nlris ({e})"
    if SORTED_NLRIS not in source:
        return f"ExaBGP {version}'s Update._split_nlris does not sort as this launcher expects"

    def _split_nlris(self, negotiated):
        if all(type(n).__lt__ is NLRI.__lt__ for n in self.nlris):
            self.nlris = sorted(self.nlris, key=operator.methodcaller("index"))
        return original(self, negotiated)

    _split_nlris.__doc__ = "Update._split_nlris on NLRIs sorted by key first (felix-py, bgp.launcher)"
    Update._split_nlris = _split_nlris
    return None


def main() -> None:
    # ExaBGP finds its installation root from argv[0]: make it the exabgp command's.
    sys.argv[0] = exabgp_script()
    problems = install()
    from exabgp.application.main import main as exabgp_main
    if sys.argv[1:] == [SPARE_FLAG]:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)             # the agent did not need it
        orders = json.loads(line)
        os.environ.update(orders["env"])
        os.chdir(orders["cwd"])
        sys.argv[1:] = orders["argv"]
    for problem in problems:
        print(f"{WARNING_TAG} {problem}; left as it is (announcing thousands of routes is "
              "slower)", file=sys.stderr, flush=True)
    sys.exit(exabgp_main())


if __name__ == "__main__":
    main()
