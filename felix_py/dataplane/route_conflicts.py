"""Routes the kernel refused because a route felix-py does not own holds their prefix.

The route manager creates new routes with NLM_F_EXCL, so a connected or static route, or
another routing daemon's, is never overwritten: the kernel answers EEXIST.  Trying again
after a backoff would change nothing, so such a conflict is recorded once and tried again
only when the route wanted there changes or the route holding the prefix goes away.

``ConflictWatch`` notices the latter.  While there are conflicts it keeps a netlink socket
subscribed to route events, and a thread that reports the deletion of a conflicting
prefix: ``take_freed()`` hands those prefixes to the route manager's next apply, and a
``RouteFreed`` message posted to the agent's queue makes that apply happen now.  With no
conflicts there is no socket and no thread: the agent's own route batches cost nothing here.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from felix_py.dataplane import netlink as nl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conflict:
    route: nl.Route         # the route felix-py wants
    holder: str             # the route holding the prefix, described (netlink.describe)


@dataclass(frozen=True)
class RouteFreed:
    """Posted to the agent's queue: a route holding a conflicting prefix was deleted.  It
    only wakes the loop; the route manager takes the prefixes from its watch."""
    dst: str


class ConflictWatch:
    def __init__(self, post: Callable[[object], None] | None = None):
        self._post = post
        self._lock = threading.Lock()
        self._watched: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
        self._freed: set[str] = set()
        self._stop: threading.Event | None = None

    def watch(self, dsts: Iterable[str]) -> None:
        """Watch exactly these prefixes; with none, the socket and the thread go.

        The socket is subscribed before this returns, so a route deleted after the call is
        reported even if the thread has not read it yet."""
        watched = {ipaddress.ip_network(d): d for d in dsts}
        with self._lock:
            self._watched = watched
            self._freed &= set(watched.values())
        if watched and self._stop is None:
            self._stop = threading.Event()
            sock = nl.Netlink(groups=nl.RTMGRP_IPV4_ROUTE | nl.RTMGRP_IPV6_ROUTE)
            threading.Thread(target=self._run, args=(sock, self._stop), daemon=True,
                             name="felix-route-conflicts").start()
        elif not watched and self._stop is not None:
            self._stop.set()            # the thread closes its socket within 0.5 s
            self._stop = None

    def report(self, dsts: Iterable[str]) -> None:
        """These prefixes may be free now: try them again on the next apply."""
        dsts = set(dsts)
        if not dsts:
            return
        with self._lock:
            self._freed |= dsts
        if self._post is not None:
            for dst in sorted(dsts):
                self._post(RouteFreed(dst))

    def take_freed(self) -> set[str]:
        with self._lock:
            freed, self._freed = self._freed, set()
        return freed

    def close(self) -> None:
        self.watch(())

    def _run(self, sock: nl.Netlink, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                ready, _, _ = select.select([sock.fileno()], [], [], 0.5)
                if not ready or stop.is_set():
                    continue
                deleted: set | None
                try:
                    deleted = {ipaddress.ip_network(parsed[1].dst)
                               for mtype, _seq, payload in sock._recv()
                               if mtype == nl.RTM_DELROUTE
                               and (parsed := nl.parse_route(payload)) is not None}
                except OSError as e:
                    # ENOBUFS: events were lost, so any conflicting prefix may be free.
                    log.warning("route events lost (%s); trying every conflicting route "
                                "again", e)
                    deleted = None
                with self._lock:
                    freed = {d for n, d in self._watched.items()
                             if deleted is None or n in deleted}
                self.report(freed)
        finally:
            sock.close()
