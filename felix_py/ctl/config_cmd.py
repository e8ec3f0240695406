"""``felixctl config``: agent settings stored in etcd, global or per host.

The values shown are the datastore's part of the precedence (host key > global key >
default); a host's environment and config file can still override them there.
"""

from __future__ import annotations

import click

from felix_py import config as config_mod
from felix_py.ctl.common import CtlError, Ctx, pass_ctx
from felix_py.ctl.output import emit, output_option


@click.group()
def config():
    """Agent settings in etcd: get, set, unset, list."""


def _text(value) -> str:
    """A default in the spelling ``config set`` takes ("tcp:22,udp:68", "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(":".join(map(str, v)) if isinstance(v, tuple) else str(v)
                        for v in value)
    return str(value)


def _stored(ctx: Ctx, host: str | None) -> tuple[dict, dict]:
    return ctx.registry.get_config(None), (ctx.registry.get_config(host) if host else {})


def _resolve(name: str, global_values: dict, host_values: dict) -> tuple[str, str]:
    """(value, source) of one setting as far as the datastore decides it."""
    if name in host_values:
        return host_values[name], "host"
    if name in global_values:
        return global_values[name], "global"
    setting = config_mod.BY_NAME.get(name)
    return (_text(setting.default) if setting else ""), "default"


def _known(name: str) -> config_mod.Setting:
    setting = config_mod.BY_NAME.get(name)
    if setting is None:
        raise CtlError(f"unknown setting {name!r}; see `felixctl config list`")
    return setting


@config.command()
@click.argument("name")
@click.option("--host", help="As seen by this host (its override, else the global value).")
@output_option
@pass_ctx
def get(ctx: Ctx, name, host):
    """Print one setting's value."""
    _known(name)
    value, source = _resolve(name, *_stored(ctx, host))
    emit({"name": name, "value": value, "source": source, "host": host}, text=value)


@config.command("set")
@click.argument("name")
@click.argument("value")
@click.option("--host", help="Set it for this host only.")
@pass_ctx
def set_(ctx: Ctx, name, value, host):
    """Set a setting, globally or for one host."""
    ctx.registry.set_config(name, value, host)
    click.echo(f"Set {name}={value} " + (f"for host {host}." if host else "globally."))


@config.command()
@click.argument("name")
@click.option("--host", help="Remove this host's override.")
@pass_ctx
def unset(ctx: Ctx, name, host):
    """Remove a setting (the host's override, or the global value)."""
    _known(name)
    ctx.registry.unset_config(name, host)
    click.echo(f"Unset {name} " + (f"for host {host}." if host else "globally."))


@config.command("list")
@click.option("--host", help="As seen by this host.")
@output_option
@pass_ctx
def list_(ctx: Ctx, host):
    """List every setting that can be stored in etcd, with its value and source."""
    global_values, host_values = _stored(ctx, host)
    names = [s.name for s in config_mod.SETTINGS if not s.local_only]
    names += sorted((set(global_values) | set(host_values)) - set(names))
    data = []
    for name in names:
        value, source = _resolve(name, global_values, host_values)
        setting = config_mod.BY_NAME.get(name)
        if setting is None:
            source += " (unknown setting)"
        data.append({"name": name, "value": value, "source": source,
                     "default": _text(setting.default) if setting else None,
                     "help": setting.help if setting else None})
    emit(data, ["NAME", "VALUE", "SOURCE", "DEFAULT"],
         [[d["name"], d["value"], d["source"], d["default"]] for d in data])
