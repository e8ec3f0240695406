"""``felixctl bgp``: the BGP settings under /calico/bgp/v1, global or per host.

``mode``, ``as`` and ``cluster-id`` print the current value when given none, set it when
given one and remove a per-host override with ``--clear``; ``peer``/``rr`` manage peers and
route reflectors; ``mesh on|off`` the node-to-node mesh; ``address`` a host's BGP address
(its router id, without which the host runs no BGP); ``render`` the fabric switches' BIRD
configurations from the same settings (``bgp/fabric.py``).
"""

from __future__ import annotations

import ipaddress
import re

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


_FORM4, _FORM6 = "IP:AS[:PASSWORD]", "[IPV6]:AS[:PASSWORD]"
_FORMS = f"{_FORM4} or {_FORM6}"
_DIGITS = re.compile(r"[0-9]+")          # ASCII only: str.isdigit() takes "²", int() does not


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _bare_ipv6_readings(item: str) -> list[str]:
    """What an IPv6 neighbour written without brackets could have meant, in the bracket
    form (the password, if any, left as PASSWORD): one reading when the address ends where
    a group stops being hex ("fd00::1:65000"), more when it does not ("fd00::1:100:200")."""
    parts = item.split(":")
    out = []
    for k in range(2, len(parts)):
        addr = ":".join(parts[:k])
        if _is_ipv6(addr) and _DIGITS.fullmatch(parts[k]):
            out.append(f"[{addr}]:{parts[k]}" + (":PASSWORD" if k + 1 < len(parts) else ""))
    if _is_ipv6(item):
        out.append(f"[{item}]:AS")
    return out


def parse_neighbor(item: str, flag: str) -> tuple:
    """One ``--uplink``/``--tor`` value -> ``(ip, as)`` or ``(ip, as, password)``.

    IPv4: ``IP:AS[:PASSWORD]``; IPv6: ``[IPV6]:AS[:PASSWORD]``, the address in brackets as
    in a URL (RFC 3986), because its own ':' would otherwise be read as separators.  The
    password is everything after the ':' that ends the AS, ':' included ("a:b" in
    ``10.0.0.1:65000:a:b``); it may not be empty.  The AS is a plain number.  Errors name
    the option and the value (the password masked) and say what to write instead.
    """
    if not item:
        raise CtlError(f"{flag} '' is empty; write {_FORMS}, e.g. 10.0.0.1:65000 or "
                       "[fd00::1]:65000")
    if item.startswith("["):
        form = _FORM6
        close = item.find("]")
        addr_text = item[1:close] if close >= 0 else item[1:]
        after = item[close + 1:] if close >= 0 else ""
        as_sep = after.startswith(":")
        as_text, pw_sep, password = after[1:].partition(":")
    else:
        form = _FORM4
        close = None
        addr_text, as_sep, rest = item.partition(":")
        as_text, pw_sep, password = rest.partition(":")
    shown = item[:len(item) - len(password)] + "****" if pw_sep and password else item

    def bad(problem: str, fix: str, form: str = form, shown: str = shown) -> CtlError:
        return CtlError(f"{flag} {shown!r} is not {form}: {problem}; {fix}")

    if close is None:                       # IP:AS[:PASSWORD]
        try:
            addr = ipaddress.IPv4Address(addr_text)
        except ValueError:
            if "]" in item:
                raise bad("a ']' closes an address no '[' opens", "write "
                          f"[{item.split(']')[0]}]:AS[:PASSWORD]", _FORMS, item) from None
            readings = _bare_ipv6_readings(item)
            if readings or "::" in item:
                # Which ':' ends the address is a guess here, so nothing can be masked.
                raise bad("an IPv6 address goes in brackets (its ':' would be read as "
                          "separators)", "write " + (" or ".join(readings) or
                                                     f"{_FORM6}, e.g. [fd00::1]:65000"),
                          _FORMS, item) from None
            if not addr_text:
                raise bad("no address before the ':'", "write e.g. 10.0.0.1:65000 or "
                          "[fd00::1]:65000", _FORMS) from None
            raise bad(f"{addr_text!r} is not an IPv4 address (names are not looked up)",
                      f"write IP:AS[:PASSWORD] for IPv4, {_FORM6} for IPv6",
                      _FORMS) from None
        written = str(addr)
    else:                                   # [IPV6]:AS[:PASSWORD]
        if close < 0:
            raise bad("no ']' closes the IPv6 address", "write e.g. [fd00::1]:65000")
        if not addr_text:
            raise bad("no address between the brackets", "write e.g. [fd00::1]:65000")
        if "%" in addr_text:
            raise bad(f"{addr_text!r} has a zone index", "give the neighbour's global or "
                      "ULA address (BIRD names a neighbour by address alone)")
        try:
            addr = ipaddress.IPv6Address(addr_text)
        except ValueError:
            try:
                v4 = ipaddress.IPv4Address(addr_text)
            except ValueError:
                raise bad(f"{addr_text!r} is not an IPv6 address",
                          "write e.g. [fd00::1]:65000") from None
            raise bad("brackets are for IPv6 addresses only",
                      f"write {v4}:{as_text or 'AS'}" + (":PASSWORD" if pw_sep else ""),
                      _FORM4) from None
        if addr.ipv4_mapped is not None:
            raise bad(f"{addr_text} is an IPv4-mapped address", f"write the IPv4 neighbour as "
                      f"{addr.ipv4_mapped}:{as_text or 'AS'}", _FORM4)
        if after and not as_sep:
            raise bad(f"{after[0]!r} follows ']' where ':AS' belongs",
                      f"write [{addr_text}]:AS[:PASSWORD]")
        written = f"[{addr}]"
    if not as_sep:
        raise bad("no AS after the address", f"write e.g. {written}:65000")
    if not as_text:
        raise bad("the AS is empty", f"write e.g. {written}:65000")
    if not _DIGITS.fullmatch(as_text):
        asdot = re.fullmatch(r"([0-9]+)\.([0-9]+)", as_text)
        if asdot and all(int(x) <= 65535 for x in asdot.groups()):
            raise bad(f"AS {as_text!r} is asdot", "write it as the plain number "
                      f"{int(asdot[1]) * 65536 + int(asdot[2])}")
        raise bad(f"AS {as_text!r} is not a number", "write the AS as a plain number "
                  f"(1-4294967295), e.g. {written}:65000")
    as_num = int(as_text)
    if not 1 <= as_num <= 4294967295:
        raise bad(f"AS {as_num} is out of range 1-4294967295", "give the neighbour's AS, "
                  f"e.g. {written}:65000")
    if pw_sep and not password:
        raise bad("the password after the AS is empty", f"write {written}:{as_num} for a "
                  "session without one")
    # The renderer's own rules for neighbour addresses and passwords (what BIRD accepts),
    # told here with the option and value.
    try:
        fabric.neighbor_ip(str(addr), f"{flag} {shown!r}")
        fabric.check_password(password or None, f"{flag} {shown!r}")
    except fabric.RenderError as e:
        raise CtlError(str(e)) from None
    return (str(addr), as_num, password) if password else (str(addr), as_num)


def _neighbors(items, flag: str) -> list[tuple]:
    """``--uplink``/``--tor`` values -> ``[(ip, as[, password])]``; each address once."""
    out, seen = [], set()
    for item in items:
        n = parse_neighbor(item, flag)
        if n[0] in seen:
            raise CtlError(f"{flag}: neighbour {n[0]} is given twice; give each neighbour "
                           "once (a dual-stack neighbour once per address)")
        seen.add(n[0])
        out.append(n)
    return out


def _router_id(value: str | None) -> str | None:
    """``--router-id``, checked before the datastore is read (the renderer's own rule)."""
    if value is None:
        return None
    try:
        return fabric.check_router_id(value, "--router-id")
    except fabric.RenderError as e:
        raise CtlError(str(e)) from None


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


_ROUTER_ID_HELP = ("Its router id: a 32-bit id written as an IPv4 address (on IPv6-only "
                   "switches too).")
_NEIGHBOR_HELP = ("IP:AS[:PASSWORD], or [IPV6]:AS[:PASSWORD] for an IPv6 address (in "
                  "brackets); the password is everything after the ':' that ends the AS. "
                  "Repeatable; a dual-stack neighbour once per address.")


@render.command("tor")
@click.option("--name", required=True, help="The switch's name (in comments and logs).")
@click.option("--router-id", required=True, metavar="ID", help=_ROUTER_ID_HELP)
@click.option("--as", "as_num", type=int, required=True, help="Its AS.")
@click.option("--address", "addresses", multiple=True, required=True,
              help="Its address on a rack link with prefix length, e.g. 10.1.0.1/24 or "
                   "fd10:1::1/64 (repeatable); hosts whose peers name it form its rack.")
@click.option("--uplink", "uplinks", multiple=True, metavar="NEIGHBOR",
              help="A core switch: " + _NEIGHBOR_HELP)
@click.option("--originate-default", is_flag=True, help="Originate the default route "
                                                        "(0.0.0.0/0, ::/0) itself (a "
                                                        "fabric without a core).")
@_log_option
@_file_option
@pass_ctx
def render_tor(ctx: Ctx, name, router_id, as_num, addresses, uplinks, originate_default,
               log_file, path):
    """A ToR: peers with its rack's hosts, sends them only a default route."""
    # The command line is checked before the datastore is read.
    router_id = _router_id(router_id)
    uplinks = _neighbors(uplinks, "--uplink")
    settings, pools = fabric.load(ctx.client, ctx.layout)
    _emit_config(_rendered(fabric.render_tor, settings, pools, name=name, router_id=router_id,
                           local_as=as_num, addresses=addresses, uplinks=uplinks,
                           originate_default=originate_default, log_file=log_file,
                           **_timers(ctx)), path)


@render.command("core")
@click.option("--name", required=True, help="The switch's name.")
@click.option("--router-id", required=True, metavar="ID", help=_ROUTER_ID_HELP)
@click.option("--as", "as_num", type=int, required=True, help="Its AS.")
@click.option("--tor", "tors", multiple=True, required=True, metavar="NEIGHBOR",
              help="A ToR: " + _NEIGHBOR_HELP)
@_log_option
@_file_option
@pass_ctx
def render_core(ctx: Ctx, name, router_id, as_num, tors, log_file, path):
    """A core/spine switch: takes the ToRs' workload routes, sends them a default."""
    router_id = _router_id(router_id)
    tors = _neighbors(tors, "--tor")
    _emit_config(_rendered(fabric.render_core, name=name, router_id=router_id,
                           local_as=as_num, tors=tors, log_file=log_file,
                           **_timers(ctx)), path)


@render.command("rr")
@click.argument("ip")
@click.option("--ipv6", "ip_v6", metavar="IPV6",
              help="A dual-stack reflector's IPv6 address (its rr_v6 key), IP being its "
                   "IPv4 one (rr_v4).")
@click.option("--router-id", metavar="ID",
              help="Its router id, written as an IPv4 address [IP when IP is IPv4]; "
                   "needed for an IPv6-only reflector.")
@click.option("--name", help="The reflector's name [its address].")
@_log_option
@_file_option
@pass_ctx
def render_rr(ctx: Ctx, ip, ip_v6, router_id, name, log_file, path):
    """The route reflector /calico/bgp/v1/rr_v4/IP (rr_v6/IP for an IPv6 IP): its
    cluster's hosts as clients, meshed with the other reflectors.  Dual-stack: IP the
    IPv4 address and --ipv6 the IPv6 one.  IPv6-only: IP the IPv6 address and
    --router-id."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise CtlError(f"route reflector address {ip!r} is not an IP address; give the "
                       "address of its rr_v4 (or rr_v6) key, as `felixctl bgp rr list` "
                       "shows it") from None
    if ip_v6 is not None:
        if addr.version == 6:
            raise CtlError(f"--ipv6 {ip_v6!r}: the reflector's address {ip} is IPv6 already; "
                           "for a dual-stack reflector give its IPv4 address as IP and the "
                           "IPv6 one with --ipv6, for an IPv6-only one leave out --ipv6 "
                           "(and give --router-id)")
        if not _is_ipv6(ip_v6):
            raise CtlError(f"--ipv6 {ip_v6!r} is not an IPv6 address; give the address of "
                           "the reflector's rr_v6 key, e.g. --ipv6 fd00::100")
    router_id = _router_id(router_id)
    if addr.version == 6 and router_id is None:
        raise CtlError(f"the IPv6-only route reflector {addr} needs --router-id: BIRD's "
                       "router id is a 32-bit id written as an IPv4 address (e.g. "
                       "--router-id 10.255.0.1); a dual-stack reflector takes its IPv4 "
                       "address, given as IP with --ipv6 for the IPv6 one")
    settings, _ = fabric.load(ctx.client, ctx.layout)
    _emit_config(_rendered(fabric.render_route_reflector, settings, rr_ip=ip, rr_ip_v6=ip_v6,
                           router_id=router_id, name=name, log_file=log_file,
                           **_timers(ctx)), path)
