"""``felixctl status``, ``node status`` and ``node list``: what the agents report.

An agent's heartbeat (``/calico/felix/v1/host/<host>/status``) is bound to a lease, so it
vanishes when the agent dies; one that is older than the reporting TTL means an agent that
is stuck or a clock that is off.  The heartbeat also lists the settings the agent cannot
follow (BGP problems).  BGP sessions come from the agent's per-peer status keys.
"""

from __future__ import annotations

from datetime import datetime, timezone

import click

from bgp.config import DEFAULT_AS, DEFAULT_MODE
from felix_py import config as config_mod
from felix_py import model
from felix_py.ctl.common import Ctx, local_hostname, pass_ctx
from felix_py.ctl.output import emit, fields, output_option, table
from felix_py.datastore.keys import Kind

PEER_TYPES = {"tor": "ToR", "global": "global", "node-mesh": "node-mesh",
              "route-reflector": "route reflector"}


def _age(stamp: str) -> float | None:
    try:
        t = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - t).total_seconds()


def duration(seconds: float | None) -> str:
    """3725 -> "1h2m5s", 90 -> "1m30s": every unit from the largest one present."""
    if seconds is None:
        return "?"
    s = int(max(seconds, 0))
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if out or s >= size:
            out += f"{s // size}{unit}"
            s %= size
    return f"{out}{s}s"


def agent_state(hb, ttl: float) -> dict:
    """alive / stale / down / invalid, from a heartbeat record (or its absence)."""
    if hb is None:
        return {"state": "down", "detail": "no heartbeat (agent not running)"}
    if isinstance(hb, model.ModelError):
        return {"state": "invalid", "detail": hb.message}
    age = _age(hb.time)
    out = {"state": "alive", "heartbeat_age": age, "uptime": hb.uptime, "version": hb.version,
           "ready": hb.ready, "first_update": hb.first_update, "time": hb.time}
    if age is None or age > ttl:
        out["state"] = "stale"
    out["detail"] = f"heartbeat {duration(age)} ago"
    return out


def _ttl(global_config: dict, host_config: dict) -> float:
    raw = host_config.get("ReportingTtlSecs", global_config.get("ReportingTtlSecs"))
    try:
        return float(config_mod.parse_value("ReportingTtlSecs", raw)) if raw else \
            float(config_mod.BY_NAME["ReportingTtlSecs"].default)
    except config_mod.ConfigError:
        return float(config_mod.BY_NAME["ReportingTtlSecs"].default)


def _peer_rows(peers: list[tuple[str, object]]) -> tuple[list[dict], list[list]]:
    data, rows = [], []
    for ip, rec in sorted(peers):
        if isinstance(rec, model.ModelError):
            data.append({"peer": ip, "error": rec.message})
            rows.append([ip, None, "invalid", None, rec.message])
            continue
        d = {"peer": ip, **rec.model_dump(exclude_none=True)}
        data.append(d)
        since_age = _age(rec.since) if rec.since else None
        since = f"{rec.since} ({duration(since_age)})" if since_age is not None else rec.since
        info = rec.info or (f"{rec.received} received, {rec.accepted} accepted, {rec.sent} sent"
                            if rec.state.lower() == "established" else None)
        rows.append([ip, PEER_TYPES.get(rec.peer_type, rec.peer_type), rec.state, since, info])
    return data, rows


def status_report(ctx: Ctx, host: str) -> tuple[dict, str]:
    """(data, text) of a host's agent and BGP status."""
    items = ctx.snapshot(ctx.layout.felix_host_dir(host))
    hb = next((rec for pk, rec, _ in items if pk.kind is Kind.HOST_STATUS), None)
    ttl = _ttl(ctx.registry.get_config(None), ctx.registry.get_config(host))
    agent = agent_state(hb, ttl)
    peers = [(pk.parts["ip"], rec) for pk, rec, _ in items if pk.kind is Kind.BGP_PEER_STATUS]
    peer_data, peer_rows = _peer_rows(peers)
    problems = hb.problems if isinstance(hb, model.HostStatus) else []
    data = {"host": host, "agent": agent, "problems": problems, "bgp_peers": peer_data}
    pairs = [("Host", host), ("Agent", f"{agent['state']} ({agent['detail']})")]
    if "uptime" in agent:
        pairs += [("Uptime", duration(agent["uptime"])), ("Version", agent["version"]),
                  ("Ready", agent["ready"] if agent["ready"] is not None
                   else agent["first_update"])]
    text = fields(pairs)
    if problems:
        text += "\n\nProblems (settings the agent cannot follow):\n"
        text += "\n".join(f"  - {p}" for p in problems)
    text += "\n\nBGP peers:\n"
    text += table(["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"], peer_rows) \
        if peer_rows else "No BGP peer status reported."
    return data, text


@click.command()
@output_option
@pass_ctx
def status(ctx: Ctx):
    """Is this host's agent alive, and its BGP sessions (see also `node status`)."""
    data, text = status_report(ctx, local_hostname())
    emit(data, text=text)


@click.group()
def node():
    """Hosts: status, list."""


@node.command("status")
@click.option("--host", help="The host [this one: FELIX_HOSTNAME or the hostname].")
@output_option
@pass_ctx
def node_status(ctx: Ctx, host):
    """A host's agent heartbeat and BGP sessions."""
    data, text = status_report(ctx, host or local_hostname())
    emit(data, text=text)


@node.command("list")
@output_option
@pass_ctx
def node_list(ctx: Ctx):
    """Every known host: BGP address, AS, mode, agent state, endpoints."""
    hosts: dict[str, dict] = {}
    glob: dict = {"as_num": DEFAULT_AS, "mode": DEFAULT_MODE, "config": {}}

    def host(name: str) -> dict:
        return hosts.setdefault(name, {"host": name, "bgp_address": None, "as_num": None,
                                       "mode": None, "heartbeat": None, "endpoints": 0,
                                       "endpoints_up": 0, "config": {}})

    for pk, rec, _ in ctx.snapshot():
        if isinstance(rec, model.ModelError) and pk.kind is not Kind.HOST_STATUS:
            continue
        h = pk.host
        if pk.kind is Kind.ENDPOINT:
            host(h)["endpoints"] += 1
        elif pk.kind is Kind.ENDPOINT_STATUS and rec.status == "up":
            host(h)["endpoints_up"] += 1
        elif pk.kind is Kind.HOST_STATUS:
            host(h)["heartbeat"] = rec
        elif pk.kind is Kind.BGP_HOST_IP and pk.parts["version"] == 4 and h:
            host(h)["bgp_address"] = rec
        elif pk.kind in (Kind.BGP_AS_NUM, Kind.BGP_MODE):
            field = "as_num" if pk.kind is Kind.BGP_AS_NUM else "mode"
            (host(h) if h else glob)[field] = rec
        elif pk.kind is Kind.CONFIG:
            (host(h) if h else glob)["config"][pk.parts["name"]] = rec
        elif pk.kind is Kind.IPAM_AFFINITY or (h and pk.kind in (Kind.BGP_PEER,
                                                                   Kind.BGP_RR_CLUSTER_ID)):
            host(h)
    data, rows = [], []
    for name, h in sorted(hosts.items()):
        agent = agent_state(h.pop("heartbeat"), _ttl(glob["config"], h.pop("config")))
        h["as_num"] = h["as_num"] or glob["as_num"]
        h["mode"] = h["mode"] or glob["mode"]
        h["agent"] = agent
        data.append(h)
        rows.append([name, h["bgp_address"], h["as_num"], h["mode"],
                     f"{agent['state']}" + (f" ({duration(agent.get('heartbeat_age'))})"
                                            if "heartbeat_age" in agent else ""),
                     h["endpoints"], h["endpoints_up"]])
    emit(data, ["HOST", "BGP ADDRESS", "AS", "MODE", "AGENT", "ENDPOINTS", "UP"], rows)
