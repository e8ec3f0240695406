"""Sessions and received routes per peer, the import filter, and the kernel routes they
make (pure: events in, state out; the caller passes the time).

Each configured peer has a small state machine::

    idle --connected--> connect --up--> established --down--> idle
      ^                                     |
      +------ ExaBGP stopped (routes kept as stale until the peer's End-of-RIB or the
              graceful-restart time runs out)
    error: the peer's settings were refused (it never gets a session)

Every route a peer sends is kept (so that counts stay right when the filter changes); the
import filter decides which of them reach the kernel:

- ``default-only`` (downward default): only ``0.0.0.0/0`` and ``::/0``; the rest is counted
  as ignored;
- ``all-but-own`` (route reflector, node mesh): everything except the prefixes this host
  announces itself and routes whose next hop is one of this host's addresses.  A learned
  route to a network the host sits on needs no rule here: the route manager creates routes
  with NLM_F_EXCL, so it never replaces the host's connected route (it reports the
  conflict instead), and a shorter prefix that merely covers the host loses to the connected
  route by longest match.

A prefix accepted from several established peers becomes one ECMP route over their next
hops; a peer going down takes its next hops away at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from bgp.config import DEFAULT_ONLY

IDLE, CONNECT, ESTABLISHED, ERROR = "idle", "connect", "established", "error"
DEFAULTS = frozenset({"0.0.0.0/0", "::/0"})


@dataclass
class PeerSession:
    ip: str
    peer_type: str
    state: str = IDLE
    since: float | None = None
    info: str | None = None
    local: str | None = None                      # our address on the session
    received: dict[str, str] = field(default_factory=dict)    # prefix -> next hop
    stale: dict[str, str] = field(default_factory=dict)       # kept across a restart
    stale_until: float | None = None


def accepts(policy: str, prefix: str, nexthop: str, own_prefixes: frozenset[str],
            own_addresses: frozenset[str]) -> bool:
    """The import filter."""
    if policy == DEFAULT_ONLY:
        return prefix in DEFAULTS
    return prefix not in own_prefixes and nexthop not in own_addresses


class Rib:
    def __init__(self, policy: str, max_default_paths: int = 8,
                 link_of: Callable[[str], str | None] = lambda peer: None):
        """``link_of(peer)``: the interface a peer is reached on, for the link-local next
        hops it sends (RFC 2545: an IPv6 peer on the same link gives its link-local address
        too, and that may be the one that comes through)."""
        self.policy = policy
        self.max_default_paths = max_default_paths
        self.link_of = link_of
        self._links: dict[str, str | None] = {}       # peer -> its interface, looked up
        # The last kernel_routes met a link-local next hop (zoned with its peer's link, or
        # left out for want of one): relink() has them recomputed.
        self._link_local = False
        self.peers: dict[str, PeerSession] = {}
        self.own_prefixes: frozenset[str] = frozenset()
        self.own_addresses: frozenset[str] = frozenset()
        self.routes: dict[str, tuple[str, ...]] = {}      # prefix -> sorted next hops
        self.changed = False

    # -- configuration -------------------------------------------------------------------
    def set_peers(self, peers: dict[str, str], errors: dict[str, str], now: float) -> None:
        """peers: ip -> peer type of the peers ExaBGP runs; errors: ip -> why a configured
        peer was refused."""
        for ip in list(self.peers):
            if ip not in peers and ip not in errors:
                del self.peers[ip]
                self.changed = True
        for ip, ptype in peers.items():
            p = self.peers.get(ip)
            if p is None or p.peer_type != ptype or p.state == ERROR:
                self.peers[ip] = PeerSession(ip, ptype, since=now)
                self.changed = True
        for ip, why in errors.items():
            p = self.peers.get(ip)
            if p is None or p.state != ERROR or p.info != why:
                ptype = p.peer_type if p else "unknown"
                self.peers[ip] = PeerSession(ip, ptype, ERROR, now, why)
                self.changed = True

    def set_policy(self, policy: str) -> None:
        if policy != self.policy:
            self.policy = policy
            self.changed = True

    def set_own(self, prefixes: frozenset[str], addresses: frozenset[str]) -> None:
        if prefixes != self.own_prefixes or addresses != self.own_addresses:
            self.own_prefixes, self.own_addresses = prefixes, addresses
            self.changed = True

    # -- events --------------------------------------------------------------------------
    def session(self, ip: str, state: str, now: float, local: str | None = None,
                reason: str | None = None) -> None:
        p = self.peers.get(ip)
        if p is None or p.state == ERROR:
            return
        new = {"connected": CONNECT, "up": ESTABLISHED, "down": IDLE}.get(state)
        if new is None:
            return
        if new != p.state:
            p.state, p.since = new, now
            self._links.pop(ip, None)           # a new session may run over another link
        if local and local != "None":
            p.local = local
        if new == ESTABLISHED:
            p.info = None
        elif new == IDLE:
            p.info = reason or p.info
            if p.received or p.stale:
                p.received.clear()
                p.stale.clear()
                p.stale_until = None
                self.changed = True

    def note(self, ip: str, info: str) -> None:
        p = self.peers.get(ip)
        if p is not None and p.state != ERROR:
            p.info = info

    def update(self, ip: str, announced: dict[str, str], withdrawn) -> None:
        p = self.peers.get(ip)
        if p is None or p.state != ESTABLISHED:
            return
        for prefix in withdrawn:
            p.received.pop(prefix, None)
            p.stale.pop(prefix, None)
        for prefix, nh in announced.items():
            p.received[prefix] = nh
            p.stale.pop(prefix, None)
        self.changed = True

    def end_of_rib(self, ip: str) -> None:
        """The peer re-sent everything: stale routes it did not refresh are gone."""
        p = self.peers.get(ip)
        if p is not None and p.stale:
            p.stale.clear()
            p.stale_until = None
            self.changed = True

    def process_stopped(self, now: float, restart_time: float) -> None:
        """ExaBGP stopped: every session is gone, but (graceful restart) the routes stay
        until the peer refreshes them or ``restart_time`` passes."""
        for p in self.peers.values():
            if p.state == ERROR:
                continue
            if p.received:
                p.stale.update(p.received)
                p.received.clear()
            if p.stale:
                p.stale_until = now + restart_time
            if p.state != IDLE:
                p.state, p.since = IDLE, now
            p.info = "ExaBGP restarting"
        self.changed = True

    def expire(self, now: float) -> float | None:
        """Drop stale routes whose time ran out; returns the next deadline, if any."""
        nxt = None
        for p in self.peers.values():
            if p.stale_until is None:
                continue
            if p.stale_until <= now:
                p.stale.clear()
                p.stale_until = None
                self.changed = True
            else:
                nxt = p.stale_until if nxt is None else min(nxt, p.stale_until)
        return nxt

    # -- results -------------------------------------------------------------------------
    def counts(self, ip: str) -> tuple[int, int]:
        """(received, accepted) for one peer."""
        p = self.peers[ip]
        routes = {**p.stale, **p.received}
        accepted = sum(1 for pf, nh in routes.items() if self.accepts(pf, nh))
        return len(routes), accepted

    def accepts(self, prefix: str, nexthop: str) -> bool:
        return accepts(self.policy, prefix, nexthop, self.own_prefixes, self.own_addresses)

    def relink(self) -> None:
        """Look the peers' links up again at the next ``kernel_routes``.  The routes are
        recomputed only if the last ones met a link-local next hop: no other route
        depends on a link."""
        self._links.clear()
        if self._link_local:
            self.changed = True

    def kernel_routes(self) -> dict[str, tuple[str, ...]]:
        """prefix -> next hops, recomputed if anything changed."""
        if not self.changed:
            return self.routes
        hops: dict[str, set[str]] = {}
        own = self.own_addresses | {p.local for p in self.peers.values() if p.local}
        link_local = False
        for p in self.peers.values():
            for table in (p.stale, p.received):
                for prefix, nh in table.items():
                    ip = _ip(nh)
                    if ip is None or not accepts(self.policy, prefix, nh,
                                                 self.own_prefixes, own):
                        continue
                    if ip.version == 6 and ip.is_link_local:
                        link_local = True
                        if p.ip not in self._links:
                            self._links[p.ip] = self.link_of(p.ip)
                        zone = self._links[p.ip]
                        if zone is None:
                            continue        # no way to it from here
                        nh = f"{nh}%{zone}"
                    hops.setdefault(prefix, set()).add(nh)
        routes = {}
        for prefix, nhs in hops.items():
            ordered = tuple(sorted(nhs, key=_ip_key))
            if prefix in DEFAULTS:
                ordered = ordered[:self.max_default_paths]
            routes[prefix] = ordered
        self.routes, self.changed, self._link_local = routes, False, link_local
        return routes


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``text`` writes; None if it is none."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _ip_key(text: str) -> tuple[int, int, str]:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip), text      # the same link-local address on two links: by name
