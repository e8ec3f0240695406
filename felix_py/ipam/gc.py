"""Garbage collection of leaked addresses: those whose endpoint no longer exists.

Every allocation made for a workload records its endpoint id in the block's attributes
(``endpoint``, as ``host/orchestrator/workload/endpoint``) and when it was made
(``timestamp``).  An orchestrator that dies between allocating and registering, or a
workload removed without its DEL, leaves an address whose endpoint never appears or is gone.
``collect`` frees those older than a grace period (so that an ADD still between its two
steps is left alone); allocations without an endpoint (made by hand with ``felixctl ipam
allocate``) are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from felix_py.datastore.keys import EndpointId, Kind, KeyLayoutError
from felix_py.ipam.allocator import ATTR_ENDPOINT, ATTR_TIMESTAMP, Ipam

log = logging.getLogger(__name__)

DEFAULT_MIN_AGE = 600.0


@dataclass(frozen=True)
class Leak:
    ip: str
    handle_id: str | None
    endpoint: str
    age: float | None               # seconds since allocation; None when not recorded


def _age(attrs: dict[str, str], now: datetime) -> float | None:
    try:
        then = datetime.strptime(attrs[ATTR_TIMESTAMP], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        return None
    return (now - then.replace(tzinfo=timezone.utc)).total_seconds()


def _endpoint_key(ipam: Ipam, endpoint: str) -> str | None:
    parts = endpoint.split("/")
    if len(parts) != 4:
        return None
    try:
        return ipam.layout.endpoint(EndpointId(*parts))
    except KeyLayoutError:
        return None


def existing_endpoints(ipam: Ipam) -> set[str]:
    out = set()
    for key in ipam.client.keys_with_prefix(ipam.layout.dir("v1/host")):
        try:
            pk = ipam.layout.parse(key)
        except KeyLayoutError:
            continue
        if pk.kind is Kind.ENDPOINT:
            out.add(str(pk.endpoint_id))
    return out


def find_leaks(ipam: Ipam, min_age: float = DEFAULT_MIN_AGE,
               now: datetime | None = None) -> list[Leak]:
    now = now or datetime.now(timezone.utc)
    alive = existing_endpoints(ipam)
    leaks = []
    for alloc in ipam.allocations():
        endpoint = alloc.attrs.get(ATTR_ENDPOINT)
        if not endpoint or endpoint in alive:
            continue
        age = _age(alloc.attrs, now)
        if age is not None and age < min_age:
            continue
        leaks.append(Leak(alloc.ip, alloc.handle_id, endpoint, age))
    return leaks


def collect(ipam: Ipam, min_age: float = DEFAULT_MIN_AGE, dry_run: bool = False) -> list[Leak]:
    """Free the leaked addresses (unless ``dry_run``); returns what was (or would be) freed."""
    leaks = find_leaks(ipam, min_age)
    if dry_run:
        return leaks
    freed = []
    for leak in leaks:
        # Look once more, just before freeing: the endpoint may have been registered since
        # the list was read.
        key = _endpoint_key(ipam, leak.endpoint)
        if key and ipam.client.get(key) is not None:
            continue
        if ipam.release_ips([leak.ip], handle_id=leak.handle_id):
            log.info("freed leaked address %s (handle %s, endpoint %s gone)", leak.ip,
                     leak.handle_id, leak.endpoint)
            freed.append(leak)
    return freed
