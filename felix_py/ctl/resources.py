"""``felixctl apply|create|delete|get``: declarative resources from YAML or JSON files.

A file holds one or more documents (YAML ``---`` separated, or a JSON/YAML list); the
format is ``documents.py``'s.  Every document is validated, and checked against the others
and the datastore, before anything is written; then all of them are written in one etcd
transaction, so a file is applied entirely or not at all.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import yaml

from felix_py import model
from felix_py.ctl import documents
from felix_py.ctl.common import CtlError, Ctx, pass_ctx
from felix_py.ctl.documents import DocError, Resource
from felix_py.ctl.output import emit, output_option
from felix_py.datastore.client import Conflict
from felix_py.datastore.keys import EndpointId


def load(path: str) -> list[Any]:
    """The documents of a file ("-" for stdin), lists flattened, empty documents dropped."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise CtlError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise CtlError(f"{path} is not UTF-8 text ({e.reason})") from None
    stripped = text.lstrip()
    try:
        if stripped.startswith(("{", "[")):
            raw = [json.loads(text)]
        else:
            raw = list(yaml.safe_load_all(text))
    except json.JSONDecodeError as e:
        raise CtlError(f"{path} is not valid JSON: line {e.lineno} column {e.colno}: {e.msg}") \
            from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        raise CtlError(f"{path} is not valid YAML: {where}{getattr(e, 'problem', e)}") from None
    docs: list[Any] = []
    for item in raw:
        if isinstance(item, list):
            docs.extend(item)
        elif item is not None:
            docs.append(item)
    if not docs:
        raise CtlError(f"{path} holds no document")
    return docs


def _translate_all(ctx: Ctx, path: str, need_spec: bool) -> list[Resource]:
    try:
        return [documents.translate(i, doc, ctx.layout, need_spec)
                for i, doc in enumerate(load(path), 1)]
    except DocError as e:
        raise CtlError(f"{path}: {e}; nothing was written") from None


def _checked(ctx: Ctx, path: str) -> list[Resource]:
    resources = _translate_all(ctx, path, need_spec=True)
    pools = [p.cidr for p in ctx.registry.list_pools() if isinstance(p, model.Pool)]
    try:
        documents.check_references(resources, ctx.registry.list_profiles(), pools)
    except DocError as e:
        raise CtlError(f"{path}: {e}; nothing was written") from None
    return resources


def _existing(ctx: Ctx, keys: list[str]) -> set[str]:
    return {k for k in keys if ctx.client.get(k) is not None}


def _summary(verb: str, resources: list[Resource]) -> None:
    for res in resources:
        click.echo(f"{res.what}: {verb}")
    click.echo(f"{verb.capitalize()} {len(resources)} resource(s).")


@click.command()
@click.option("-f", "--filename", "path", required=True, metavar="FILE",
              help="YAML or JSON file of resources (- for stdin).")
@pass_ctx
def apply(ctx: Ctx, path):
    """Create or replace the resources in FILE, all in one transaction."""
    resources = _checked(ctx, path)
    ctx.client.atomic([p for r in resources for p in r.puts],
                      [d for r in resources for d in r.deletes])
    _summary("applied", resources)


def _create_keys(res: Resource) -> list[str]:
    """The keys that must be absent for ``create``: a settings document owns only the
    settings it names; any other resource is its first key."""
    if res.kind in ("bgpConfig", "config"):
        return [k for k, _ in res.puts]
    return res.owned[:1]


@click.command()
@click.option("-f", "--filename", "path", required=True, metavar="FILE",
              help="YAML or JSON file of resources (- for stdin).")
@pass_ctx
def create(ctx: Ctx, path):
    """Create the resources in FILE; fails, writing nothing, if any of them exists."""
    resources = _checked(ctx, path)
    for res in resources:
        if _existing(ctx, _create_keys(res)):
            raise CtlError(f"{path}: document {res.index} ({res.what}) already exists; use "
                           "`felixctl apply` to replace it; nothing was written")
    try:
        ctx.client.atomic([p for r in resources for p in r.puts],
                          [d for r in resources for d in r.deletes],
                          expect_absent=[k for r in resources for k in _create_keys(r)])
    except Conflict:
        raise CtlError(f"{path}: a resource was created by someone else meanwhile; nothing "
                       "was written") from None
    _summary("created", resources)


@click.command()
@click.option("-f", "--filename", "path", required=True, metavar="FILE",
              help="YAML or JSON file of resources (- for stdin).")
@click.option("--skip-missing", is_flag=True, help="Ignore resources that do not exist.")
@pass_ctx
def delete(ctx: Ctx, path, skip_missing):
    """Delete the resources named in FILE (metadata is enough), in one transaction."""
    resources = _translate_all(ctx, path, need_spec=False)
    deletes, deleted = [], []
    for res in resources:
        keys = list(res.owned)
        if res.kind == "endpoint":
            m = res.metadata
            keys.append(ctx.layout.endpoint_status(EndpointId(
                m["host"], m["orchestrator"], m["workload"], m["endpoint"])))
        present = _existing(ctx, res.owned)
        if not present:
            if skip_missing:
                continue
            raise CtlError(f"{path}: document {res.index} ({res.what}) does not exist; "
                           "nothing was deleted (--skip-missing ignores it)")
        deletes += keys
        deleted.append(res)
    ctx.client.atomic(deletes=deletes)
    _summary("deleted", deleted)


_KIND_ALIASES = {k.lower(): k for k in documents.KINDS} | {
    "endpoints": "endpoint", "profiles": "profile", "groups": "group", "pools": "pool",
    "ippool": "pool", "ippools": "pool", "bgppeers": "bgpPeer", "peer": "bgpPeer",
    "peers": "bgpPeer", "routereflectors": "routeReflector", "rr": "routeReflector",
    "bgp": "bgpConfig", "configs": "config"}


def _summary_of(doc: dict) -> str:
    spec, kind = doc.get("spec") or {}, doc["kind"]
    if doc.get("status", {}).get("error") or doc.get("status", {}).get("errors"):
        return "INVALID (see -o yaml)"
    if not isinstance(spec, dict):
        return str(spec)
    if kind == "endpoint":
        nets = spec.get("ipv4_nets", []) + spec.get("ipv6_nets", [])
        return f"{','.join(nets) or '-'} profiles={','.join(spec.get('profile_ids', [])) or '-'}"
    if kind == "profile":
        return (f"{len(spec.get('inbound_rules', []))} inbound, "
                f"{len(spec.get('outbound_rules', []))} outbound rules; "
                f"tags={','.join(spec.get('tags', [])) or '-'}")
    if kind == "group":
        return (f"exports={len(spec.get('exports', []))} "
                f"connections={','.join(spec.get('connections', [])) or '-'}")
    return " ".join(f"{k}={v}" for k, v in spec.items()) or "-"


@click.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "path", metavar="FILE",
              help="Print the current state of the resources named in FILE.")
@output_option
@pass_ctx
def get(ctx: Ctx, kind, names, path):
    """Print resources: all, of one KIND (and NAMEs), or those named in FILE.

    `-o yaml` prints documents that `felixctl apply -f` takes back."""
    if path and (kind or names):
        raise CtlError("give either -f FILE or KIND [NAME...], not both")
    snapshot = ctx.snapshot()
    if path:
        wanted = _translate_all(ctx, path, need_spec=False)
        docs = documents.from_snapshot(snapshot, {r.kind for r in wanted}, prefer_groups=False)
        index = {(d["kind"], documents.name_of(d["kind"], d["metadata"])): d
                 for d in docs}
        out = []
        for res in wanted:
            doc = index.get((res.kind, documents.name_of(res.kind, res.metadata)))
            if doc is None:
                raise CtlError(f"{path}: document {res.index} ({res.what}) does not exist")
            out.append(doc)
    else:
        kinds = documents.KINDS
        if kind:
            canonical = _KIND_ALIASES.get(kind.lower().replace("-", ""))
            if canonical is None:
                raise CtlError(f"unknown kind {kind!r} (one of {', '.join(documents.KINDS)})")
            kinds = (canonical,)
        out = documents.from_snapshot(snapshot, kinds)
        if names:
            out = [d for d in out if documents.name_of(d["kind"], d["metadata"]) in names]
            found = {documents.name_of(d["kind"], d["metadata"])
                     for d in out}
            missing = [n for n in names if n not in found]
            if missing:
                raise CtlError(f"no {kinds[0]} {', '.join(map(repr, missing))}")
    emit(out, ["KIND", "NAME", "SUMMARY"],
         [[d["kind"], documents.name_of(d["kind"], d["metadata"]),
           _summary_of(d)] for d in out])
