"""``felixctl profile``: profiles and their rules.

``profile add`` writes Calico's default profile (the profile's own tag; inbound allowed from
members, outbound allowed), ``profile rule add|remove`` edits one rule with flags.  Rule
edits are compare-and-swap on the profile's rules key, so two operators editing at once
never lose a rule.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from felix_py import model
from felix_py.ctl import documents
from felix_py.ctl.common import (CtlError, Ctx, model_error, parse_labels, parse_ports,
                                 pass_ctx, profile_keys, retry_on_conflict)
from felix_py.ctl.output import cell, emit, fields, output_option, table
from felix_py.datastore.keys import Kind
from policy import groups

DIRECTIONS = ("inbound", "outbound")

# Rule match flags: (model key, click type); each also has a negated --not-... form.
_MATCHES: list[tuple[str, Any]] = [
    ("protocol", str), ("src_net", str), ("dst_net", str), ("src_tag", str),
    ("dst_tag", str), ("src_selector", str), ("dst_selector", str), ("src_ports", str),
    ("dst_ports", str), ("icmp_type", int), ("icmp_code", int)]


@click.group()
def profile():
    """Profiles: add, remove, list, show, rule add|remove."""


@profile.command()
@click.argument("name")
@click.option("--tag", "tags", multiple=True, help="An extra tag (the profile's own name is "
                                                   "always one).")
@click.option("--label", "labels", multiple=True, help="Label KEY=VALUE given to members.")
@click.option("--no-default-rules", is_flag=True,
              help="Start with no rules (members are then reached by nothing).")
@pass_ctx
def add(ctx: Ctx, name, tags, labels, no_default_rules):
    """Create a profile: members reach each other, and may send anywhere."""
    try:
        rules, own_tags = groups.new_group(name)
    except groups.GroupError as e:
        raise CtlError(str(e)) from None
    if no_default_rules:
        rules = model.ProfileRules()
    keys = profile_keys(ctx.layout, name)
    values = {Kind.PROFILE_RULES: rules,
              Kind.PROFILE_TAGS: list(dict.fromkeys([*own_tags, *tags]))}
    if labels:
        values[Kind.PROFILE_LABELS] = parse_labels(labels)
    try:
        for kind, value in values.items():
            ctx.registry.validated(keys[kind], value)
    except model.ModelError as e:
        raise model_error(f"profile {name!r}", e) from None
    if ctx.registry.profile_exists(name):
        raise CtlError(f"profile {name!r} already exists")
    ctx.registry.swap([(keys[k], None, v) for k, v in values.items()])
    click.echo(f"Added profile {name}.")


def members(ctx: Ctx, name: str) -> list[tuple[Any, str, bytes]]:
    """(endpoint id, key, raw value) of every endpoint that lists the profile."""
    out = []
    for pk, rec, raw in ctx.snapshot(ctx.layout.dir("v1/host")):
        if pk.kind is Kind.ENDPOINT and isinstance(rec, model.Endpoint) and \
                name in rec.profile_ids:
            out.append((pk.endpoint_id, pk.key, raw))
    return out


def without_profile(raw: bytes, name: str) -> dict:
    value = json.loads(raw)
    value["profile_ids"] = [p for p in value.get("profile_ids", []) if p != name]
    value.pop("profile_id", None)
    return value


def remove_profile(ctx: Ctx, name: str, force: bool,
                   extra: Callable[[], list] | None = None, what: str = "profile") -> int:
    """Delete a profile; with ``force`` also take it out of its members' profile lists (and
    the swaps ``extra()`` returns), all in one transaction.  Returns the number of members."""
    def change():
        keys = profile_keys(ctx.layout, name)
        raws = {k: ctx.client.get(key) for k, key in keys.items()}
        if raws[Kind.PROFILE_RULES] is None and raws[Kind.PROFILE_TAGS] is None:
            raise CtlError(f"unknown profile {name!r}; see `felixctl profile list`")
        users = members(ctx, name)
        if users and not force:
            shown = ", ".join(str(e) for e, _, _ in users[:3]) + (" ..." if len(users) > 3 else "")
            raise CtlError(f"{what} {name!r} is used by {len(users)} endpoint(s) ({shown}); "
                           "take it off them first, or --force to do both at once")
        changes = [(keys[k], raw, None) for k, raw in raws.items() if raw is not None]
        changes += [(key, raw, without_profile(raw, name)) for _, key, raw in users]
        ctx.registry.swap(changes + (extra() if extra else []))
        return len(users)
    return retry_on_conflict(change)


@profile.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Also take the profile off every endpoint.")
@pass_ctx
def remove(ctx: Ctx, name, force):
    """Delete a profile."""
    n = remove_profile(ctx, name, force)
    click.echo(f"Removed profile {name}" + (f" (and from {n} endpoint(s))." if n else "."))


def _profile_docs(ctx: Ctx, names=None) -> list[dict]:
    docs = documents.from_snapshot(ctx.snapshot(ctx.layout.dir("v1/policy/profile")),
                                   ["profile"])
    return [d for d in docs if names is None or d["metadata"]["name"] in names]


def _member_counts(ctx: Ctx) -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, rec in ctx.registry.list_endpoints():
        if isinstance(rec, model.Endpoint):
            for p in rec.profile_ids:
                counts[p] = counts.get(p, 0) + 1
    return counts


@profile.command("list")
@output_option
@pass_ctx
def list_(ctx: Ctx):
    """List profiles with their tags, rule counts and member counts."""
    docs = _profile_docs(ctx)
    counts = _member_counts(ctx)
    rows = [[d["metadata"]["name"], d["spec"].get("tags"), d["spec"].get("labels"),
             len(d["spec"].get("inbound_rules", [])), len(d["spec"].get("outbound_rules", [])),
             counts.get(d["metadata"]["name"], 0)] for d in docs]
    emit(docs, ["NAME", "TAGS", "LABELS", "INBOUND", "OUTBOUND", "ENDPOINTS"], rows)


def rule_text(rule: dict) -> str:
    """A rule's matches as one line ("protocol=tcp dst_ports=80,443")."""
    return " ".join(f"{k}={cell(v)}" for k, v in rule.items() if k != "action") or "everything"


def rules_table(spec: dict) -> str:
    rows = [[d, i, r.get("action", "allow"), rule_text(r)]
            for d in DIRECTIONS for i, r in enumerate(spec.get(f"{d}_rules", []), 1)]
    return table(["DIRECTION", "#", "ACTION", "MATCH"], rows)


@profile.command()
@click.argument("name")
@output_option
@pass_ctx
def show(ctx: Ctx, name):
    """Show a profile: tags, labels and numbered rules."""
    docs = _profile_docs(ctx, [name])
    if not docs:
        raise CtlError(f"unknown profile {name!r}; see `felixctl profile list`")
    doc = docs[0]
    spec = doc["spec"]
    text = fields([("Profile", name), ("Tags", spec.get("tags")), ("Labels", spec.get("labels")),
                   ("Members", _member_counts(ctx).get(name, 0))])
    if doc.get("status"):
        text += "\n" + fields([("Errors", "; ".join(doc["status"]["errors"]))])
    emit(doc, text=text + "\n\n" + rules_table(spec))


# -- rules ----------------------------------------------------------------------------------

@profile.group()
def rule():
    """Add or remove one rule of a profile."""


def _match_options(f):
    for key, typ in reversed(_MATCHES):
        flag = key.replace("_", "-")
        f = click.option(f"--not-{flag}", f"not_{key}", type=typ, help=f"Negated {flag}.")(f)
        f = click.option(f"--{flag}", key, type=typ,
                         help="Comma-separated ports or LOW:HIGH ranges." if "ports" in key
                         else None)(f)
    return f


def build_rule(action: str | None, ip_version: int | None, matches: dict) -> dict:
    """The rule (Calico's v1 keys) the flags describe; unchecked."""
    out: dict[str, Any] = {"action": action} if action else {}
    if ip_version:
        out["ip_version"] = ip_version
    for key, _ in _MATCHES:
        for name, stored in ((key, key), (f"not_{key}", f"!{key}")):
            value = matches.get(name)
            if value is None:
                continue
            if key.endswith("ports"):
                value = parse_ports(value, "--" + name.replace("_", "-"))
            elif key == "protocol" and str(value).isdigit():
                value = int(value)
            out[stored] = value
    return out


def check_rule(ctx: Ctx, profile_name: str, rule_dict: dict) -> model.Rule:
    """Validate one rule; the error names the flag that is wrong."""
    key = ctx.layout.profile(Kind.PROFILE_RULES, profile_name)
    try:
        rules = ctx.registry.validated(key, {"inbound_rules": [rule_dict]})[1]
    except model.ModelError as e:
        parts = (e.field or "").split(".")[2:]    # inbound_rules.0.<key>[.index]
        flag = parts[0].replace("!", "not-").replace("_", "-") if parts else ""
        raise CtlError(f"invalid rule: {'--' + flag + ': ' if flag else ''}{e.message}") \
            from None
    return rules.inbound_rules[0]


def edit_rules(ctx: Ctx, name: str, edit) -> None:
    """Read the profile's rules, apply ``edit(ProfileRules) -> ProfileRules``, write them
    back only if nobody changed them meanwhile."""
    key = ctx.layout.profile(Kind.PROFILE_RULES, name)

    def change():
        raw = ctx.client.get(key)
        if raw is None:
            raise CtlError(f"unknown profile {name!r}; see `felixctl profile list`")
        try:
            current = model.decode(ctx.layout.parse(key), raw)
        except model.ModelError as e:
            raise CtlError(f"profile {name!r} has invalid rules in the datastore ({e}); "
                           "replace them with `felixctl apply`") from None
        ctx.registry.swap([(key, raw, edit(current))])
    retry_on_conflict(change)


@rule.command("add")
@click.argument("profile_name", metavar="PROFILE")
@click.option("--direction", type=click.Choice(DIRECTIONS), required=True)
@click.option("--action", type=click.Choice(["allow", "deny", "log"]), default="allow",
              show_default=True)
@click.option("--ip-version", type=click.Choice(["4", "6"]), help="Limit to IPv4 or IPv6.")
@_match_options
@click.option("--at", "position", type=click.IntRange(min=1),
              help="Insert at this position (1 = first); default: last.")
@pass_ctx
def rule_add(ctx: Ctx, profile_name, direction, action, ip_version, position, **matches):
    """Add a rule to a profile."""
    new = check_rule(ctx, profile_name,
                     build_rule(action, int(ip_version) if ip_version else None, matches))
    attr = f"{direction}_rules"

    def edit(current: model.ProfileRules) -> model.ProfileRules:
        rules = list(getattr(current, attr))
        if position is not None and position > len(rules) + 1:
            raise CtlError(f"--at {position}: profile {profile_name!r} has only {len(rules)} "
                           f"{direction} rule(s)")
        rules.insert(len(rules) if position is None else position - 1, new)
        return current.model_copy(update={attr: rules})

    edit_rules(ctx, profile_name, edit)
    click.echo(f"Added {direction} rule to {profile_name}: {action} "
               f"{rule_text(json.loads(new.to_json()))}")


@rule.command("remove")
@click.argument("profile_name", metavar="PROFILE")
@click.option("--direction", type=click.Choice(DIRECTIONS), required=True)
@click.option("--at", "position", type=click.IntRange(min=1),
              help="Remove the rule at this position (see `profile show`).")
@click.option("--action", type=click.Choice(["allow", "deny", "log"]))
@click.option("--ip-version", type=click.Choice(["4", "6"]))
@_match_options
@pass_ctx
def rule_remove(ctx: Ctx, profile_name, direction, position, action, ip_version, **matches):
    """Remove a rule, by position or by the same flags that added it."""
    given = {k: v for k, v in matches.items() if v is not None}
    if (position is None) == (not (given or action or ip_version)):
        raise CtlError("give either --at N or the rule's flags")
    target = None
    if position is None:
        target = check_rule(ctx, profile_name,
                            build_rule(action or "allow", int(ip_version) if ip_version
                                       else None, matches))
    attr = f"{direction}_rules"

    def edit(current: model.ProfileRules) -> model.ProfileRules:
        rules = list(getattr(current, attr))
        if target is None:
            if position > len(rules):
                raise CtlError(f"--at {position}: profile {profile_name!r} has only "
                               f"{len(rules)} {direction} rule(s)")
            del rules[position - 1]
        else:
            if target not in rules:
                raise CtlError(f"profile {profile_name!r} has no such {direction} rule; see "
                               f"`felixctl profile show {profile_name}`")
            rules.remove(target)
        return current.model_copy(update={attr: rules})

    edit_rules(ctx, profile_name, edit)
    click.echo(f"Removed {direction} rule from {profile_name}.")
