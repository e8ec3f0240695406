"""``felixctl group`` and ``felixctl connect|disconnect``: the security-group view of policy.

A group is a profile carrying its own name as tag (``policy/groups.py`` holds the rules it
is made of); membership is the group's id in an endpoint's ``profile_ids``.  Every command
reads what it changes and writes it back in one compare-and-swap transaction: adding ten
workloads to a group, or connecting two groups, happens entirely or not at all.
"""

from __future__ import annotations

import json

import click
from pydantic import ValidationError

from felix_py import model
from felix_py.ctl.common import (CtlError, Ctx, find_endpoint, parse_ports, pass_ctx,
                                 profile_keys, retry_on_conflict)
from felix_py.ctl.output import emit, fields, output_option, table
from felix_py.ctl.documents import first_error
from felix_py.ctl.profile import members, remove_profile, without_profile
from felix_py.datastore.keys import Kind
from policy import groups


def _call(what: str, fn, *args):
    """A groups.py function, its errors told as one line."""
    try:
        return fn(*args)
    except ValidationError as e:
        loc, msg = first_error(e)
        raise CtlError(f"invalid {what}: {loc + ': ' if loc else ''}{msg}") from None
    except ValueError as e:     # GroupError, SelectorError
        raise CtlError(f"invalid {what}: {e}") from None


def _read(ctx: Ctx, name: str) -> tuple[str, bytes, model.ProfileRules]:
    key = ctx.layout.profile(Kind.PROFILE_RULES, name)
    raw = ctx.client.get(key)
    if raw is None:
        raise CtlError(f"unknown group {name!r}; create it with `felixctl group create "
                       f"{name}` (see `felixctl group list`)")
    tags = ctx.client.get(ctx.layout.profile(Kind.PROFILE_TAGS, name))
    if tags is None or name not in json.loads(tags):
        raise CtlError(f"profile {name!r} is not a group (it lacks its own tag); use "
                       "`felixctl profile` for it")
    try:
        return key, raw, model.decode(ctx.layout.parse(key), raw)
    except model.ModelError as e:
        raise CtlError(f"group {name!r} has invalid rules in the datastore ({e.message}); "
                       "replace them with `felixctl apply`") from None


def _edit(ctx: Ctx, names: list[str], edit) -> None:
    """Read the groups' rules, ``edit({name: rules}) -> {name: rules}``, write back the
    changed ones in one transaction (again if someone wrote meanwhile)."""
    def change():
        current = {n: _read(ctx, n) for n in names}
        new = edit({n: rules for n, (_, _, rules) in current.items()})
        ctx.registry.swap([(current[n][0], current[n][1], rules) for n, rules in new.items()
                           if rules != current[n][2]])
    retry_on_conflict(change)


@click.group()
def group():
    """Security groups: create, delete, list, show, add, remove, export, connect."""


@group.command()
@click.argument("name")
@pass_ctx
def create(ctx: Ctx, name):
    """Create a group: its members reach each other, nothing else reaches them."""
    rules, tags = _call("group name", groups.new_group, name)
    keys = profile_keys(ctx.layout, name)
    if ctx.registry.profile_exists(name):
        raise CtlError(f"a profile or group {name!r} already exists")
    ctx.registry.swap([(keys[Kind.PROFILE_RULES], None, rules),
                       (keys[Kind.PROFILE_TAGS], None, tags)])
    click.echo(f"Created group {name}.")


def _unlink(ctx: Ctx, name: str) -> list:
    """Swaps that take every other group's exports to and connections with ``name`` away."""
    out = []
    for pk, rec, raw in ctx.snapshot(ctx.layout.dir("v1/policy/profile")):
        other = pk.parts["profile"]
        if pk.kind is not Kind.PROFILE_RULES or other == name or \
                not isinstance(rec, model.ProfileRules):
            continue
        rules = rec
        for drop in (lambda r: groups.disconnect(r, other, name),
                     lambda r: groups.remove_export(r, other, name)):
            try:
                rules = drop(rules)
            except groups.GroupError:
                pass
        if rules != rec:
            out.append((pk.key, raw, rules))
    return out


@group.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Also take the group off its members.")
@pass_ctx
def delete(ctx: Ctx, name, force):
    """Delete a group, and the other groups' exports to it and connections with it."""
    _read(ctx, name)
    n = remove_profile(ctx, name, force, extra=lambda: _unlink(ctx, name),
                       what="group")
    click.echo(f"Deleted group {name}" + (f" (and from {n} member(s))." if n else "."))


def _group_names(ctx: Ctx) -> list[str]:
    return sorted(pk.parts["profile"] for pk, rec, _ in
                  ctx.snapshot(ctx.layout.dir("v1/policy/profile"))
                  if pk.kind is Kind.PROFILE_TAGS and isinstance(rec, tuple)
                  and pk.parts["profile"] in rec)


def _describe(ctx: Ctx, name: str) -> dict:
    _, _, rules = _read(ctx, name)
    desc = _call("group", groups.describe, rules, name)
    desc["members"] = [str(e) for e, _, _ in members(ctx, name)]
    return desc


@group.command("list")
@output_option
@pass_ctx
def list_(ctx: Ctx):
    """List groups with their members, exports and connections."""
    data = [_describe(ctx, n) for n in _group_names(ctx)]
    rows = [[d["group"], len(d["members"]),
             [f"{e['to']}:{e['protocol'] or 'any'}/{','.join(map(str, e['ports'])) or 'all'}"
              for e in d["exports"]], d["connections"]] for d in data]
    emit(data, ["GROUP", "MEMBERS", "EXPORTS", "CONNECTIONS"], rows)


@group.command()
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: Ctx, name):
    """Show a group's members, exports, connections and any other rule."""
    d = _describe(ctx, name)
    text = fields([("Group", name), ("Members reach each other", d["members_connected"]),
                   ("Connected with", d["connections"])])
    text += "\n\nMembers:\n" + ("\n".join(f"  {m}" for m in d["members"]) or "  (none)")
    text += "\n\nExports:\n" + (table(["TO", "SELECTOR", "PROTOCOL", "PORTS"],
                                      [[e["to"], e["selector"], e["protocol"] or "any",
                                        e["ports"] or "all"] for e in d["exports"]])
                                if d["exports"] else "  (none)")
    if d["other_rules"]:
        text += "\n\nOther rules:\n" + table(["DIRECTION", "RULE"],
                                             [[r["direction"], r["rule"]]
                                              for r in d["other_rules"]])
    emit(d, text=text)


def _membership(ctx: Ctx, name: str, workloads, host, join: bool) -> list[str]:
    _read(ctx, name)
    eids = [find_endpoint(ctx, w, host)[0] for w in workloads]

    def change():
        swaps, changed = [], []
        for eid in dict.fromkeys(eids):
            key = ctx.layout.endpoint(eid)
            raw = ctx.client.get(key)
            if raw is None:
                raise CtlError(f"endpoint {eid} does not exist")
            value = json.loads(raw)
            pids = value.get("profile_ids", [])
            if join and name not in pids:
                value["profile_ids"] = [*pids, name]
            elif not join and name in pids:
                value = without_profile(raw, name)
            else:
                continue
            swaps.append((key, raw, value))
            changed.append(str(eid))
        ctx.registry.swap(swaps)
        return changed
    return retry_on_conflict(change)


@group.command("add")
@click.argument("name")
@click.argument("workloads", nargs=-1, required=True)
@click.option("--host", help="Narrow workload names to this host.")
@pass_ctx
def add_members(ctx: Ctx, name, workloads, host):
    """Make workloads members of a group (all at once)."""
    changed = _membership(ctx, name, workloads, host, join=True)
    click.echo(f"Added {len(changed)} endpoint(s) to group {name}"
               + (f": {', '.join(changed)}." if changed else " (all were members)."))


@group.command("remove")
@click.argument("name")
@click.argument("workloads", nargs=-1, required=True)
@click.option("--host", help="Narrow workload names to this host.")
@pass_ctx
def remove_members(ctx: Ctx, name, workloads, host):
    """Take workloads out of a group (all at once)."""
    changed = _membership(ctx, name, workloads, host, join=False)
    click.echo(f"Removed {len(changed)} endpoint(s) from group {name}"
               + (f": {', '.join(changed)}." if changed else " (none was a member)."))


def _export_options(f):
    f = click.option("--port", "ports", help="Ports: 80,443 or 8000:8080.")(f)
    f = click.option("--protocol", help="tcp, udp, sctp, ... or a number.")(f)
    f = click.option("--selector", help="Only the members this selector picks.")(f)
    return click.option("--to", "to_group", required=True, help="The group given access.")(f)


def _protocol(text: str | None):
    return int(text) if text is not None and text.isdigit() else text


@group.command()
@click.argument("name")
@_export_options
@pass_ctx
def export(ctx: Ctx, name, to_group, selector, protocol, ports):
    """Open (some) members of a group to another group, on a protocol and ports."""
    _read(ctx, to_group)
    ports = parse_ports(ports, "--port")
    _edit(ctx, [name], lambda r: {name: _call("export", groups.add_export, r[name], name,
                                              to_group, selector,
                                              _protocol(protocol) or "tcp", ports)})
    click.echo(f"Group {name} exported to {to_group}.")


@group.command()
@click.argument("name")
@_export_options
@pass_ctx
def unexport(ctx: Ctx, name, to_group, selector, protocol, ports):
    """Remove exports of a group to another (flags left out match anything)."""
    ports = parse_ports(ports, "--port")
    _edit(ctx, [name], lambda r: {name: _call("unexport", groups.remove_export, r[name], name,
                                              to_group, selector, _protocol(protocol), ports)})
    click.echo(f"Group {name} no longer exported to {to_group}.")


@group.command("connect")
@click.argument("a")
@click.argument("b")
@pass_ctx
def connect_groups(ctx: Ctx, a, b):
    """Let the members of two groups reach each other on everything."""
    _edit(ctx, [a, b], lambda r: {a: _call("connection", groups.connect, r[a], a, b),
                                  b: _call("connection", groups.connect, r[b], b, a)})
    click.echo(f"Connected groups {a} and {b}.")


@group.command("disconnect")
@click.argument("a")
@click.argument("b")
@pass_ctx
def disconnect_groups(ctx: Ctx, a, b):
    """Undo `group connect` (exports between them stay)."""
    _edit(ctx, [a, b], lambda r: {a: _call("disconnection", groups.disconnect, r[a], a, b),
                                  b: _call("disconnection", groups.disconnect, r[b], b, a)})
    click.echo(f"Disconnected groups {a} and {b}.")


# -- pairs of single workloads ------------------------------------------------------------

def _pair(ctx: Ctx, a: str, b: str, host: str | None, join: bool) -> str:
    (a_eid, a_rec), (b_eid, b_rec) = find_endpoint(ctx, a, host), find_endpoint(ctx, b, host)
    for eid, rec in ((a_eid, a_rec), (b_eid, b_rec)):
        if isinstance(rec, model.ModelError):
            raise CtlError(f"endpoint {eid} is invalid in the datastore ({rec.message})")
    pid = _call("pair", groups.pair_profile_id, a_eid, b_eid)
    rules = _call("pair", groups.pair_rules, a_rec.ipv4_nets + a_rec.ipv6_nets,
                  b_rec.ipv4_nets + b_rec.ipv6_nets) if join else None
    keys = profile_keys(ctx.layout, pid)

    def change():
        swaps = []
        rules_raw = ctx.client.get(keys[Kind.PROFILE_RULES])
        if not join and rules_raw is None:
            raise CtlError(f"{a_eid} and {b_eid} are not connected")
        swaps.append((keys[Kind.PROFILE_RULES], rules_raw, rules))
        for eid in (a_eid, b_eid):
            key = ctx.layout.endpoint(eid)
            raw = ctx.client.get(key)
            if raw is None:
                raise CtlError(f"endpoint {eid} does not exist")
            value = without_profile(raw, pid)
            if join:
                value["profile_ids"].append(pid)
            swaps.append((key, raw, value))
        ctx.registry.swap(swaps)
    retry_on_conflict(change)
    return f"{a_eid} and {b_eid}"


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--host", help="Narrow workload names to this host.")
@pass_ctx
def connect(ctx: Ctx, a, b, host):
    """Let two single workloads reach each other (by address), whatever their groups."""
    click.echo(f"Connected {_pair(ctx, a, b, host, join=True)}.")


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--host", help="Narrow workload names to this host.")
@pass_ctx
def disconnect(ctx: Ctx, a, b, host):
    """Undo `felixctl connect` for two workloads."""
    click.echo(f"Disconnected {_pair(ctx, a, b, host, join=False)}.")
