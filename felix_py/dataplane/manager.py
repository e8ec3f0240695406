"""The contract between the agent's main loop and each dataplane manager.

Per batch of datastore (or link) changes the agent takes each manager in turn, in the
order of ``agent.build_managers``, and calls:

1. ``on_changes(store, changes, links)``: recompute the desired state of what changed (pure
   work, no kernel) and mark it dirty;
2. ``apply()``: bring the kernel (or ExaBGP) in line with the desired state in as few calls
   as possible.  A manager raises ``DataplaneError`` when it could not; the agent logs it,
   counts it, goes on with the next manager, and calls ``apply()`` again after a short
   backoff.

A manager's ``apply`` runs before the next manager's ``on_changes``, so that the first ones
(ExaBGP's configuration, routes, announcements) take effect without waiting for the later
ones' computation.

``on_changes`` is never called before the first snapshot is in sync, so the first
``apply()`` sees the whole datastore and can reconcile (remove only what is ours and stale).
``endpoint_problems()`` lets a manager report per-endpoint errors (a missing interface, an
address claimed twice) that end up in the endpoint's status key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from felix_py.datastore.keys import EndpointId

if TYPE_CHECKING:
    from felix_py.calc.store import Changes, Store
    from felix_py.dataplane.links import Links


@dataclass(frozen=True)
class DataplaneRefresh:
    """Posted every ``DataplaneRefreshSecs``: managers that keep what they believe the
    kernel holds forget it and read it back on their next apply, which puts back what
    something else removed or changed (``on_message``)."""


class DataplaneError(RuntimeError):
    """The kernel (or ExaBGP) refused or failed a change; retried on the next apply."""


class Manager(Protocol):
    name: str

    def on_changes(self, store: "Store", changes: "Changes", links: "Links") -> None: ...

    def apply(self) -> None: ...

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        """eid -> (status "down"|"error", reason) for endpoints this manager cannot serve."""
        ...

    def close(self) -> None: ...

