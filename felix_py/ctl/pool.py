"""``felixctl pool``: IP pools (CIDR, masquerade, disabled, block size)."""

from __future__ import annotations

import ipaddress

import click

from felix_py import model
from felix_py.ctl import documents
from felix_py.ctl.common import CtlError, Ctx, model_error, pass_ctx
from felix_py.ctl.output import emit, output_option


def _cidr(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError as e:
        raise CtlError(f"invalid pool CIDR {text!r}: {e} (e.g. 10.65.0.0/16)") from None


@click.group()
def pool():
    """IP pools: add, remove, list."""


@pool.command()
@click.argument("cidr")
@click.option("--masquerade", is_flag=True, help="NAT traffic from the pool to outside.")
@click.option("--disabled", is_flag=True, help="Allocate no new addresses from it.")
@click.option("--block-size", type=int, help="Prefix length of the IPAM blocks carved from it.")
@pass_ctx
def add(ctx: Ctx, cidr, masquerade, disabled, block_size):
    """Add a pool, or change the flags of an existing one."""
    cidr = _cidr(cidr)
    try:
        ctx.registry.add_pool(cidr, masquerade, disabled, block_size)
    except model.ModelError as e:
        raise model_error(f"pool {cidr}", e) from None
    click.echo(f"Added pool {cidr}.")


@pool.command()
@click.argument("cidr")
@pass_ctx
def remove(ctx: Ctx, cidr):
    """Remove a pool."""
    cidr = _cidr(cidr)
    ctx.registry.remove_pool(cidr)
    click.echo(f"Removed pool {cidr}.")


@pool.command("list")
@output_option
@pass_ctx
def list_(ctx: Ctx):
    """List pools."""
    docs = documents.from_snapshot(ctx.snapshot(ctx.layout.dir("v1/ipam")), ["pool"])
    rows = []
    for d in docs:
        spec = d["spec"] if isinstance(d["spec"], dict) else {}   # invalid: whatever is stored
        rows.append([d["metadata"]["cidr"], spec.get("masquerade", False),
                     spec.get("disabled", False), spec.get("block_size"),
                     "invalid" if d.get("status") else "ok"])
    emit(docs, ["CIDR", "MASQUERADE", "DISABLED", "BLOCK SIZE", "STATE"], rows)
