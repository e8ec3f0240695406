"""This host's BGP plan, resolved from the datastore's BGP settings (pure).

``resolve(bgp, hostname)`` turns ``Store.bgp`` (everything under ``/calico/bgp/v1``) into a
``BgpPlan``: the mode, the local AS, the router id, the peers with their type and the
import policy.  Values that do not validate never get here (``felix_py.model`` rejects
them at decode); this module handles settings that are missing or contradict each other,
and says what is wrong in ``plan.problems`` so that the status can show it.  A host without
a usable ``ip_addr_v4`` gets no plan at all (``plan.enabled`` is False): it runs no BGP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from felix_py import model
from felix_py.calc.store import BgpSettings

DEFAULT_AS = 64512
DEFAULT_MODE = "downward-default"

# Peer types, as shown in the status and by `felixctl node status`.
TOR = "tor"                      # a per-host peer (/calico/bgp/v1/host/H/peer_v4/<ip>)
GLOBAL = "global"                # a peer of every host (/calico/bgp/v1/global/peer_v4/<ip>)
NODE_MESH = "node-mesh"          # another host, in node-mesh mode
ROUTE_REFLECTOR = "route-reflector"

# Import policies.
DEFAULT_ONLY = "default-only"    # downward default: 0.0.0.0/0 and ::/0, nothing else
ALL_BUT_OWN = "all-but-own"      # iBGP modes: everything except what this host announces


@dataclass(frozen=True, order=True)
class Peer:
    ip: str
    as_num: int
    peer_type: str
    password: str | None = None
    port: int | None = None

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version


@dataclass(frozen=True)
class BgpPlan:
    hostname: str
    enabled: bool
    mode: str = DEFAULT_MODE
    local_as: int = DEFAULT_AS
    router_id: str | None = None
    peers: tuple[Peer, ...] = ()
    problems: tuple[str, ...] = field(default=(), compare=False)

    @property
    def import_policy(self) -> str:
        return DEFAULT_ONLY if self.mode == "downward-default" else ALL_BUT_OWN

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset(a for a in (self.router_id,) if a)

    def peer(self, ip: str) -> Peer | None:
        for p in self.peers:
            if p.ip == ip:
                return p
        return None


def resolve(bgp: BgpSettings, hostname: str) -> BgpPlan:
    problems: list[str] = []
    router_id = bgp.host_ip_v4.get(hostname)
    if not router_id:
        return BgpPlan(hostname, enabled=False, problems=(
            f"host {hostname} has no BGP address: set /calico/bgp/v1/host/{hostname}/"
            "ip_addr_v4 to run BGP on it",))

    local_as = bgp.host_as_num.get(hostname, bgp.as_num or DEFAULT_AS)
    mode = _mode(bgp, hostname, problems)

    candidates: list[Peer] = []
    host_peers = bgp.host_peers.get(hostname, {})
    # A per-host peer replaces a global one with the same address.
    for ip, p in sorted(bgp.peers.items()):
        if ip not in host_peers:
            candidates.append(_peer(p, GLOBAL))
    for ip, p in sorted(host_peers.items()):
        candidates.append(_peer(p, TOR))

    if mode == "node-mesh":
        if bgp.node_mesh is not None and not bgp.node_mesh.enabled:
            problems.append("mode is node-mesh but /calico/bgp/v1/global/node_mesh has "
                            "enabled=false: no mesh peers (enable the mesh or change the mode)")
        else:
            for other, ip in sorted(bgp.host_ip_v4.items()):
                if other != hostname and ip:
                    other_as = bgp.host_as_num.get(other, bgp.as_num or DEFAULT_AS)
                    candidates.append(Peer(ip, other_as, NODE_MESH))
    elif mode == "route-reflector":
        cluster = bgp.rr_cluster_id.get(hostname)
        if cluster is None:
            problems.append(f"mode is route-reflector but host {hostname} has no "
                            f"rr_cluster_id: set /calico/bgp/v1/host/{hostname}/rr_cluster_id "
                            "to the cluster of its reflectors")
        else:
            rrs = [rr for rr in bgp.route_reflectors.values() if rr.cluster_id == cluster]
            if not rrs:
                problems.append(f"no route reflector serves cluster {cluster} "
                                "(/calico/bgp/v1/rr_v4/<ip> with that cluster_id)")
            for rr in sorted(rrs, key=lambda r: r.ip):
                candidates.append(Peer(rr.ip, local_as, ROUTE_REFLECTOR))
            # A reflector reaches its IPv6 clients at their ip_addr_v6 (``bgp.fabric``), so
            # it has no session for a host without one.  The host still tries its own (a
            # reflector configured by hand may accept it), but says why it may never come up.
            rrs_v6 = [rr.ip for rr in sorted(rrs, key=lambda r: r.ip)
                      if ipaddress.ip_address(rr.ip).version == 6]
            if rrs_v6 and not bgp.host_ip_v6.get(hostname):
                problems.append(
                    f"host {hostname} has no ip_addr_v6, but cluster {cluster}'s IPv6 route "
                    f"reflector(s) {', '.join(rrs_v6)} peer with their clients at their "
                    "ip_addr_v6: one configured from the datastore has no session for this "
                    "host, whose IPv6 session to it then never comes up; set /calico/bgp/v1/host/"
                    f"{hostname}/ip_addr_v6 to the host's IPv6 address")

    peers: dict[str, Peer] = {}
    for p in candidates:
        if p.ip == router_id:
            problems.append(f"peer {p.ip} ({p.peer_type}) is this host's own address: skipped")
            continue
        if p.ip in peers:
            # The same address from two sources: the first (global < ToR < mesh/RR order
            # above, a ToR peer having replaced a global one) is kept.
            problems.append(f"peer {p.ip} is configured as both {peers[p.ip].peer_type} "
                            f"and {p.peer_type}: using it as {peers[p.ip].peer_type}")
            continue
        peers[p.ip] = p
    if not peers and not problems:
        problems.append(f"host {hostname} has no BGP peers in mode {mode}")
    return BgpPlan(hostname, True, mode, local_as, router_id,
                   tuple(sorted(peers.values(), key=_ip_order)),
                   tuple(problems))


def _mode(bgp: BgpSettings, hostname: str, problems: list[str]) -> str:
    if hostname in bgp.host_mode:
        mode = bgp.host_mode[hostname]
    elif bgp.mode:
        mode = bgp.mode
    elif bgp.node_mesh is not None and bgp.node_mesh.enabled:
        # Calico's meaning of the key: with no mode set, an enabled mesh is the mode.
        return "node-mesh"
    else:
        return DEFAULT_MODE
    if mode != "node-mesh" and bgp.node_mesh is not None and bgp.node_mesh.enabled:
        problems.append(f"/calico/bgp/v1/global/node_mesh is enabled but this host's mode "
                        f"is {mode}: the mesh is not used")
    return mode


def _ip_order(p: Peer) -> tuple[int, int]:
    ip = ipaddress.ip_address(p.ip)
    return ip.version, int(ip)


def _peer(p: model.BgpPeer, peer_type: str) -> Peer:
    return Peer(p.ip, p.as_num, peer_type, p.password, p.port)
