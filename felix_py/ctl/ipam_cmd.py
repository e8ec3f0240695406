"""``felixctl ipam``: address usage per pool and block, allocating and releasing by hand,
garbage collection of leaked addresses, releasing a decommissioned host's blocks, and the
IPAM settings (strict affinity)."""

from __future__ import annotations

import functools
import ipaddress
import uuid
from collections import Counter

import click

from felix_py.ctl.common import CtlError, Ctx, local_hostname, pass_ctx
from felix_py.ctl.output import emit, fields, output_option, table
from felix_py.datastore.keys import EndpointId
from felix_py.ipam import Ipam, IpamError, blocks, gc as ipam_gc
from felix_py.ipam.allocator import ATTR_ENDPOINT, ATTR_HOST


def _told(fn):
    """IPAM's errors are the operator's to fix: one line, exit status 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except IpamError as e:
            raise CtlError(str(e)) from None
    return wrapper


def _ipam(ctx: Ctx, host: str | None = None) -> Ipam:
    return Ipam(ctx.client, ctx.layout, host or local_hostname())


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise CtlError(f"{text!r} is not an IP address") from None


@click.group()
def ipam():
    """IP address management: show, allocate, release, gc, release-blocks, config."""


@ipam.command()
@click.option("--ip", "ip", help="Show who holds this address.")
@click.option("--handle", help="Show the addresses this handle holds.")
@click.option("--host", help="Only the blocks of this host (with --blocks).")
@click.option("--blocks", "show_blocks", is_flag=True, help="One line per block.")
@output_option
@pass_ctx
@_told
def show(ctx: Ctx, ip, handle, host, show_blocks):
    """Usage per pool (default), per block, or of one address or handle."""
    im = _ipam(ctx)
    if ip:
        alloc = im.lookup(_address(ip))
        data = {"ip": _address(ip), "allocated": alloc is not None}
        if alloc:
            data.update(block=alloc.block, block_host=alloc.block_host,
                        handle=alloc.handle_id, borrowed=alloc.borrowed, attributes=alloc.attrs)
        emit(data, text=fields(data.items()))
        return
    if handle:
        data = {"handle": handle, "addresses": im.ips_by_handle(handle)}
        if not data["addresses"]:
            raise CtlError(f"handle {handle} holds no address")
        emit(data, text=fields(data.items()))
        return
    all_blocks = list(im.blocks())
    if show_blocks:
        rows = []
        for cidr, b in sorted(all_blocks, key=lambda x: ipaddress.ip_network(x[0])):
            if host and b.host != host:
                continue
            borrowed = sum(1 for _, a in blocks.allocated(b)
                           if a.secondary.get(ATTR_HOST) not in (None, b.host))
            rows.append({"block": cidr, "host": b.host, "strict_affinity": b.strict_affinity,
                         "in_use": blocks.used_count(b), "free": blocks.free_count(b),
                         "borrowed": borrowed})
        emit(rows, ["BLOCK", "HOST", "STRICT", "IN USE", "FREE", "BORROWED BY OTHERS"],
             [list(r.values()) for r in rows])
        return
    rows = []
    for version in (4, 6):
        for pool in im.pools(version, include_disabled=True):
            net = ipaddress.ip_network(pool.cidr)
            mine = [b for c, b in all_blocks
                    if ipaddress.ip_network(c).version == version
                    and ipaddress.ip_network(c).subnet_of(net)]
            used = sum(blocks.used_count(b) for b in mine)
            try:
                total_blocks = 1 << (blocks.block_size(pool) - net.prefixlen)
            except IpamError:
                total_blocks = None
            rows.append({"pool": pool.cidr, "disabled": pool.disabled,
                         "blocks_claimed": len(mine), "blocks": total_blocks,
                         "addresses": net.num_addresses, "in_use": used,
                         "free": net.num_addresses - used})
    emit(rows, ["POOL", "DISABLED", "BLOCKS CLAIMED", "BLOCKS", "ADDRESSES", "IN USE", "FREE"],
         [list(r.values()) for r in rows])


@ipam.command()
@click.option("--host", help="Allocate as this host (default: this machine's name or "
                             "FELIX_HOSTNAME).")
@click.option("--handle", help="Handle to hold the addresses (default: a new one).")
@click.option("--ipv4", "num4", type=click.IntRange(0, 1024), default=1, show_default=True,
              help="How many IPv4 addresses.")
@click.option("--ipv6", "num6", type=click.IntRange(0, 1024), default=0, show_default=True,
              help="How many IPv6 addresses.")
@click.option("--ip", "ips", multiple=True, help="Take this address (repeatable); replaces "
                                                "--ipv4/--ipv6.")
@click.option("--pool", "pools", multiple=True, help="Only from this pool (repeatable).")
@click.option("--endpoint", help="HOST/ORCH/WORKLOAD/ENDPOINT the addresses are for: "
                                 "`ipam gc` frees them once that endpoint is gone.")
@output_option
@pass_ctx
@_told
def allocate(ctx: Ctx, host, handle, num4, num6, ips, pools, endpoint):
    """Allocate addresses by hand (for a workload registered with `endpoint add`)."""
    handle = handle or f"felixctl.{uuid.uuid4().hex}"
    attrs = {}
    if endpoint:
        if len(endpoint.split("/")) != 4:
            raise CtlError(f"--endpoint {endpoint!r} is not HOST/ORCH/WORKLOAD/ENDPOINT")
        attrs[ATTR_ENDPOINT] = str(EndpointId(*endpoint.split("/")))
    im = _ipam(ctx, host)
    if ips:
        got = []
        try:
            for ip in ips:
                got.append(im.assign_ip(_address(ip), handle, attrs))
        except BaseException:
            im.release_ips(got, handle_id=handle)
            raise
    else:
        v4 = [p for p in pools if ":" not in p]
        v6 = [p for p in pools if ":" in p]
        got = im.auto_assign(handle, num4, num6, attrs, pools4=v4 or None, pools6=v6 or None)
    data = {"handle": handle, "host": im.hostname, "addresses": got}
    emit(data, text=fields(data.items()))


@ipam.command()
@click.option("--ip", "ips", multiple=True, help="Release this address (repeatable).")
@click.option("--handle", help="Release every address this handle holds.")
@output_option
@pass_ctx
@_told
def release(ctx: Ctx, ips, handle):
    """Release addresses, by address or by handle."""
    if not ips and not handle:
        raise CtlError("give --ip ADDRESS (repeatable) or --handle ID")
    im = _ipam(ctx)
    wanted = [_address(ip) for ip in ips]
    freed = im.release_ips(wanted, handle_id=handle) if wanted else im.release_by_handle(handle)
    if not freed:
        if wanted:
            raise CtlError(f"nothing released: {', '.join(wanted)} "
                           f"{'is' if len(wanted) == 1 else 'are'} not allocated"
                           + (f" to handle {handle}" if handle else ""))
        raise CtlError(f"nothing released: handle {handle} holds no address")
    missing = [ip for ip in wanted if ip not in freed]
    emit({"released": freed, "not_allocated": missing},
         text="Released " + ", ".join(freed) + "."
         + (f" Not allocated: {', '.join(missing)}." if missing else ""))


@ipam.command("gc")
@click.option("--min-age", type=click.FloatRange(0), default=ipam_gc.DEFAULT_MIN_AGE,
              show_default=True, help="Seconds an allocation must be old before it counts "
                                      "as leaked (an ADD may be between its two steps).")
@click.option("--dry-run", is_flag=True, help="Only list what would be freed.")
@output_option
@pass_ctx
@_told
def gc_(ctx: Ctx, min_age, dry_run):
    """Free addresses whose endpoint no longer exists."""
    leaks = ipam_gc.collect(_ipam(ctx), min_age, dry_run)
    rows = [{"ip": x.ip, "handle": x.handle_id, "endpoint": x.endpoint,
             "age": None if x.age is None else round(x.age)} for x in leaks]
    if ctx.output != "table":
        emit({"dry_run": dry_run, "leaked" if dry_run else "released": rows})
        return
    verb = "Would release" if dry_run else "Released"
    click.echo(f"{verb} {len(rows)} leaked address{'es' if len(rows) != 1 else ''}.")
    if rows:
        click.echo(table(["ADDRESS", "HANDLE", "ENDPOINT (GONE)", "AGE (S)"],
                         [list(r.values()) for r in rows]))


# How each outcome of giving up a claim reads in the summary: (done, dry run).
_OUTCOMES = {
    blocks.RELEASED: ("released", "would be released"),
    blocks.UNASSIGNED: ("kept without an owner (their addresses stay allocated)",
                        "would be kept without an owner (their addresses stay allocated)"),
    blocks.IN_USE: ("still holding addresses, kept",
                    "still holding addresses (refused without --force)"),
    blocks.STALE: ("stale (gone, or another host's): only the claim removed",
                   "stale (gone, or another host's): only the claim would be removed"),
}


@ipam.command("release-blocks")
@click.option("--host", required=True, help="The decommissioned host whose blocks to release.")
@click.option("--force", is_flag=True, help="Also give up blocks that still hold addresses: "
                                            "they stay, with their addresses, without an owner.")
@click.option("--dry-run", is_flag=True, help="Only show what would be done.")
@output_option
@pass_ctx
@_told
def release_blocks(ctx: Ctx, host, force, dry_run):
    """Release the IPAM blocks of a host that is gone, so their addresses can be reused."""
    endpoints = [str(eid) for eid, _ in ctx.registry.list_endpoints(host)]
    if endpoints:
        more = ", ..." if len(endpoints) > 3 else ""
        raise CtlError(f"host {host} still has {len(endpoints)} endpoint(s) registered "
                       f"({', '.join(endpoints[:3])}{more}): a host in use keeps its blocks; "
                       f"remove them first (`felixctl endpoint list --host {host}`, "
                       "`felixctl endpoint remove`)")
    if ctx.client.get(ctx.layout.host_status(host)) is not None:
        raise CtlError(f"the agent on host {host} is running (its heartbeat is live); stop "
                       "it before releasing the host's blocks")
    im = _ipam(ctx, host)
    claimed = im.host_blocks(host)
    if not claimed:
        raise CtlError(f"host {host} holds no IPAM blocks; nothing to release (see "
                       "`felixctl ipam show --blocks`)")
    plan = {c: blocks.affinity_release(b, host, force) for c, b in claimed.items()}
    in_use = [c for c, outcome in plan.items() if outcome == blocks.IN_USE]
    if in_use and not dry_run:
        held = ", ".join(f"{c}: {blocks.used_count(claimed[c])} in use" for c in in_use)
        raise CtlError(f"host {host}: blocks still holding addresses ({held}); nothing "
                       "released. Free them first (`felixctl ipam gc` frees those whose "
                       "endpoint is gone), or give --force to keep these blocks without an "
                       "owner; --dry-run shows every block")
    done = plan if dry_run else {c: im.release_affinity(host, c, force) for c in plan}
    rows = []
    for cidr in sorted(claimed, key=ipaddress.ip_network):
        b = claimed[cidr]
        held_for = Counter(a.secondary.get(ATTR_HOST, "unknown")
                           for _, a in (blocks.allocated(b) if b else ()))
        rows.append({"block": cidr, "in_use": sum(held_for.values()),
                     "held_for": dict(held_for), "result": done[cidr]})
    counts = Counter(done.values())
    summary = f"Host {host}{', dry run' if dry_run else ''}: " + "; ".join(
        f"{counts[o]} block{'' if counts[o] == 1 else 's'} {_OUTCOMES[o][dry_run]}"
        for o in _OUTCOMES if counts[o]) + "."
    emit({"host": host, "dry_run": dry_run, "blocks": rows}, text=summary + "\n" + table(
        ["BLOCK", "IN USE", "HELD FOR HOSTS", "WOULD BE" if dry_run else "RESULT"],
        [[r["block"], r["in_use"], r["held_for"], r["result"]] for r in rows]))
    if not dry_run and counts[blocks.IN_USE]:
        raise CtlError("a block got an address while the host's blocks were being released; "
                       "it was kept: run the command again")


@ipam.command("config")
@click.option("--strict-affinity/--no-strict-affinity", default=None,
              help="Never borrow addresses from other hosts' blocks (downward default "
                   "needs it: a host announces its blocks, not single addresses).")
@click.option("--auto-allocate-blocks/--no-auto-allocate-blocks", default=None,
              help="Claim new blocks when a host's blocks are full.")
@click.option("--max-blocks-per-host", type=click.IntRange(0), default=None,
              help="Most blocks one host may claim (0: no limit).")
@output_option
@pass_ctx
@_told
def config_(ctx: Ctx, strict_affinity, auto_allocate_blocks, max_blocks_per_host):
    """Show or change the IPAM settings."""
    im = _ipam(ctx)
    changes = {k: v for k, v in (("strict_affinity", strict_affinity),
                                 ("auto_allocate_blocks", auto_allocate_blocks),
                                 ("max_blocks_per_host", max_blocks_per_host)) if v is not None}
    cfg = im.set_config(**changes) if changes else im.config()
    data = cfg.model_dump()
    emit(data, text=fields(data.items()))
