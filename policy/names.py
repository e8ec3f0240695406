"""Names of every chain and ipset felix-py programs.

Each name starts with ``felix-`` (that is how reconciliation tells ours from the host's)
and fits the kernel's limits: 28 characters for a chain, 31 for an ipset.  The character
after each fixed word keeps the families of names apart: ``felix-from-<iface>`` (an
endpoint) can never equal ``felix-fromd-...`` (dispatch), and hashed names use ``_`` where
readable names use ``-``.
"""

from __future__ import annotations

import base64
import hashlib

PREFIX = "felix-"
CHAIN_MAX = 28
SET_MAX = 31

# Top-level chains, one jump to each from the built-in chain of the same name.
INPUT, FORWARD, OUTPUT = "felix-INPUT", "felix-FORWARD", "felix-OUTPUT"
HOOKS = {"INPUT": INPUT, "FORWARD": FORWARD, "OUTPUT": OUTPUT}
WL_TO_HOST = "felix-wl-to-host"
FROM_DISPATCH, TO_DISPATCH = "felix-fromd", "felix-tod"


def _digest(text: str, n: int) -> str:
    raw = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(raw).decode().lower().rstrip("=")[:n]


def _readable_or_hashed(stem: str, name: str, limit: int) -> str:
    if len(stem) + 1 + len(name) <= limit:
        return f"{stem}-{name}"
    return f"{stem}_{_digest(name, limit - len(stem) - 1)}"


def from_endpoint(iface: str) -> str:
    return f"felix-from-{iface}"


def to_endpoint(iface: str) -> str:
    return f"felix-to-{iface}"


def dispatch_child(root: str, key: str) -> str:
    """Sub-chain of a dispatch tree for interfaces starting with ``key``."""
    return f"{root}-{key}"


def profile_chain(profile_id: str, direction: str) -> str:
    stem = "felix-pi" if direction == "inbound" else "felix-po"
    return _readable_or_hashed(stem, profile_id, CHAIN_MAX)


def tag_set(tag: str, family: int) -> str:
    return _readable_or_hashed(f"felix-{family}t", tag, SET_MAX)


def selector_set(selector: str, family: int) -> str:
    return f"felix-{family}s-{_digest(selector, SET_MAX - 9)}"


def rule_hash(chain: str, body: str) -> str:
    """What marks a rule as ours and unchanged: the same chain and text, the same hash."""
    return hashlib.blake2b(f"{chain}\0{body}".encode(), digest_size=8).hexdigest()


def is_ours(name: str) -> bool:
    return name.startswith(PREFIX)
