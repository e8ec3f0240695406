"""What every felixctl command shares: the datastore handle, errors, and flag parsing.

``Ctx`` is the click context object: it opens the etcd client only when a command first
needs it (so ``felixctl version`` and ``--help`` work without a datastore).  ``CtlError``
is the one-line error a command raises; ``main.FelixGroup`` turns the datastore's and the
model's own errors into it, so every failure ends as ``Error: ...`` on stderr with exit
status 1.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from functools import cached_property
from typing import Any, Callable, Iterable

import click

from felix_py import model
from felix_py.datastore.client import Conflict, EtcdClient, TlsFiles, connect
from felix_py.datastore.keys import EndpointId, KeyLayout, Kind, KeyLayoutError, ParsedKey
from felix_py.datastore.registration import Registry

DEFAULT_ORCHESTRATOR = "cli"
DEFAULT_ENDPOINT = "eth0"
CAS_ATTEMPTS = 5


class CtlError(click.ClickException):
    """A one-line error for the operator: what is wrong and what to do."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class Ctx:
    """Global options and lazily opened datastore handles."""

    def __init__(self, endpoints: str | None, tls: TlsFiles, prefix: str, output: str):
        self.endpoints = endpoints
        self.tls = tls
        self.prefix = prefix
        self.output = output

    @cached_property
    def client(self) -> EtcdClient:
        client = connect(self.endpoints, self.tls)
        click.get_current_context().call_on_close(client.close)
        return client

    @cached_property
    def layout(self) -> KeyLayout:
        return KeyLayout(self.prefix)

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.client, self.layout)

    def snapshot(self, *dirs: str) -> list[tuple[ParsedKey, Any, bytes]]:
        """Every key under the given directories (default: the whole prefix), parsed and
        decoded; a value that does not decode comes back as its ModelError."""
        out = []
        for d in dirs or (self.layout.prefix + "/",):
            for key, raw, _ in self.client.get_prefix(d)[0]:
                try:
                    pk = self.layout.parse(key)
                except KeyLayoutError:
                    continue
                try:
                    out.append((pk, model.decode(pk, raw), raw))
                except model.ModelError as e:
                    out.append((pk, e, raw))
        return out


pass_ctx = click.make_pass_decorator(Ctx)


def retry_on_conflict(fn: Callable[[], Any]) -> Any:
    """Run a read-modify-write again when someone else wrote in between."""
    for attempt in range(CAS_ATTEMPTS):
        try:
            return fn()
        except Conflict:
            if attempt == CAS_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def model_error(what: str, err: model.ModelError) -> CtlError:
    """A ModelError told in the operator's terms (what, field) instead of the etcd key."""
    where = f" field {err.field!r}:" if err.field else ""
    return CtlError(f"invalid {what}:{where} {err.message}")


# -- flag parsing ---------------------------------------------------------------------------

def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """("app=web", "tier=db") -> {"app": "web", "tier": "db"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(f"label {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_ports(text: str | None, flag: str) -> list[int | str] | None:
    """"80,443,8000:8080" -> [80, 443, "8000:8080"]; range checks are the model's."""
    if text is None:
        return None
    out: list[int | str] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item.isdigit():
            out.append(int(item))
        elif ":" in item and all(p.isdigit() for p in item.split(":", 1)):
            out.append(item)
        else:
            raise CtlError(f"{flag}: {item!r} is not a port or a range LOW:HIGH")
    if not out:
        raise CtlError(f"{flag}: no port given")
    return out


def split_nets(addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    """IP addresses or /32 and /128 networks, sorted into (ipv4_nets, ipv6_nets)."""
    v4, v6 = [], []
    for text in addresses:
        try:
            net = ipaddress.ip_network(text if "/" in text else
                                       f"{text}/{128 if ':' in text else 32}", strict=True)
        except ValueError:
            raise CtlError(f"--ip {text!r} is not an IP address") from None
        if net.prefixlen != net.max_prefixlen:
            raise CtlError(f"--ip {text!r}: a workload address is a single address "
                           f"(/{net.max_prefixlen})")
        (v4 if net.version == 4 else v6).append(str(net))
    return v4, v6


def local_hostname() -> str:
    return os.environ.get("FELIX_HOSTNAME") or socket.gethostname()


# -- finding endpoints ----------------------------------------------------------------------

def find_endpoint(ctx: Ctx, ref: str, host: str | None = None,
                  orchestrator: str | None = None) -> tuple[EndpointId, Any]:
    """An endpoint named by its full id HOST/ORCH/WORKLOAD/ENDPOINT, or by its workload
    name (narrowed by host and orchestrator) when that is unique."""
    parts = ref.split("/")
    if len(parts) == 4:
        eid = EndpointId(*parts)
        try:
            return eid, ctx.registry.get_endpoint(eid)
        except model.ModelError as e:
            return eid, e
    if len(parts) != 1 or not ref:
        raise CtlError(f"{ref!r} is neither a workload name nor HOST/ORCH/WORKLOAD/ENDPOINT")
    found = [(eid, rec) for eid, rec in ctx.registry.list_endpoints(host)
             if eid.workload == ref and (orchestrator is None or eid.orchestrator == orchestrator)]
    if not found:
        where = f" on host {host}" if host else ""
        raise CtlError(f"no workload {ref!r}{where}; see `felixctl endpoint list`")
    if len(found) > 1:
        raise CtlError(f"workload {ref!r} is ambiguous ({', '.join(str(e) for e, _ in found)}); "
                       "give HOST/ORCH/WORKLOAD/ENDPOINT or --host")
    return found[0]


def require_profiles(ctx: Ctx, profiles: Iterable[str], also_known: Iterable[str] = ()) -> None:
    """Unknown profiles are an error: an endpoint listing one would get no policy."""
    known = set(ctx.registry.list_profiles()) | set(also_known)
    missing = [p for p in profiles if p not in known]
    if missing:
        raise CtlError(f"unknown profile {', '.join(map(repr, missing))}; create it first "
                       "with `felixctl profile add` (see `felixctl profile list`)")


def profile_keys(layout: KeyLayout, name: str) -> dict[Kind, str]:
    return {k: layout.profile(k, name) for k in (Kind.PROFILE_RULES, Kind.PROFILE_TAGS,
                                                  Kind.PROFILE_LABELS)}
