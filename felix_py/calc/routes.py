"""What this host's routing should hold for its workloads, and what it announces (pure).

- ``workload_state``: one link-scope route per address of every active local endpoint whose
  interface exists and is up, a permanent neighbour entry where the MAC is known, and a problem for
  every endpoint that cannot be served (inactive, no interface, an address already taken).
- ``blackhole_routes``: a blackhole for every IPAM block this host owns, so an unused
  address in it is dropped here instead of looping between host and ToR.
- ``exported_prefixes``: what BGP may announce: owned blocks whole, plus /32s (/128s) of
  local workloads outside them; with no IPAM blocks, one /32 per workload address.  The BGP
  manager announces such a /32 only while its route is installed (``bgp.manager``).
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Callable

from felix_py import model
from felix_py.calc.store import Blocks, Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import LinkInfo
from felix_py.dataplane.netlink import Route


@dataclass
class WorkloadState:
    routes: dict[str, Route] = field(default_factory=dict)
    neighbours: dict[tuple[int, str], str] = field(default_factory=dict)  # (ifindex, ip) -> mac
    interfaces: dict[str, int] = field(default_factory=dict)             # name -> ifindex
    owners: dict[str, EndpointId] = field(default_factory=dict)          # address -> endpoint
    problems: dict[EndpointId, tuple[str, str]] = field(default_factory=dict)


def workload_state(local_endpoints: dict[EndpointId, model.Endpoint],
                   link: Callable[[str], LinkInfo | None]) -> WorkloadState:
    out = WorkloadState()
    owner = out.owners
    for eid in sorted(local_endpoints):       # sorted: the same owner wins every time
        ep = local_endpoints[eid]
        if ep.state != "active":
            out.problems[eid] = ("down", "endpoint is inactive")
            continue
        info = link(ep.name)
        if info is None:
            out.problems[eid] = ("down", f"interface {ep.name} does not exist")
            continue
        if not info.up:
            # The kernel holds no routes through a link that is down (the interface
            # manager sets it up; its event brings the route back).
            out.problems[eid] = ("down", f"interface {ep.name} is down")
            continue
        clash = [(n, owner[n]) for n in (*ep.ipv4_nets, *ep.ipv6_nets) if n in owner]
        if clash:
            net, other = clash[0]
            out.problems[eid] = ("error", f"address {net} is already used by endpoint {other}")
            continue
        out.interfaces[ep.name] = info.index
        for net in (*ep.ipv4_nets, *ep.ipv6_nets):
            owner[net] = eid
            out.routes[net] = Route(net, oif=info.index, scope="link")
            if ep.mac:
                out.neighbours[(info.index, net.split("/")[0])] = ep.mac
    return out


def owned_blocks(store: Store) -> list[str]:
    """The CIDRs of the IPAM blocks affine to this host, sorted.  Taken from the store's
    index of them, in time proportional to this host's blocks; where ``store.blocks`` is
    not an index for this host (something put another dict in its place, or changed the
    hostname) every block of the cluster is looked at instead."""
    blocks = store.blocks
    if type(blocks) is Blocks and blocks.host == store.hostname:
        return sorted(blocks.mine)
    return sorted(cidr for cidr, block in blocks.items() if block.host == store.hostname)


def blackhole_routes(store: Store) -> dict[str, Route]:
    return {cidr: Route(cidr, kind="blackhole") for cidr in owned_blocks(store)}


def exported_prefixes(store: Store) -> set[str]:
    """Runs on every batch that touches endpoints: the owned blocks come from the store's
    index of them (``owned_blocks``), addresses are compared as integers, since
    ``ipaddress`` objects for thousands of them cost tens of milliseconds, and each is
    looked up among the blocks by bisection."""
    blocks = [ipaddress.ip_network(c) for c in owned_blocks(store)]
    out = {str(b) for b in blocks}
    spans = {4: [], 6: []}          # family -> (first, last) address of each block
    for b in blocks:
        spans[b.version].append((int(b.network_address), int(b.broadcast_address)))
    covered = {family: _Covered(s) for family, s in spans.items()}
    for ep in store.local_endpoints.values():
        if ep.state != "active":
            continue
        for family, nets in ((4, ep.ipv4_nets), (6, ep.ipv6_nets)):
            for net in nets:
                if not covered[family].holds(net, family):
                    out.add(net)
    return out


class _Covered:
    """The addresses within any of some (first, last) spans, merged into disjoint runs so
    that one bisection finds the only run an address could be in.  Endpoints' networks are
    single addresses (/32, /128), so lying within the merged runs is lying within a block."""

    def __init__(self, spans: list[tuple[int, int]]):
        self.firsts: list[int] = []
        self.lasts: list[int] = []
        for first, last in sorted(spans):
            if self.lasts and first <= self.lasts[-1] + 1:
                self.lasts[-1] = max(self.lasts[-1], last)
            else:
                self.firsts.append(first)
                self.lasts.append(last)

    def holds(self, net: str, family: int) -> bool:
        """Whether ``net`` (a validated "address/length") lies within the runs."""
        if not self.firsts:
            return False
        addr, length = net.split("/")
        bits = 32 if family == 4 else 128
        first = int.from_bytes(socket.inet_pton(
            socket.AF_INET if family == 4 else socket.AF_INET6, addr), "big")
        last = first | ((1 << (bits - int(length))) - 1)
        i = bisect.bisect_right(self.firsts, first) - 1
        return i >= 0 and last <= self.lasts[i]
