"""Security groups as profiles: pure functions that turn group operations into profile edits.

A *group* is a profile whose id is the group's name, which carries the tag ``<name>`` and
whose rules start as

    inbound:  allow src_tag=<name>          (members reach each other on every port)
    outbound: allow                         (what a member sends is judged by the receiver)

An endpoint is a member when its ``profile_ids`` lists the group.  Nothing outside a group
reaches its members unless a rule in the group's profile lets it in:

- an *export* of group A to group B is an inbound rule of A:
  ``allow src_tag=B [dst_selector=S] protocol=P [dst_ports=...]`` - B reaches the members
  of A that S selects, on those ports, and nothing else of A;
- a *connection* between A and B is ``allow src_tag=B`` in A and ``allow src_tag=A`` in B
  (:func:`connect` is called once for each side);
- a *pair* joins two single workloads by address, whatever their groups: a profile of its
  own (:func:`pair_profile_id`, :func:`pair_rules`) appended to both endpoints' profiles.

The functions here never touch the datastore: they take a ``ProfileRules`` and return a new
one; ``felixctl`` reads, edits and writes the profile in one transaction.  The evaluation
order of an endpoint's profiles (allow accepts, deny drops, log continues, no match goes to
the next profile, no profile allowing drops) is described in ``docs/policy.md``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Iterable, Optional, Sequence

from felix_py import model
from policy.selector import parse_selector

# Keys of an inbound rule that only say "who may come in": a rule with nothing else set is
# a connection, a rule restricting more than that is an export.
_EXPORT_KEYS = ("dst_selector", "protocol", "dst_ports")
_NAME_RE = re.compile(model.NAME_PATTERN)    # a profile id, as the model checks it


class GroupError(ValueError):
    """A group operation that makes no sense (connecting a group to itself, ...)."""


def new_group(name: str) -> tuple[model.ProfileRules, list[str]]:
    """The rules and tags of a fresh group called ``name``."""
    rules = model.ProfileRules(
        inbound_rules=[model.Rule(action="allow", src_tag=_name(name))],
        outbound_rules=[model.Rule(action="allow")])
    return rules, [name]


def add_export(rules: model.ProfileRules, group: str, to_group: str,
               selector: Optional[str] = None, protocol: Optional[str | int] = "tcp",
               ports: Optional[Sequence[int | str]] = None) -> model.ProfileRules:
    """Open the members of ``group`` that ``selector`` picks (None: all of them) to
    ``to_group`` on ``protocol``/``ports``.  Adding an export that exists is a no-op."""
    if _name(group) == _name(to_group):
        raise GroupError(f"group {group!r} already reaches itself; export to another group")
    rule = _export_rule(to_group, selector, protocol, ports)
    if _is_connection(rule):
        raise GroupError(f"an export of {group!r} to {to_group!r} with no selector, protocol "
                         "or ports opens everything: use connect instead")
    if rule in rules.inbound_rules:
        return rules
    return rules.model_copy(update={"inbound_rules": [*rules.inbound_rules, rule]})


def remove_export(rules: model.ProfileRules, group: str, to_group: str,
                  selector: Optional[str] = None, protocol: Optional[str | int] = None,
                  ports: Optional[Sequence[int | str]] = None) -> model.ProfileRules:
    """Remove the exports of ``group`` to ``to_group`` that match; an argument left None
    matches any value.  Connections are left alone (see :func:`disconnect`)."""
    tag = _name(to_group)
    want = {}
    if selector is not None:
        sel = str(parse_selector(selector))
        want["dst_selector"] = None if sel == "all()" else sel
    if protocol is not None:
        want["protocol"] = model.Rule(protocol=protocol).protocol
    if ports is not None:
        want["dst_ports"] = model.Rule(protocol="tcp", dst_ports=list(ports)).dst_ports

    def matches(r: model.Rule) -> bool:
        return (_is_export(r) and r.src_tag == tag
                and all(getattr(r, k) == v for k, v in want.items()))

    kept = [r for r in rules.inbound_rules if not matches(r)]
    if len(kept) == len(rules.inbound_rules):
        raise GroupError(f"group {group!r} has no export to {to_group!r} matching "
                         f"{_describe_filter(selector, protocol, ports)}")
    return rules.model_copy(update={"inbound_rules": kept})


def connect(rules: model.ProfileRules, group: str, other: str) -> model.ProfileRules:
    """Let every member of ``other`` reach every member of ``group`` (one side of a
    connection: call it for both groups).  Connecting twice is a no-op."""
    if _name(group) == _name(other):
        raise GroupError(f"group {group!r} cannot be connected to itself")
    rule = model.Rule(action="allow", src_tag=_name(other))
    if rule in rules.inbound_rules:
        return rules
    return rules.model_copy(update={"inbound_rules": [*rules.inbound_rules, rule]})


def disconnect(rules: model.ProfileRules, group: str, other: str) -> model.ProfileRules:
    """Undo :func:`connect` for ``group``'s side; exports to ``other`` stay."""
    rule = model.Rule(action="allow", src_tag=_name(other))
    kept = [r for r in rules.inbound_rules if r != rule]
    if len(kept) == len(rules.inbound_rules):
        raise GroupError(f"group {group!r} is not connected to {other!r}")
    return rules.model_copy(update={"inbound_rules": kept})


def describe(rules: model.ProfileRules, group: str) -> dict:
    """What ``felixctl group show`` prints: the group's exports, the groups it is connected
    to, whether its members reach each other, and any rule that is none of these."""
    exports, connections, other, internal = [], [], [], False
    for r in rules.inbound_rules:
        if r == model.Rule(action="allow", src_tag=group):
            internal = True
        elif _is_connection(r):
            connections.append(r.src_tag)
        elif _is_export(r):
            exports.append({"to": r.src_tag, "selector": r.dst_selector or "all()",
                            "protocol": r.protocol, "ports": list(r.dst_ports or [])})
        else:
            other.append(("inbound", r.to_json()))
    other.extend(("outbound", r.to_json()) for r in rules.outbound_rules
                 if r != model.Rule(action="allow"))
    return {"group": group, "members_connected": internal, "exports": exports,
            "connections": connections,
            "other_rules": [{"direction": d, "rule": j} for d, j in other]}


def pair_profile_id(a_id: object, b_id: object) -> str:
    """The profile id of the pair (a, b): the same whichever way round, a valid profile
    name whatever the endpoint ids hold."""
    a, b = sorted((str(a_id), str(b_id)))
    if a == b:
        raise GroupError(f"cannot pair endpoint {a!r} with itself")
    digest = hashlib.sha256(f"{a}\0{b}".encode()).hexdigest()[:24]
    return f"pair-{digest}"


def pair_rules(a_nets: Iterable[str], b_nets: Iterable[str]) -> model.ProfileRules:
    """Rules that allow traffic between the addresses of a and those of b, both ways.

    The profile is appended to both endpoints' profile_ids; each rule names source and
    destination, so neither endpoint gains anything from anyone else."""
    a_nets, b_nets = _nets(a_nets, "a"), _nets(b_nets, "b")
    both_ways = []
    for x, y in ((a_nets, b_nets), (b_nets, a_nets)):
        for src in x:
            for dst in y:
                if src.version == dst.version:
                    both_ways.append(model.Rule(action="allow", src_net=str(src),
                                                dst_net=str(dst)))
    if not both_ways:
        raise GroupError("the two workloads share no IP version; nothing to connect")
    return model.ProfileRules(inbound_rules=both_ways, outbound_rules=both_ways)


# -- helpers ------------------------------------------------------------------------------

def _name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise GroupError(f"{name!r} is not a valid group name (1-253 letters, digits, _ . -)")
    return name


def _export_rule(to_group, selector, protocol, ports) -> model.Rule:
    fields = {"action": "allow", "src_tag": _name(to_group), "protocol": protocol,
              "dst_ports": list(ports) if ports is not None else None}
    if selector is not None:
        sel = str(parse_selector(selector))
        if sel != "all()":
            fields["dst_selector"] = sel
    return model.Rule(**fields)


def _is_connection(r: model.Rule) -> bool:
    return r.action == "allow" and r.src_tag is not None and \
        r.model_dump(exclude_none=True) == {"action": "allow", "src_tag": r.src_tag}


def _is_export(r: model.Rule) -> bool:
    set_keys = set(r.model_dump(exclude_none=True))
    return (r.action == "allow" and r.src_tag is not None and not _is_connection(r)
            and set_keys <= {"action", "src_tag", *_EXPORT_KEYS})


def _nets(nets: Iterable[str], which: str) -> list:
    out = [ipaddress.ip_network(n, strict=False) for n in nets]
    if not out:
        raise GroupError(f"workload {which} has no address to connect")
    return out


def _describe_filter(selector, protocol, ports) -> str:
    parts = [f"selector {selector!r}" if selector is not None else None,
             f"protocol {protocol}" if protocol is not None else None,
             f"ports {list(ports)}" if ports is not None else None]
    return ", ".join(p for p in parts if p) or "anything"
