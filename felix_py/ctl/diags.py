"""``felixctl diags``: one archive with everything needed to debug a host.

It holds the kernel state of the network namespace felixctl runs in (routes, rules, ipsets,
addresses), the agent's and the BGP sessions' status, and the datastore keys that concern
the host.  A missing tool or an unreachable etcd is written into the archive and the rest
is collected anyway: diags are most needed when something is broken.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from datetime import datetime, timezone

import click

import felix_py
from felix_py import model
from felix_py.ctl.common import Ctx, local_hostname, pass_ctx
from felix_py.ctl.status import status_report
from felix_py.datastore.client import DatastoreError
from felix_py.datastore.keys import Kind

# (file name, argv): the kernel's view of this host's network.
COMMANDS = [
    ("ip-addr.txt", ["ip", "-d", "addr", "show"]),
    ("ip-route.txt", ["ip", "route", "show", "table", "all"]),
    ("ip6-route.txt", ["ip", "-6", "route", "show", "table", "all"]),
    ("ip-rule.txt", ["ip", "rule", "show"]),
    ("ip-neigh.txt", ["ip", "neigh", "show"]),
    ("iptables-legacy-save.txt", ["iptables-legacy-save", "-c"]),
    ("ip6tables-legacy-save.txt", ["ip6tables-legacy-save", "-c"]),
    ("iptables-save.txt", ["iptables-save", "-c"]),
    ("ip6tables-save.txt", ["ip6tables-save", "-c"]),
    ("ipset-save.txt", ["ipset", "save"]),
    ("sysctl.txt", ["sysctl", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding",
                    "net.ipv4.conf.all.rp_filter"]),
]
COMMAND_TIMEOUT = 30


def run_command(argv: list[str]) -> tuple[int | None, str]:
    """(exit status or None when it could not run, output)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        return None, f"{argv[0]}: not installed\n"
    except subprocess.TimeoutExpired:
        return None, f"{' '.join(argv)}: no answer within {COMMAND_TIMEOUT}s\n"
    return r.returncode, r.stdout + (f"\n--- stderr ---\n{r.stderr}" if r.stderr else "")


def host_keys(ctx: Ctx, host: str) -> dict[str, str]:
    """The datastore keys that concern ``host``: its own trees, the global settings it
    inherits, the pools and blocks it uses, and the profiles of its endpoints."""
    layout = ctx.layout
    dirs = [layout.host_dir(host), layout.felix_host_dir(host), layout.bgp_host_dir(host),
            layout.dir("ipam/v2/host", host), layout.dir("v1/config"),
            layout.dir("bgp/v1/global"), layout.dir("bgp/v1/rr_v4"),
            layout.dir("bgp/v1/rr_v6"), layout.dir("v1/ipam"), layout.dir("ipam/v2/config")]
    out: dict[str, str] = {}
    profiles: set[str] = set()
    for pk, rec, raw in ctx.snapshot(*dirs):
        out[pk.key] = raw.decode("utf-8", "replace")
        if pk.kind is Kind.ENDPOINT and isinstance(rec, model.Endpoint):
            profiles.update(rec.profile_ids)
    for pk, rec, raw in ctx.snapshot(layout.dir("ipam/v2/assignment")):
        if isinstance(rec, model.Block) and rec.host == host:
            out[pk.key] = raw.decode("utf-8", "replace")
    for name in sorted(profiles):
        for pk, _, raw in ctx.snapshot(layout.dir("v1/policy/profile", name)):
            out[pk.key] = raw.decode("utf-8", "replace")
    return dict(sorted(out.items()))


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


@click.command()
@click.option("--host", help="The host whose datastore state to include [this one].")
@click.option("--file", "path", metavar="PATH",
              help="Where to write the archive [./felix-diags-HOST-TIME.tar.gz].")
@pass_ctx
def diags(ctx: Ctx, host, path):
    """Collect routes, rules, ipsets, BGP and agent status and the host's datastore keys
    into one tar.gz archive (of the network namespace felixctl runs in)."""
    host = host or local_hostname()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    top = f"felix-diags-{host}-{stamp}"
    path = path or os.path.join(os.getcwd(), top + ".tar.gz")
    summary = [f"felix-py diagnostics for host {host}, {stamp}",
               f"felixctl {felix_py.__version__}, etcd {ctx.endpoints or '(embedded)'}, "
               f"prefix {ctx.prefix}", ""]
    with tarfile.open(path, "w:gz") as tar:
        for name, argv in COMMANDS:
            code, text = run_command(argv)
            _add(tar, f"{top}/kernel/{name}", text)
            summary.append(f"{'ok' if code == 0 else 'FAILED':6} {' '.join(argv)}"
                           + (f" (exit {code})" if code not in (0, None) else ""))
        try:
            data, text = status_report(ctx, host)
            _add(tar, f"{top}/status.json", json.dumps(data, indent=2))
            _add(tar, f"{top}/status.txt", text + "\n")
            keys = host_keys(ctx, host)
            _add(tar, f"{top}/datastore.json", json.dumps(keys, indent=2))
            summary.append(f"ok     datastore: {len(keys)} keys, agent "
                           f"{data['agent']['state']}, {len(data['bgp_peers'])} BGP peer(s)")
        except DatastoreError as e:
            summary.append(f"FAILED datastore: {e}")
            click.echo(f"Warning: no datastore state in the archive: {e}", err=True)
        _add(tar, f"{top}/SUMMARY.txt", "\n".join(summary) + "\n")
    click.echo(f"Wrote {path}")
