"""Compile one direction of a profile (a list of v1 rules) into iptables rule bodies.

A body is the text after ``-A <chain>`` in ``iptables-restore`` input.  Pure: the set
names come from ``policy.names`` and whether a tag exists is asked through a callable.

How a profile chain decides (see ``docs/policy.md``):

- the chain starts by clearing the accept mark;
- ``allow`` sets the accept mark; after every run of allow rules followed by another rule
  the chain returns if the mark is set, so the first matching rule wins;
- ``deny`` drops; ``log`` logs and goes on;
- falling off the end returns, with the mark set if an allow matched; the endpoint chain
  then stops, or tries its next profile, and drops when none allowed.

A rule limited to the other IP version is left out of this family's chain.  A rule that
cannot be compiled makes the whole direction an error: the chain becomes a single DROP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from felix_py import model
from policy import names

MARK_ACCEPT = 0x1000000
SET_ACCEPT = f"-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}"
CLEAR_ACCEPT = f"-j MARK --set-xmark 0x0/{MARK_ACCEPT:#x}"
RETURN_IF_ACCEPTED = f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN"
DROP_UNLESS_ACCEPTED = (f"-m mark ! --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} "
                        '-m comment --comment "no profile allowed" -j DROP')
MULTIPORT_SLOTS = 15        # xt_multiport's limit; a range takes two slots

# Protocol numbers whose names iptables knows in both families.
_PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132, "udplite": 136}
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite", 1: "icmp", 58: "ipv6-icmp"}


class CompileError(ValueError):
    """A rule that cannot be expressed; names the rule's position and the reason."""


@dataclass(frozen=True)
class Compiled:
    rules: tuple[str, ...]
    tags: frozenset[str] = frozenset()          # tags whose sets the rules match
    selectors: frozenset[str] = frozenset()     # canonical selectors whose sets they match
    error: str | None = None


def deny_all(reason: str) -> Compiled:
    return Compiled(rules=(f'-m comment --comment "{_comment_text(reason)}" -j DROP',),
                    error=reason)


def compile_rules(profile_id: str, direction: str, rules: Sequence[model.Rule], family: int,
                  tag_exists: Callable[[str], bool]) -> Compiled:
    """The chain body for ``rules`` in ``family`` (4 or 6); never raises: errors come back
    as a deny-all ``Compiled`` carrying the message."""
    try:
        out: list[str] = [CLEAR_ACCEPT]
        tags: set[str] = set()
        selectors: set[str] = set()
        pending_allow = False
        for i, rule in enumerate(rules):
            where = f"{direction} rule {i}"
            if rule.version not in (None, family):
                continue
            alternatives = _matches(rule, family, tag_exists, tags, selectors, where)
            if not alternatives:
                continue      # the rule can never match
            if rule.action == "allow":
                out.extend(f"{m} {SET_ACCEPT}".lstrip() for m in alternatives)
                pending_allow = True
                continue
            if pending_allow:
                out.append(RETURN_IF_ACCEPTED)
                pending_allow = False
            target = "-j DROP" if rule.action == "deny" else _log_target(profile_id, direction)
            out.extend(f"{m} {target}".lstrip() for m in alternatives)
        return Compiled(tuple(out), frozenset(tags), frozenset(selectors))
    except CompileError as e:
        return deny_all(f"profile {profile_id}: {e}")


def _matches(rule: model.Rule, family: int, tag_exists, tags: set, selectors: set,
             where: str) -> list[str]:
    """The match text of ``rule``: one string per alternative (several when a port list
    is longer than one multiport match takes), or [] if the rule can never match."""
    parts: list[str] = []
    proto = _protocol(rule.protocol, family, where)
    not_proto = _protocol(rule.not_protocol, family, where)
    if proto and not_proto:
        if _same_protocol(rule.protocol, rule.not_protocol):
            return []
        not_proto = None      # a positive protocol already excludes every other
    if proto:
        parts.append(f"-p {proto}")
    elif not_proto:
        parts.append(f"! -p {not_proto}")

    for side, flag in (("src", "-s"), ("dst", "-d")):
        net, not_net = getattr(rule, f"{side}_net"), getattr(rule, f"not_{side}_net")
        if net:
            parts.append(f"{flag} {net}")
        if not_net and net:
            # iptables takes one -s/-d per rule; the exclusion goes through iprange.
            parts.append(f"-m iprange ! --{side}-range {_range(not_net)}")
        elif not_net:
            parts.append(f"! {flag} {not_net}")
        for negate in (False, True):
            tag = getattr(rule, f"{'not_' if negate else ''}{side}_tag")
            if tag:
                if not tag_exists(tag):
                    raise CompileError(f"{where}: tag {tag!r} is not carried by any profile "
                                       "(create the group or fix the name)")
                tags.add(tag)
                parts.append(_set_match(names.tag_set(tag, family), side, negate))
            sel = getattr(rule, f"{'not_' if negate else ''}{side}_selector")
            if sel:
                selectors.add(sel)
                parts.append(_set_match(names.selector_set(sel, family), side, negate))

    parts.extend(_icmp(rule, family, where))

    port_alternatives = [""]
    for side in ("src", "dst"):
        flag = "--sports" if side == "src" else "--dports"
        ports = getattr(rule, f"{side}_ports")
        not_ports = getattr(rule, f"not_{side}_ports")
        if not_ports:
            # Every excluded chunk must not match: several negated matches in one rule.
            parts.extend(f"-m multiport ! {flag} {c}" for c in _port_chunks(not_ports))
        if ports:
            chunks = [f"-m multiport {flag} {c}" for c in _port_chunks(ports)]
            port_alternatives = [f"{a} {c}".strip() for a in port_alternatives for c in chunks]
    base = " ".join(parts)
    return [f"{base} {alt}".strip() for alt in port_alternatives]


def _protocol(value, family: int, where: str) -> str | None:
    if value is None:
        return None
    number = _PROTO_NUMBERS.get(value, value) if isinstance(value, str) else value
    if number in (1, 58) and number != (1 if family == 4 else 58):
        raise CompileError(f"{where}: protocol {value} does not exist in IPv{family}")
    return _PROTO_NAMES.get(number, str(number))


def _same_protocol(a, b) -> bool:
    return _PROTO_NUMBERS.get(a, a) == _PROTO_NUMBERS.get(b, b)


def _range(net: str) -> str:
    n = ipaddress.ip_network(net)
    return f"{n.network_address}-{n.broadcast_address}"


def _set_match(set_name: str, side: str, negate: bool) -> str:
    return f"-m set {'! ' if negate else ''}--match-set {set_name} {side}"


def _icmp(rule: model.Rule, family: int, where: str) -> list[str]:
    module, flag = ("icmp", "--icmp-type") if family == 4 else ("icmp6", "--icmpv6-type")
    out = []
    if rule.icmp_type is not None:
        code = f"/{rule.icmp_code}" if rule.icmp_code is not None else ""
        out.append(f"-m {module} {flag} {rule.icmp_type}{code}")
    if rule.not_icmp_code is not None and rule.not_icmp_type is None:
        raise CompileError(f"{where}: !icmp_code needs !icmp_type")
    if rule.not_icmp_type is not None:
        code = f"/{rule.not_icmp_code}" if rule.not_icmp_code is not None else ""
        out.append(f"-m {module} ! {flag} {rule.not_icmp_type}{code}")
    return out


def _port_chunks(ports: Iterable) -> list[str]:
    """Comma-joined port lists that each fit one multiport match."""
    chunks, cur, used = [], [], 0
    for p in ports:
        cost = 2 if isinstance(p, str) and ":" in p else 1
        if used + cost > MULTIPORT_SLOTS:
            chunks.append(",".join(cur))
            cur, used = [], 0
        cur.append(str(p))
        used += cost
    if cur:
        chunks.append(",".join(cur))
    return chunks


def _log_target(profile_id: str, direction: str) -> str:
    # --log-prefix takes at most 29 characters; profile ids are [A-Za-z0-9_.-].
    prefix = f"felix-{'pi' if direction == 'inbound' else 'po'}-{profile_id}"[:27]
    return f'-j LOG --log-prefix "{prefix}: "'


def _comment_text(text: str) -> str:
    # A comment match holds at most 255 characters and goes through the restore parser.
    return "".join(c if c.isalnum() or c in " _.:,/=-()" else "_" for c in text)[:200]
