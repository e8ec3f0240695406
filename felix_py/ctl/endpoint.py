"""``felixctl endpoint``: register, change, remove and list workload endpoints by hand.

An endpoint is named by its full id ``HOST/ORCH/WORKLOAD/ENDPOINT`` or, where that is
unique, by its workload name.  Every write is checked against the model and against the
profiles it names before it is written; updates are compare-and-swap on the stored value.
"""

from __future__ import annotations

import json
from typing import Any

import click

from felix_py import model
from felix_py.ctl import documents
from felix_py.cni.link import host_ifname
from felix_py.ctl.common import (DEFAULT_ENDPOINT, DEFAULT_ORCHESTRATOR, CtlError, Ctx,
                                 find_endpoint, model_error, parse_labels,
                                 pass_ctx, require_profiles, retry_on_conflict, split_nets)
from felix_py.ctl.output import emit, fields, output_option
from felix_py.datastore.client import Conflict
from felix_py.datastore.keys import EndpointId


@click.group()
def endpoint():
    """Workload endpoints: add, update, remove, list, show."""


def _endpoint_id(ref: str, host: str | None, orchestrator: str | None,
                 endpoint_name: str | None) -> EndpointId:
    parts = ref.split("/")
    if len(parts) == 4:
        return EndpointId(*parts)
    if len(parts) != 1 or not ref:
        raise CtlError(f"{ref!r} is neither a workload name nor HOST/ORCH/WORKLOAD/ENDPOINT")
    if not host:
        raise CtlError("--host is required (or give HOST/ORCH/WORKLOAD/ENDPOINT)")
    return EndpointId(host, orchestrator or DEFAULT_ORCHESTRATOR, ref,
                      endpoint_name or DEFAULT_ENDPOINT)


def _check_addresses(ctx: Ctx, eid: EndpointId, nets: list[str]) -> None:
    """An address belongs to one workload; a second one would steal its route."""
    wanted = set(nets)
    for other, rec in ctx.registry.list_endpoints():
        if other == eid or isinstance(rec, model.ModelError):
            continue
        clash = wanted & set(rec.ipv4_nets + rec.ipv6_nets)
        if clash:
            raise CtlError(f"address {', '.join(sorted(clash))} is already used by endpoint "
                           f"{other}")


def _validated(ctx: Ctx, eid: EndpointId, value: dict) -> model.Endpoint:
    try:
        return ctx.registry.validated(ctx.layout.endpoint(eid), value)[1]
    except model.ModelError as e:
        raise model_error(f"endpoint {eid}", e) from None


@endpoint.command()
@click.argument("workload")
@click.option("--host", help="Host the workload runs on.")
@click.option("--orchestrator", help=f"Orchestrator name [{DEFAULT_ORCHESTRATOR}].")
@click.option("--endpoint", "endpoint_name", help=f"Endpoint id [{DEFAULT_ENDPOINT}].")
@click.option("--interface", help="Host-side interface [cali + hash of the id].")
@click.option("--ip", "ips", multiple=True, required=True,
              help="Workload address, IPv4 or IPv6 (repeatable).")
@click.option("--mac", help="The workload's MAC address.")
@click.option("--profile", "profiles", multiple=True, help="Profile id (repeatable).")
@click.option("--label", "labels", multiple=True, help="Label KEY=VALUE (repeatable).")
@click.option("--inactive", is_flag=True, help="Register it inactive (no route, no traffic).")
@pass_ctx
def add(ctx: Ctx, workload, host, orchestrator, endpoint_name, interface, ips, mac, profiles,
        labels, inactive):
    """Register a workload endpoint (WORKLOAD, or HOST/ORCH/WORKLOAD/ENDPOINT)."""
    eid = _endpoint_id(workload, host, orchestrator, endpoint_name)
    v4, v6 = split_nets(ips)
    value: dict[str, Any] = {"state": "inactive" if inactive else "active",
                             "name": interface or host_ifname(eid),
                             "ipv4_nets": v4, "ipv6_nets": v6, "profile_ids": list(profiles),
                             "labels": parse_labels(labels)}
    if mac:
        value["mac"] = mac
    _validated(ctx, eid, value)
    require_profiles(ctx, profiles)
    _check_addresses(ctx, eid, v4 + v6)
    try:
        ctx.registry.register_endpoint(eid, value, create_only=True)
    except Conflict:
        raise CtlError(f"endpoint {eid} already exists; change it with `felixctl endpoint "
                       "update`") from None
    click.echo(f"Added endpoint {eid} ({value['name']}).")


@endpoint.command()
@click.argument("workload")
@click.option("--host", help="Narrow a workload name to this host.")
@click.option("--orchestrator", help="Narrow a workload name to this orchestrator.")
@click.option("--interface", help="New host-side interface.")
@click.option("--ip", "ips", multiple=True, help="Replace the addresses (repeatable).")
@click.option("--mac", help="New MAC address.")
@click.option("--profile", "profiles", multiple=True, help="Replace the profiles (repeatable).")
@click.option("--add-profile", "add_profiles", multiple=True, help="Add a profile.")
@click.option("--remove-profile", "remove_profiles", multiple=True, help="Remove a profile.")
@click.option("--label", "labels", multiple=True, help="Set a label KEY=VALUE.")
@click.option("--remove-label", "remove_labels", multiple=True, help="Remove a label KEY.")
@click.option("--state", type=click.Choice(["active", "inactive"]), help="New state.")
@pass_ctx
def update(ctx: Ctx, workload, host, orchestrator, interface, ips, mac, profiles,
           add_profiles, remove_profiles, labels, remove_labels, state):
    """Change fields of an existing endpoint."""
    eid, _ = find_endpoint(ctx, workload, host, orchestrator)
    key = ctx.layout.endpoint(eid)
    new_labels = parse_labels(labels)
    require_profiles(ctx, [*profiles, *add_profiles])

    def change():
        raw = ctx.client.get(key)
        if raw is None:
            raise CtlError(f"endpoint {eid} does not exist")
        value = json.loads(raw)
        if interface:
            value["name"] = interface
        if ips:
            value["ipv4_nets"], value["ipv6_nets"] = split_nets(ips)
            _check_addresses(ctx, eid, value["ipv4_nets"] + value["ipv6_nets"])
        if mac:
            value["mac"] = mac
        if state:
            value["state"] = state
        legacy = value.pop("profile_id", None)       # Calico's older single-profile form
        current = value.pop("profile_ids", [legacy] if legacy else [])
        pids = list(profiles) if profiles else list(current)
        for p in remove_profiles:
            if p not in pids:
                raise CtlError(f"endpoint {eid} does not have profile {p!r}")
            pids.remove(p)
        pids += [p for p in add_profiles if p not in pids]
        value["profile_ids"] = pids
        value["labels"] = {k: v for k, v in {**value.get("labels", {}), **new_labels}.items()
                           if k not in remove_labels}
        _validated(ctx, eid, value)
        ctx.registry.swap([(key, raw, value)])

    retry_on_conflict(change)
    click.echo(f"Updated endpoint {eid}.")


@endpoint.command()
@click.argument("workload")
@click.option("--host", help="Narrow a workload name to this host.")
@click.option("--orchestrator", help="Narrow a workload name to this orchestrator.")
@pass_ctx
def remove(ctx: Ctx, workload, host, orchestrator):
    """Remove an endpoint (and its status)."""
    eid, _ = find_endpoint(ctx, workload, host, orchestrator)
    ctx.registry.remove_endpoint(eid)
    click.echo(f"Removed endpoint {eid}.")


def _status(status) -> str:
    if status is None:
        return "-"
    if isinstance(status, model.ModelError):
        return "invalid status"
    return status.status + (f" ({status.reason})" if status.reason else "")


def _rows(ctx: Ctx, host: str | None, profile: str | None, orchestrator: str | None):
    statuses = ctx.registry.endpoint_statuses(host)
    for eid, rec in sorted(ctx.registry.list_endpoints(host), key=lambda x: tuple(x[0])):
        if orchestrator and eid.orchestrator != orchestrator:
            continue
        if profile and (isinstance(rec, model.ModelError) or profile not in rec.profile_ids):
            continue
        yield eid, rec, statuses.get(eid)


@endpoint.command("list")
@click.option("--host", help="Only endpoints on this host.")
@click.option("--profile", help="Only endpoints with this profile.")
@click.option("--orchestrator", help="Only endpoints of this orchestrator.")
@output_option
@pass_ctx
def list_(ctx: Ctx, host, profile, orchestrator):
    """List endpoints with the status their agent reports."""
    found = list(_rows(ctx, host, profile, orchestrator))
    rows = []
    for eid, rec, status in found:
        if isinstance(rec, model.ModelError):
            where = f"{rec.field}: " if rec.field else ""
            rows.append([*eid, None, None, None, "invalid", f"invalid ({where}{rec.message})"])
        else:
            rows.append([*eid, rec.name, rec.ipv4_nets + rec.ipv6_nets, rec.profile_ids,
                         rec.state, _status(status)])
    emit([documents.endpoint_document(eid, rec, status) for eid, rec, status in found],
         ["HOST", "ORCHESTRATOR", "WORKLOAD", "ENDPOINT", "INTERFACE", "IPS", "PROFILES",
          "STATE", "STATUS"], rows)


@endpoint.command()
@click.argument("workload")
@click.option("--host", help="Narrow a workload name to this host.")
@click.option("--orchestrator", help="Narrow a workload name to this orchestrator.")
@output_option
@pass_ctx
def show(ctx: Ctx, workload, host, orchestrator):
    """Show one endpoint in full."""
    eid, rec = find_endpoint(ctx, workload, host, orchestrator)
    status = ctx.registry.endpoint_status(eid)
    doc = documents.endpoint_document(eid, rec, status)
    if isinstance(rec, model.ModelError):
        pairs = [("Endpoint", str(eid)), ("Error", str(rec))]
    else:
        pairs = [("Endpoint", str(eid)), ("State", rec.state), ("Interface", rec.name),
                 ("MAC", rec.mac), ("IPv4", rec.ipv4_nets), ("IPv6", rec.ipv6_nets),
                 ("IPv4 gateway", rec.ipv4_gateway), ("IPv6 gateway", rec.ipv6_gateway),
                 ("Profiles", rec.profile_ids), ("Labels", rec.labels),
                 ("Status", _status(status))]
    emit(doc, text=fields(pairs))
