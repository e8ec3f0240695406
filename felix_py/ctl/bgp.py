"""``felixctl bgp``: the BGP settings under /calico/bgp/v1, global or per host.

``mode``, ``as`` and ``cluster-id`` print the current value when given none, set it when
given one and remove a per-host override with ``--clear``; ``peer``/``rr`` manage peers and
route reflectors; ``mesh on|off`` the node-to-node mesh; ``address`` a host's BGP address
(its router id, without which the host runs no BGP); ``render`` the fabric switches' BIRD
configurations from the same settings (``bgp/fabric.py``).
"""

from __future__ import annotations

import ipaddress

import click

from bgp import fabric
from bgp.config import DEFAULT_AS, DEFAULT_MODE
from felix_py import config as config_mod
from felix_py import model
from felix_py.ctl import documents
from felix_py.ctl.common import CtlError, Ctx, model_error, pass_ctx
from felix_py.ctl.output import emit, fields, output_option


@click.group()
def bgp():
    """BGP: mode, AS, peers, route reflectors, mesh, host addresses."""


def _current(ctx: Ctx, name: str, host: str | None, default) -> str:
    """The value in force for the scope, and where it comes from when inherited."""
    scopes = [host, None] if host and name in ("as_num", "mode") else [host]
    for scope in scopes:
        key = documents.bgp_setting_key(ctx.layout, name, scope)
        raw = ctx.client.get(key)
        if raw is not None:
            value = model.decode(ctx.layout.parse(key), raw)
            return f"{value}" + (" (global)" if scope is None and host else "")
    return f"{default} (default)" if default is not None else "-"


def _setting(ctx: Ctx, name: str, value, host: str | None, clear: bool, default,
             setter) -> None:
    key = documents.bgp_setting_key(ctx.layout, name, host)
    scope = f"host {host}" if host else "global"
    if clear:
        if value is not None:
            raise CtlError("give a value or --clear, not both")
        if not ctx.client.delete(key):
            raise CtlError(f"no {scope} {name} is set")
        click.echo(f"Cleared {scope} {name}.")
        return
    if value is None:
        click.echo(_current(ctx, name, host, default))
        return
    try:
        setter(value)
    except model.ModelError as e:
        raise model_error(f"{scope} {name}", e) from None
    click.echo(f"Set {scope} {name} to {value}.")


@bgp.command()
@click.argument("mode", required=False, type=click.Choice(model.BGP_MODES))
@click.option("--host", help="Set it for this host only.")
@click.option("--clear", is_flag=True, help="Remove the (per-host) setting.")
@pass_ctx
def mode(ctx: Ctx, mode, host, clear):
    """Print or set the BGP mode (downward-default, route-reflector, node-mesh)."""
    _setting(ctx, "mode", mode, host, clear, DEFAULT_MODE,
             lambda v: ctx.registry.set_bgp_mode(v, host))


@bgp.command("as")
@click.argument("as_num", required=False)
@click.option("--host", help="Set it for this host only.")
@click.option("--clear", is_flag=True, help="Remove the (per-host) setting.")
@pass_ctx
def as_(ctx: Ctx, as_num, host, clear):
    """Print or set the hosts' AS number (plain or asdot)."""
    _setting(ctx, "as_num", as_num, host, clear, DEFAULT_AS,
             lambda v: ctx.registry.set_as_number(v, host))


@bgp.command("cluster-id")
@click.argument("cluster_id", required=False)
@click.option("--host", required=True, help="The host whose route reflectors to choose.")
@click.option("--clear", is_flag=True, help="Remove the setting.")
@pass_ctx
def cluster_id(ctx: Ctx, cluster_id, host, clear):
    """Print or set the route-reflector cluster a host peers with."""
    _setting(ctx, "rr_cluster_id", cluster_id, host, clear, None,
             lambda v: ctx.registry.set_rr_cluster_id(host, v))


@bgp.command()
@click.argument("ip", required=False)
@click.option("--host", required=True, help="The host.")
@click.option("--clear", is_flag=True, help="Remove the host's address (it stops BGP).")
@pass_ctx
def address(ctx: Ctx, ip, host, clear):
    """Print or set a host's BGP address (IPv4 router id, or IPv6)."""
    version = 4
    if ip is not None:
        try:
            version = ipaddress.ip_address(ip).version
        except ValueError:
            raise CtlError(f"invalid BGP address {ip!r}: not an IP address") from None
    _setting(ctx, f"ip_addr_v{version}", ip, host, clear, None,
             lambda v: ctx.registry.set_host_bgp_address(host, v, version))


@bgp.command()
@click.argument("state", type=click.Choice(["on", "off"]))
@pass_ctx
def mesh(ctx: Ctx, state):
    """Turn the node-to-node mesh (mode node-mesh) on or off."""
    ctx.registry.set_node_mesh(state == "on")
    click.echo(f"Node mesh {state}.")


@bgp.command()
@click.option("--host", help="Also the settings of this host.")
@output_option
@pass_ctx
def show(ctx: Ctx, host):
    """Show the global (and a host's) BGP settings."""
    docs = documents.from_snapshot(ctx.snapshot(ctx.layout.dir("bgp/v1")), ["bgpConfig"])
    docs = [d for d in docs if d["metadata"].get("host") in (None, host)]
    pairs = []
    for d in docs:
        scope = d["metadata"].get("host") or "global"
        pairs += [(f"{scope} {k}", v) for k, v in d["spec"].items()]
        pairs += [(f"{scope} error", e) for e in (d.get("status") or {}).get("errors", [])]
    emit(docs, text=fields(pairs) if pairs else "No BGP settings (defaults: AS "
                                                 f"{DEFAULT_AS}, mode {DEFAULT_MODE}).")


# -- peers ----------------------------------------------------------------------------------

@bgp.group()
def peer():
    """BGP peers of every host (global) or of one host (--host), e.g. its ToRs."""


@peer.command("add")
@click.argument("ip")
@click.option("--as", "as_num", required=True, help="The peer's AS number.")
@click.option("--host", help="Peer of this host only (e.g. its ToR).")
@click.option("--password", help="TCP MD5 password.")
@click.option("--port", type=int, help="The peer's TCP port [179].")
@pass_ctx
def peer_add(ctx: Ctx, ip, as_num, host, password, port):
    """Add (or change) a BGP peer."""
    try:
        # A plain number is stored as one; asdot ("1.10") as the string the model reads.
        ctx.registry.add_bgp_peer(ip, int(as_num) if as_num.isdigit() else as_num, host,
                                  password, port)
    except model.ModelError as e:
        raise model_error(f"BGP peer {ip}", e) from None
    click.echo(f"Added {'global' if not host else f'host {host}'} BGP peer {ip} AS {as_num}.")


def _ip(ip: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise CtlError(f"invalid {what} {ip!r}: not an IP address") from None


@peer.command("remove")
@click.argument("ip")
@click.option("--host", help="A peer of this host.")
@pass_ctx
def peer_remove(ctx: Ctx, ip, host):
    """Remove a BGP peer."""
    ctx.registry.remove_bgp_peer(_ip(ip, "peer address"), host)
    click.echo(f"Removed BGP peer {ip}.")


@peer.command("list")
@click.option("--host", help="Only the peers that apply to this host.")
@output_option
@pass_ctx
def peer_list(ctx: Ctx, host):
    """List global and per-host BGP peers."""
    docs = documents.from_snapshot(ctx.snapshot(ctx.layout.dir("bgp/v1")), ["bgpPeer"])
    docs = [d for d in docs if host is None or d["metadata"].get("host") in (None, host)]
    rows = []
    for d in docs:
        spec = d["spec"] if isinstance(d["spec"], dict) else {}
        rows.append([d["metadata"].get("host") or "global", d["metadata"]["ip"],
                     spec.get("as_num"), spec.get("port"),
                     "set" if spec.get("password") else None,
                     "invalid" if d.get("status") else "ok"])
    emit(docs, ["SCOPE", "PEER ADDRESS", "AS", "PORT", "PASSWORD", "STATE"], rows)


# -- route reflectors -----------------------------------------------------------------------

@bgp.group()
def rr():
    """Route reflectors (used by hosts in route-reflector mode, by cluster id)."""


@rr.command("add")
@click.argument("ip")
@click.option("--cluster-id", required=True, help="Cluster id (an IPv4 address).")
@pass_ctx
def rr_add(ctx: Ctx, ip, cluster_id):
    """Add (or change) a route reflector."""
    ip = _ip(ip, "route reflector address")
    try:
        ctx.registry.add_route_reflector(ip, cluster_id)
    except model.ModelError as e:
        raise model_error(f"route reflector {ip}", e) from None
    click.echo(f"Added route reflector {ip} (cluster {cluster_id}).")


@rr.command("remove")
@click.argument("ip")
@pass_ctx
def rr_remove(ctx: Ctx, ip):
    """Remove a route reflector."""
    ctx.registry.remove_route_reflector(_ip(ip, "route reflector address"))
    click.echo(f"Removed route reflector {ip}.")


@rr.command("list")
@output_option
@pass_ctx
def rr_list(ctx: Ctx):
    """List route reflectors."""
    docs = documents.from_snapshot(ctx.snapshot(ctx.layout.dir("bgp/v1")), ["routeReflector"])
    rows = [[d["metadata"]["ip"], (d["spec"] if isinstance(d["spec"], dict) else {})
             .get("cluster_id"), "invalid" if d.get("status") else "ok"] for d in docs]
    emit(docs, ["ADDRESS", "CLUSTER ID", "STATE"], rows)


# -- fabric configurations ------------------------------------------------------------------

@bgp.group()
def render():
    """BIRD 2 configurations for the fabric (ToR, core, route reflector), from the
    datastore's BGP settings, so that the switches and the hosts agree."""


def _neighbors(items, flag: str) -> list[tuple]:
    """("10.0.0.1:65000[:password]", ...) -> [(ip, as, password?)]."""
    out = []
    for item in items:
        parts = item.split(":", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise CtlError(f"{flag} {item!r} is not IP:AS[:PASSWORD]")
        out.append((parts[0], int(parts[1]), *parts[2:]))
    return out


def _timers(ctx: Ctx) -> dict:
    """Hold and graceful-restart times as the hosts use them (global config, else default)."""
    stored = ctx.registry.get_config(None)
    out = {}
    for name, arg in (("BgpHoldTimeSecs", "hold_time"),
                      ("BgpGracefulRestartSecs", "graceful_restart")):
        raw = stored.get(name)
        out[arg] = config_mod.parse_value(name, raw) if raw else config_mod.BY_NAME[name].default
    return out


def _emit_config(text: str, path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"Wrote {path}")
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _rendered(fn, *args, **kwargs) -> str:
    try:
        return fn(*args, **kwargs)
    except fabric.RenderError as e:
        raise CtlError(str(e)) from None


_file_option = click.option("--file", "path", metavar="PATH", help="Write here, not stdout.")
_log_option = click.option("--log-file", help="BIRD's log file.")


@render.command("tor")
@click.option("--name", required=True, help="The switch's name (in comments and logs).")
@click.option("--router-id", required=True, help="Its router id (IPv4).")
@click.option("--as", "as_num", type=int, required=True, help="Its AS.")
@click.option("--address", "addresses", multiple=True, required=True,
              help="Its address on a rack link with prefix length, e.g. 10.1.0.1/24 "
                   "(repeatable); hosts whose peers name it form its rack.")
@click.option("--uplink", "uplinks", multiple=True, help="Core switch IP:AS[:PASSWORD].")
@click.option("--originate-default", is_flag=True, help="Originate 0.0.0.0/0 itself (a "
                                                        "fabric without a core).")
@_log_option
@_file_option
@pass_ctx
def render_tor(ctx: Ctx, name, router_id, as_num, addresses, uplinks, originate_default,
               log_file, path):
    """A ToR: peers with its rack's hosts, sends them only a default route."""
    settings, pools = fabric.load(ctx.client, ctx.layout)
    _emit_config(_rendered(fabric.render_tor, settings, pools, name=name, router_id=router_id,
                           local_as=as_num, addresses=addresses,
                           uplinks=_neighbors(uplinks, "--uplink"),
                           originate_default=originate_default, log_file=log_file,
                           **_timers(ctx)), path)


@render.command("core")
@click.option("--name", required=True, help="The switch's name.")
@click.option("--router-id", required=True, help="Its router id (IPv4).")
@click.option("--as", "as_num", type=int, required=True, help="Its AS.")
@click.option("--tor", "tors", multiple=True, required=True, help="A ToR IP:AS[:PASSWORD].")
@_log_option
@_file_option
@pass_ctx
def render_core(ctx: Ctx, name, router_id, as_num, tors, log_file, path):
    """A core/spine switch: takes the ToRs' workload routes, sends them a default."""
    _emit_config(_rendered(fabric.render_core, name=name, router_id=router_id,
                           local_as=as_num, tors=_neighbors(tors, "--tor"), log_file=log_file,
                           **_timers(ctx)), path)


@render.command("rr")
@click.argument("ip")
@click.option("--name", help="The reflector's name [its address].")
@_log_option
@_file_option
@pass_ctx
def render_rr(ctx: Ctx, ip, name, log_file, path):
    """The route reflector /calico/bgp/v1/rr_v4/IP: its cluster's hosts as clients."""
    settings, _ = fabric.load(ctx.client, ctx.layout)
    _emit_config(_rendered(fabric.render_route_reflector, settings, rr_ip=ip, name=name,
                           log_file=log_file, **_timers(ctx)), path)
