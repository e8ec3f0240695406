"""The fabric's side: BIRD 2 configurations for ToR, core/spine and route-reflector switches.

The templates live in ``contrib/bird`` (Jinja2); these functions fill them from the
datastore's BGP settings, so that the switches and the hosts agree by construction:

- ``render_tor``: a ToR peers with the hosts of its rack (every host that has one of this
  ToR's addresses among its per-host peers, ``peer_v4`` or ``peer_v6``), accepts from them
  only workload prefixes (the IP pools), sends them only a default route, and passes their
  routes up to its uplinks;
- ``render_core``: a core/spine peers with the ToRs, takes their workload routes and
  originates the default route they pass down;
- ``render_route_reflector``: a reflector serves the hosts of its cluster as clients and
  meshes with the other reflectors.

IPv6 is carried the way the hosts carry it (``bgp/exabgp_config.py``): one session per
peer address, with the channel of that address's family (an IPv6 peer gets an ``ipv6``
channel over IPv6, never IPv6 routes over an IPv4 session).  A dual-stack switch has a
session per family with each neighbour; each family has filters of its own (names ending
in ``6``).  A switch with no IPv6 address gets the IPv4-only file it always got.

``load(client, layout)`` reads what they need from etcd.  Values are checked here so that
BIRD never gets a file it would refuse (``RenderError`` names the setting to fix).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import jinja2

from bgp.config import DEFAULT_AS
from felix_py.calc.store import BgpSettings, Store

TEMPLATE_DIR = Path(os.environ.get("FELIX_BIRD_TEMPLATES", "")) if \
    os.environ.get("FELIX_BIRD_TEMPLATES") else \
    Path(__file__).resolve().parent.parent / "contrib" / "bird"


class RenderError(ValueError):
    """Settings a BIRD configuration cannot be rendered from."""


@dataclass(frozen=True)
class Neighbor:
    """One BGP neighbour (or range of them) in a BIRD configuration."""
    name: str                 # BIRD protocol name
    ip: str                   # address, or a prefix for a dynamic range
    as_num: int
    password: str | None = None
    description: str = ""


@dataclass(frozen=True)
class Family:
    """What differs between the IPv4 and the IPv6 half of a configuration.  The IPv4
    names carry no suffix (they are the names the IPv4-only files always had)."""
    version: int

    @property
    def suffix(self) -> str:                 # appended to filter, template and set names
        return "" if self.version == 4 else "6"

    @property
    def channel(self) -> str:
        return f"ipv{self.version}"

    @property
    def default(self) -> str:
        return "0.0.0.0/0" if self.version == 4 else "::/0"


V4, V6 = Family(4), Family(6)


@dataclass
class _Half:
    """One family's part of a configuration, as the templates read it."""
    family: Family
    neighbors: list[Neighbor] = field(default_factory=list)   # hosts / ToRs / clients
    ranges: list[Neighbor] = field(default_factory=list)      # dynamic ranges (ToR)
    uplinks: list[Neighbor] = field(default_factory=list)     # uplinks (ToR), reflectors (RR)
    workload_nets: list[str] = field(default_factory=list)
    cluster_id: str = ""
    unpeered: list[str] = field(default_factory=list)         # RR: clients without ip_addr_v6


def _render(template_dir: Path | None, template: str, **values) -> str:
    """``template`` filled with ``values``; a template that fails (one of your own,
    written for other variables, say) is a RenderError naming it."""
    where = template_dir or TEMPLATE_DIR
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(where)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=False, lstrip_blocks=False, autoescape=False)
    try:
        return env.get_template(template).render(**values)
    except jinja2.TemplateError as e:
        raise RenderError(f"template {where}/{template}: {e} (templates get: "
                          f"{', '.join(sorted(values))}; see contrib/bird and docs/bgp.md)") \
            from None


def _symbol(prefix: str, text: str, taken: set[str]) -> str:
    """A BIRD protocol name: letters, digits and _, unique in the file."""
    base = f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', text)}"[:60]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _ip(value, what: str, version: int | None = None):
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise RenderError(f"{what}: {value!r} is not an IP address") from None
    if version is not None and ip.version != version:
        raise RenderError(f"{what}: {value} is not IPv{version}")
    return ip


def check_router_id(value, what: str = "router id") -> str:
    """BIRD's router id: a 32-bit number written as an IPv4 address, IPv6 switches or not."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise RenderError(f"{what} {value!r} is not an IPv4 address: a BIRD router id is a "
                          "32-bit id written as one, on IPv6-only switches too; give e.g. the "
                          "switch's loopback IPv4 address, or any unique id such as "
                          "10.255.0.1") from None


def neighbor_ip(value, what: str):
    """An address BIRD can name as a neighbour without an interface."""
    ip = _ip(value, what)
    if getattr(ip, "scope_id", None):
        raise RenderError(f"{what}: {ip} names an interface (%{ip.scope_id}); write the "
                          "address alone, a global (or ULA) one")
    if ip.is_multicast or ip.is_unspecified:
        raise RenderError(f"{what}: {ip} cannot be a BGP neighbour")
    if ip.version == 6 and ip.is_link_local:
        raise RenderError(f"{what}: {ip} is link-local, which BIRD accepts only with an "
                          "interface; use a global (or ULA) address on the link")
    return ip


def _as(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4294967295:
        raise RenderError(f"{what}: AS {value!r} is out of range 1-4294967295")
    return value


def check_password(value: str | None, what: str) -> str | None:
    if value is not None and (not value.isascii() or not value.isprintable()
                              or set(value) & set('"\\')):
        raise RenderError(f"{what}: the password must be printable ASCII without \" or \\")
    return value


def _timers(hold_time: int, graceful_restart: int) -> None:
    if not (hold_time == 0 or 3 <= hold_time <= 65535):
        raise RenderError(f"hold time {hold_time} must be 0 or 3-65535")
    if not 0 <= graceful_restart <= 4095:
        raise RenderError(f"graceful-restart time {graceful_restart} must be 0-4095")


def _host_as(bgp: BgpSettings, host: str) -> int:
    return bgp.host_as_num.get(host, bgp.as_num or DEFAULT_AS)


def _host_ip(bgp: BgpSettings, host: str, version: int):
    """The host's ip_addr_v4 / ip_addr_v6, or None."""
    value = (bgp.host_ip_v4 if version == 4 else bgp.host_ip_v6).get(host)
    if not value:
        return None
    return _ip(value, f"host {host}'s ip_addr_v{version}: fix "
                      f"/calico/bgp/v1/host/{host}/ip_addr_v{version}", version)


def _uplinks(uplinks: Iterable[tuple], prefix: str,
             taken: set[str]) -> dict[int, list[Neighbor]]:
    """``(ip, as[, password])`` items by family.  IPv4 names are chosen first, so that
    they are the names an IPv4-only configuration has."""
    parsed = []
    for item in uplinks:
        ip, as_num, *rest = item
        pw = rest[0] if rest else None
        addr = neighbor_ip(ip, f"{prefix} {ip}")
        parsed.append((addr, as_num, pw))
    out: dict[int, list[Neighbor]] = {4: [], 6: []}
    for version in (4, 6):
        for addr, as_num, pw in parsed:
            if addr.version != version:
                continue
            ip = str(addr)
            what = f"{prefix} {ip}"
            try:
                as_num = int(as_num)
            except (TypeError, ValueError):
                raise RenderError(f"{what}: AS {as_num!r} is not a number") from None
            out[version].append(Neighbor(_symbol(prefix, ip.replace(".", "_"), taken), ip,
                                         _as(as_num, what), check_password(pw, what), ip))
    return out


def _links(addresses: Iterable[str]) -> list:
    links = []
    for a in addresses:
        try:
            if "/" not in a:
                raise ValueError
            link = ipaddress.ip_interface(a)
        except (ValueError, TypeError):
            raise RenderError(f"ToR address {a!r} is not an address with a prefix length "
                              "(e.g. 10.1.0.1/24 or fd10:1::1/64)") from None
        neighbor_ip(str(link.ip), f"ToR address {a}")
        links.append(link)
    return links


def _rack(bgp: BgpSettings, links: list, family: Family, local_as: int,
          taken: set[str]) -> tuple[list[Neighbor], list[Neighbor]]:
    """The hosts that name one of ``links``' addresses among their per-host peers of this
    family: (sessions of their own, dynamic ranges)."""
    v = family.version
    own = {i.ip: i for i in links if i.version == v}
    hosts, dynamic = [], {}
    for host in sorted(bgp.host_peers):
        for ip, peer in sorted(bgp.host_peers[host].items()):
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                continue              # not one of ours (and never a valid key)
            if addr.version != v or addr not in own:
                continue
            link = own[addr]
            what = f"host {host}'s peer {ip}"
            if peer.as_num != local_as:
                raise RenderError(f"{what} has AS {peer.as_num} but this ToR is AS {local_as}: "
                                  f"fix /calico/bgp/v1/host/{host}/peer_v{v}/{ip}")
            host_ip = _host_ip(bgp, host, v)
            as_num = _as(_host_as(bgp, host), f"host {host}")
            pw = check_password(peer.password, what)
            if host_ip is not None and host_ip in link.network:
                hosts.append(Neighbor(_symbol("host" + family.suffix, host, taken), str(host_ip),
                                      as_num, pw, host))
            else:
                dynamic.setdefault(str(link.network), []).append((host, as_num, pw))
    ranges = []
    for net, members in sorted(dynamic.items()):
        kinds = {(a, p) for _, a, p in members}
        if len(kinds) > 1:
            raise RenderError(f"hosts {', '.join(h for h, _, _ in members)} peer with this ToR "
                              f"from {net} with different AS numbers or passwords; one dynamic "
                              f"range needs them equal (or give them ip_addr_v{v} on the link)")
        (as_num, pw), = kinds
        ranges.append(Neighbor(_symbol("rack" + family.suffix,
                                       net.replace(".", "_").replace("/", "_"), taken),
                               net, as_num, pw, ", ".join(h for h, _, _ in members)))
    return hosts, ranges


def render_tor(bgp: BgpSettings, pools: Iterable[str], *, name: str, router_id: str,
               local_as: int, addresses: Iterable[str], uplinks: Iterable[tuple] = (),
               originate_default: bool = False, hold_time: int = 9,
               graceful_restart: int = 120, log_file: str | None = None,
               template_dir: Path | None = None) -> str:
    """BIRD configuration of a ToR.

    ``addresses``: the ToR's addresses on its rack links with their prefix length
    (``"10.1.0.1/24"``, ``"fd10:1::1/64"``); hosts whose per-host peers name one of them
    are its rack, over IPv4 (``peer_v4``) or IPv6 (``peer_v6``).  ``uplinks``:
    ``(ip, as[, password])`` of the core/spine switches, IPv4 or IPv6: one session each,
    in the family of its address.  A rack host whose ``ip_addr_v4`` (``ip_addr_v6``) lies
    on the link gets a session of its own; the others (a dual-homed host peering from its
    second link, a host without ``ip_addr_v6``) are accepted dynamically from the link's
    prefix.  The IPv6 half is rendered when the ToR has an IPv6 address or uplink; the
    IPv4 half unless it has IPv6 ones only.
    """
    _timers(hold_time, graceful_restart)
    router_id = check_router_id(router_id)
    local_as = _as(local_as, "ToR AS")
    links = _links(addresses)
    pools = list(pools)
    taken: set[str] = set()
    halves = {v: _Half(f) for v, f in ((4, V4), (6, V6))}
    for v, half in halves.items():
        half.neighbors, half.ranges = _rack(bgp, links, half.family, local_as, taken)
    for v, ups in _uplinks(uplinks, "uplink", taken).items():
        halves[v].uplinks = ups
    for v, half in halves.items():
        half.workload_nets = _workload_nets(pools, v)
    families = _families(halves, {i.version for i in links} | {v for v, h in halves.items()
                                                               if h.uplinks})
    for half in families:
        if not half.workload_nets:
            v = half.family.version
            raise RenderError(f"the ToR has IPv{v} sessions but the datastore has IP pools of "
                              f"the other family only, so it would accept no IPv{v} workload "
                              f"prefix from its hosts: add an IPv{v} pool (felixctl pool add) "
                              f"or leave out the ToR's IPv{v} addresses and uplinks")
    return _render(
        template_dir, "tor.conf.j2", name=name, router_id=router_id, local_as=local_as, families=families,
        originate_default=originate_default, hold_time=hold_time,
        graceful_restart=graceful_restart, log_file=log_file)


def _families(halves: dict[int, _Half], versions: set[int]) -> list[_Half]:
    """The halves to render: IPv6 where it is used, IPv4 unless only IPv6 is."""
    return [halves[v] for v in (4, 6) if v in versions or (v == 4 and 6 not in versions)]


def _workload_nets(pools: Iterable[str], version: int = 4) -> list[str]:
    """The pools of one family as a BIRD prefix set: each pool's prefix at any length from
    its own to a host route (/32, /128), which takes in its IPAM blocks whatever their
    size.  Without any pool, any prefix of the family but the default itself; with pools
    of the other family only, nothing (empty: the caller refuses to render)."""
    nets = []
    for p in pools:
        try:
            nets.append(ipaddress.ip_network(p))
        except (ValueError, TypeError):
            raise RenderError(f"pool {p!r} is not a network (fix its key under "
                              "/calico/v1/ipam/)") from None
    if not nets:
        return ["0.0.0.0/0{1,32}" if version == 4 else "::/0{1,128}"]
    return [f"{n}+" for n in sorted({n for n in nets if n.version == version})]


def render_core(*, name: str, router_id: str, local_as: int, tors: Iterable[tuple],
                originate_default: bool = True, hold_time: int = 9,
                graceful_restart: int = 120, log_file: str | None = None,
                template_dir: Path | None = None) -> str:
    """BIRD configuration of a core/spine switch; ``tors``: ``(ip, as[, password])``, one
    session each in the family of its address.  A core with IPv6 ToR sessions also
    originates (and sends them) ``::/0``."""
    _timers(hold_time, graceful_restart)
    taken: set[str] = set()
    router_id = check_router_id(router_id)
    local_as = _as(local_as, "core AS")
    halves = {v: _Half(f) for v, f in ((4, V4), (6, V6))}
    for v, ts in _uplinks(tors, "tor", taken).items():
        halves[v].neighbors = ts
    families = _families(halves, {v for v, h in halves.items() if h.neighbors})
    return _render(
        template_dir, "core.conf.j2", name=name, router_id=router_id, local_as=local_as, families=families,
        originate_default=originate_default, hold_time=hold_time,
        graceful_restart=graceful_restart, log_file=log_file)


def render_route_reflector(bgp: BgpSettings, *, rr_ip: str, rr_ip_v6: str | None = None,
                           router_id: str | None = None, name: str | None = None,
                           hold_time: int = 9, graceful_restart: int = 120,
                           log_file: str | None = None,
                           template_dir: Path | None = None) -> str:
    """BIRD configuration of the route reflector ``/calico/bgp/v1/rr_v4/<rr_ip>`` (or
    ``rr_v6/<rr_ip>``): its clients are the hosts whose rr_cluster_id is its cluster_id,
    reached at their ``ip_addr_v4`` (``ip_addr_v6``).

    A dual-stack reflector is one BIRD with two reflector keys: ``rr_ip`` its IPv4 one,
    ``rr_ip_v6`` its IPv6 one (``rr_v6/<rr_ip_v6>``); each family reflects for its own
    cluster's clients and meshes with the other reflectors of that family.  The router id
    is ``rr_ip``; an IPv6-only reflector needs ``router_id``.
    """
    _timers(hold_time, graceful_restart)
    rr_addr = neighbor_ip(rr_ip, "route reflector")
    own = {rr_addr.version: rr_addr}
    if rr_ip_v6 is not None:
        if rr_addr.version == 6:
            raise RenderError(f"route reflector {rr_addr} is already the IPv6 reflector: give "
                              "the IPv4 one as rr_ip and the IPv6 one as rr_ip_v6")
        own[6] = neighbor_ip(rr_ip_v6, "IPv6 route reflector")
        if own[6].version != 6:
            raise RenderError(f"IPv6 route reflector: {rr_ip_v6} is not IPv6")
    if router_id is None:
        if 4 not in own:
            raise RenderError(f"router id: the IPv6 route reflector {own[6]} needs an IPv4 "
                              "router id (BIRD's router id is a 32-bit id written as an IPv4 "
                              "address)")
        router_id = str(own[4])
    router_id = check_router_id(router_id)
    local_as = _as(bgp.as_num or DEFAULT_AS, "global AS")
    reflectors = {_ip(o, f"route reflector key /calico/bgp/v1/rr_v*/{o}"): r
                  for o, r in sorted(bgp.route_reflectors.items())}
    taken: set[str] = set()
    halves = []
    for v, addr in sorted(own.items()):
        rr = reflectors.get(addr)
        if rr is None:
            raise RenderError(f"no route reflector {addr} in the datastore: add "
                              f"/calico/bgp/v1/rr_v{v}/{addr} with its cluster_id")
        half = _Half(V4 if v == 4 else V6, cluster_id=rr.cluster_id)
        for host, cluster in sorted(bgp.rr_cluster_id.items()):
            if cluster != rr.cluster_id:
                continue
            if not bgp.host_ip_v4.get(host):
                continue          # a host without a BGP address runs no BGP
            ip = _host_ip(bgp, host, v)
            if ip is None:
                half.unpeered.append(host)   # no ip_addr_v6: no IPv6 session to expect
                continue
            as_num = _host_as(bgp, host)
            if as_num != local_as:
                raise RenderError(f"host {host} is in AS {as_num} but its reflector is in AS "
                                  f"{local_as}: route reflection is iBGP, use one AS")
            half.neighbors.append(Neighbor(_symbol("host" + half.family.suffix, host, taken),
                                           str(ip), as_num, None, host))
        # The other reflectors of this family, meshed (in the order of their keys).
        half.uplinks = [
            Neighbor(_symbol("rr", str(o).replace(".", "_"), taken), str(o), local_as, None,
                     f"{o} (cluster {r.cluster_id})")
            for o, r in reflectors.items() if o.version == v and o != addr]
        halves.append(half)
    return _render(
        template_dir, "route-reflector.conf.j2", name=name or str(rr_addr), router_id=router_id, local_as=local_as, families=halves,
        hold_time=hold_time, graceful_restart=graceful_restart, log_file=log_file)


def load(client, layout) -> tuple[BgpSettings, list[str]]:
    """The BGP settings and IP pools in the datastore (what the renderers need)."""
    from felix_py.datastore.syncer import decode_kv
    store = Store("")
    for prefix in (layout.dir("bgp/v1"), layout.dir("v1/ipam")):
        items, _ = client.get_prefix(prefix)
        for key, value, _rev in items:
            store.apply(decode_kv(layout, key, value))
    return store.bgp, sorted(store.pools)
