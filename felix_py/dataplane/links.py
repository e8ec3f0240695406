"""The interfaces of this namespace, kept current from netlink link events.

``LinkMonitor`` subscribes to RTMGRP_LINK, then dumps the existing links on the same socket,
so the dump and later events arrive in the kernel's order; it posts the dump as one
``LinksSynced`` message (thousands of links at a host's start), then the events that came
in the middle of the dump, then a ``LinkUpdate`` per event, to the agent's queue.  ``Links`` is the table the main loop keeps from those messages, and
what managers look interfaces up in.  No polling.
"""

from __future__ import annotations

import logging
import select
import threading
from dataclasses import dataclass
from typing import Callable

from felix_py.dataplane import netlink as nl

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    up: bool
    mac: str | None


@dataclass(frozen=True, slots=True)
class LinkUpdate:
    name: str
    info: LinkInfo | None        # None: the link is gone


@dataclass(frozen=True, slots=True)
class LinksSynced:
    """A complete dump: every link of the namespace (again after a monitor restart)."""
    links: tuple[LinkInfo, ...]


class Links:
    def __init__(self):
        self._by_name: dict[str, LinkInfo] = {}
        self.synced = False

    def get(self, name: str) -> LinkInfo | None:
        return self._by_name.get(name)

    def names(self) -> set[str]:
        return set(self._by_name)

    def apply(self, upd: LinkUpdate) -> bool:
        """Record an update; True when it changes what a manager could see."""
        old = self._by_name.get(upd.name)
        if upd.info is None:
            self._by_name.pop(upd.name, None)
            return old is not None
        self._by_name[upd.name] = upd.info
        return old != upd.info

    def replace(self, links: tuple[LinkInfo, ...]) -> set[str]:
        """Make the table a complete dump (links gone meanwhile are dropped); the names
        whose entry changed."""
        new = {info.name: info for info in links}
        changed = {name for name in self._by_name.keys() | new.keys()
                   if self._by_name.get(name) != new.get(name)}
        self._by_name = new
        self.synced = True
        return changed


class LinkMonitor:
    def __init__(self, post: Callable[[object], None]):
        self.post = post
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: nl.Netlink | None = None

    def start(self) -> "LinkMonitor":
        self._sock = nl.Netlink(groups=nl.RTMGRP_LINK)
        self._thread = threading.Thread(target=self._run, name="felix-links", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._sock:
            self._sock.close()

    def _run(self) -> None:
        sock = self._sock
        try:
            during: list[tuple[int, bytes]] = []
            self.post(LinksSynced(tuple(LinkInfo(*link) for link in sock.dump_links(during))))
            for msg_type, payload in during:    # a link added or removed mid-dump
                self._event(msg_type, payload)
            while not self._stop.is_set():
                ready, _, _ = select.select([sock.fileno()], [], [], 0.5)
                if not ready:
                    continue
                for msg_type, _seq, payload in sock._recv():
                    self._event(msg_type, payload)
        except OSError as e:
            if not self._stop.is_set():
                # ENOBUFS: events were lost; the agent restarts the monitor, which dumps again.
                log.error("link monitor failed (%s); restarting it", e)
                self.post(LinkMonitorFailed(str(e)))

    def _event(self, msg_type: int, payload: bytes) -> None:
        if msg_type not in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
            return
        parsed = nl.parse_link(payload)
        if parsed is None:
            return
        index, name, up, mac = parsed
        if msg_type == nl.RTM_DELLINK:
            self.post(LinkUpdate(name, None))
        else:
            self.post(LinkUpdate(name, LinkInfo(index, name, up, mac)))


@dataclass(frozen=True, slots=True)
class LinkMonitorFailed:
    reason: str




