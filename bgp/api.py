"""ExaBGP's process API: its JSON messages in, our text commands out (pure).

ExaBGP writes one line per event to its helper process (``encoder json``) and, with
``exabgp.api.ack`` on, answers each command with a line ``done`` or ``error``.
``parse(line)`` turns one such line into a typed event; the ``*_commands`` functions build
the command lines.  Nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Iterable, Union

# Prefixes per command line: ExaBGP refuses lines over 1 MiB, and smaller commands let
# updates to peers start while later ones are still being parsed.
PREFIXES_PER_COMMAND = 400

FAMILIES = {4: "ipv4 unicast", 6: "ipv6 unicast"}


@dataclass(frozen=True)
class Ack:
    ok: bool


@dataclass(frozen=True)
class PeerState:
    """A session changed state: "connected" (TCP up), "up" (established) or "down"."""
    peer: str
    state: str
    local: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RouteUpdate:
    """Routes a peer announced (prefix -> next hop) and withdrew, in one BGP UPDATE."""
    peer: str
    announced: dict[str, str] = field(default_factory=dict)
    withdrawn: tuple[str, ...] = ()
    originator_id: str | None = None
    as_path: tuple[int, ...] = ()


@dataclass(frozen=True)
class EndOfRib:
    peer: str
    family: str


@dataclass(frozen=True)
class Notification:
    """A BGP NOTIFICATION sent to or received from a peer (the session then closes)."""
    peer: str
    direction: str
    code: int
    subcode: int
    message: str


@dataclass(frozen=True)
class Shutdown:
    """ExaBGP is exiting."""


@dataclass(frozen=True)
class Unknown:
    line: str
    reason: str


Event = Union[Ack, PeerState, RouteUpdate, EndOfRib, Notification, Shutdown, Unknown]


def parse(line: str) -> Event:
    """One line from ExaBGP -> one event; anything unexpected is an ``Unknown``."""
    text = line.strip()
    if text == "done":
        return Ack(True)
    if text == "error":
        return Ack(False)
    if not text.startswith("{"):
        return Unknown(text, "not JSON")
    try:
        msg = json.loads(text)
    except ValueError as e:
        return Unknown(text, f"malformed JSON: {e}")
    if not isinstance(msg, dict):
        return Unknown(text, "not a JSON object")
    if "answer" in msg:          # the JSON form of an acknowledgement
        return Ack(msg["answer"] == "done")
    kind = msg.get("type")
    try:
        if kind == "notification" and msg.get("notification") == "shutdown":
            return Shutdown()
        neighbor = msg["neighbor"]
        peer = neighbor["address"]["peer"]
        if kind == "state":
            return PeerState(peer, neighbor["state"], neighbor["address"].get("local"),
                             neighbor.get("reason") or None)
        if kind == "notification":
            n = neighbor["notification"]
            return Notification(peer, neighbor.get("direction", ""), int(n["code"]),
                                int(n["subcode"]), n.get("message", ""))
        if kind == "update":
            return _update(peer, neighbor["message"])
    except (KeyError, TypeError, ValueError) as e:
        return Unknown(text, f"unexpected {kind} message ({type(e).__name__}: {e})")
    return Unknown(text, f"unhandled message type {kind!r}")


def _update(peer: str, message: dict) -> Event:
    if "eor" in message:
        eor = message["eor"]
        return EndOfRib(peer, f"{eor['afi']} {eor['safi']}")
    update = message["update"]
    announced: dict[str, str] = {}
    for family, by_nexthop in update.get("announce", {}).items():
        if family not in FAMILIES.values():
            continue
        for nexthop, nlris in by_nexthop.items():
            for nlri in nlris:
                announced[_prefix(nlri)] = nexthop
    withdrawn = []
    for family, nlris in update.get("withdraw", {}).items():
        if family in FAMILIES.values():
            withdrawn.extend(_prefix(n) for n in nlris)
    attrs = update.get("attribute", {})
    return RouteUpdate(peer, announced, tuple(withdrawn), attrs.get("originator-id"),
                       _as_path(attrs.get("as-path")))


def _as_path(value) -> tuple[int, ...]:
    """ExaBGP 5 writes {"0": {"element": "as-sequence", "value": [65101]}, ...}; older
    versions a plain list."""
    if isinstance(value, list):
        return tuple(a for a in value if isinstance(a, int))
    if isinstance(value, dict):
        out: list[int] = []
        for _, seg in sorted(value.items(), key=lambda kv: int(kv[0])):
            out.extend(a for a in seg.get("value", []) if isinstance(a, int))
        return tuple(out)
    return ()


def _prefix(nlri) -> str:
    # {"nlri": "10.0.0.0/24"} normally, a bare string with exabgp.api.compact.
    text = nlri["nlri"] if isinstance(nlri, dict) else nlri
    return str(ipaddress.ip_network(text))


# -- commands ----------------------------------------------------------------------------

def _selector(peers: Iterable[str]) -> str:
    peers = list(peers)
    return " , ".join(f"neighbor {p}" for p in peers) + " " if peers else ""


def announce_commands(prefixes: Iterable[str], peers: Iterable[str] = ()) -> list[str]:
    """Announce ``prefixes`` with next hop self, to ``peers`` (default: every peer)."""
    return _batched("announce attributes next-hop self nlri", prefixes, peers)


def withdraw_commands(prefixes: Iterable[str], peers: Iterable[str] = ()) -> list[str]:
    return _batched("withdraw attributes next-hop self nlri", prefixes, peers)


def eor_command(peer: str, version: int = 4) -> str:
    return f"neighbor {peer} announce eor {FAMILIES[version]}"


def _batched(verb: str, prefixes: Iterable[str], peers: Iterable[str]) -> list[str]:
    items = sorted(prefixes)
    sel = _selector(peers)
    return [f"{sel}{verb} {' '.join(items[i:i + PREFIXES_PER_COMMAND])}"
            for i in range(0, len(items), PREFIXES_PER_COMMAND)]
