"""How felixctl prints: tables for people, ``-o json|yaml`` for scripts.

A command builds its result as plain data (lists and dicts) and says how that data looks
as a table; ``emit`` prints one or the other.  ``-o`` is accepted both on the top-level
group and on each command that prints data (``felixctl -o json endpoint list`` and
``felixctl endpoint list -o json`` are the same).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import click
import yaml
from tabulate import tabulate

from felix_py.ctl.common import Ctx

FORMATS = ("table", "json", "yaml")
NONE = "-"


def _set_output(ctx: click.Context, _param, value):
    if value is not None:
        ctx.find_object(Ctx).output = value
    return value


def output_option(f):
    return click.option("-o", "--output", type=click.Choice(FORMATS), default=None,
                        expose_value=False, callback=_set_output,
                        help="table (default), json or yaml.")(f)


def fmt() -> str:
    return click.get_current_context().find_object(Ctx).output


def cell(value: Any) -> str:
    """One table cell: lists joined by commas, dicts as k=v, nothing as "-"."""
    if value is None or value == "" or value == [] or value == {}:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def dump(data: Any, form: str) -> str:
    if form == "json":
        return json.dumps(data, indent=2, sort_keys=False)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def emit(data: Any, headers: Sequence[str] | None = None,
         rows: Iterable[Sequence[Any]] | None = None, text: str | None = None) -> None:
    """Print ``data`` as JSON/YAML, or as a table of ``rows`` (or ``text``) by default."""
    form = fmt()
    if form != "table":
        click.echo(dump(data, form))
    elif text is not None:
        click.echo(text)
    else:
        click.echo(table(headers or (), rows or ()))


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    return tabulate([[cell(v) for v in row] for row in rows], headers=list(headers),
                    tablefmt="simple", disable_numparse=True)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column "Name: value" block for ``show`` commands."""
    return tabulate([[f"{k}:", cell(v)] for k, v in pairs], tablefmt="plain",
                    disable_numparse=True)
