"""The fabric's side: BIRD 2 configurations for ToR, core/spine and route-reflector switches.

The templates live in ``contrib/bird`` (Jinja2); these functions fill them from the
datastore's BGP settings, so that the switches and the hosts agree by construction:

- ``render_tor``: a ToR peers with the hosts of its rack (every host that has this ToR's
  address among its per-host peers), accepts from them only workload prefixes (the IP
  pools), sends them only a default route, and passes their routes up to its uplinks;
- ``render_core``: a core/spine peers with the ToRs, takes their workload routes and
  originates the default route they pass down;
- ``render_route_reflector``: a reflector serves the hosts of its cluster as clients and
  meshes with the other reflectors.

``load(client, layout)`` reads what they need from etcd.  Values are checked here so that
BIRD never gets a file it would refuse (``RenderError`` names the setting to fix).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
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


def _env(template_dir: Path | None) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(template_dir or TEMPLATE_DIR)),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=False, lstrip_blocks=False, autoescape=False)


def _symbol(prefix: str, text: str, taken: set[str]) -> str:
    """A BIRD protocol name: letters, digits and _, unique in the file."""
    base = f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', text)}"[:60]
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def _ipv4(value: str, what: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise RenderError(f"{what}: {value!r} is not an IP address") from None
    if ip.version != 4:
        raise RenderError(f"{what}: {value} is not IPv4 (the templates are IPv4 only)")
    return str(ip)


def _as(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4294967295:
        raise RenderError(f"{what}: AS {value!r} is out of range 1-4294967295")
    return value


def _password(value: str | None, what: str) -> str | None:
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


def _uplinks(uplinks: Iterable[tuple], prefix: str, taken: set[str]) -> list[Neighbor]:
    out = []
    for item in uplinks:
        ip, as_num, *rest = item
        pw = rest[0] if rest else None
        ip = _ipv4(ip, f"{prefix} {ip}")
        out.append(Neighbor(_symbol(prefix, ip.replace(".", "_"), taken), ip,
                            _as(int(as_num), f"{prefix} {ip}"), _password(pw, f"{prefix} {ip}"),
                            ip))
    return out


def render_tor(bgp: BgpSettings, pools: Iterable[str], *, name: str, router_id: str,
               local_as: int, addresses: Iterable[str], uplinks: Iterable[tuple] = (),
               originate_default: bool = False, hold_time: int = 9,
               graceful_restart: int = 120, log_file: str | None = None,
               template_dir: Path | None = None) -> str:
    """BIRD configuration of a ToR.

    ``addresses``: the ToR's addresses on its rack links with their prefix length
    (``"10.1.0.1/24"``); hosts whose per-host peers name one of them are its rack.
    ``uplinks``: ``(ip, as[, password])`` of the core/spine switches.  A rack host whose
    ``ip_addr_v4`` lies on the link gets a session of its own; the others (a dual-homed
    host peering from its second link) are accepted dynamically from the link's prefix.
    """
    _timers(hold_time, graceful_restart)
    router_id = _ipv4(router_id, "router id")
    local_as = _as(local_as, "ToR AS")
    links = []
    for a in addresses:
        try:
            if "/" not in a:
                raise ValueError
            links.append(ipaddress.ip_interface(a))
        except ValueError:
            raise RenderError(f"ToR address {a!r} is not an address with a prefix length "
                              "(e.g. 10.1.0.1/24)") from None
    own = {str(i.ip): i for i in links}
    taken: set[str] = set()
    hosts, dynamic = [], {}
    for host in sorted(bgp.host_peers):
        for ip, peer in sorted(bgp.host_peers[host].items()):
            if ip not in own:
                continue
            link = own[ip]
            what = f"host {host}'s peer {ip}"
            if peer.as_num != local_as:
                raise RenderError(f"{what} has AS {peer.as_num} but this ToR is AS {local_as}: "
                                  f"fix /calico/bgp/v1/host/{host}/peer_v4/{ip}")
            host_ip = bgp.host_ip_v4.get(host)
            as_num = _as(_host_as(bgp, host), f"host {host}")
            pw = _password(peer.password, what)
            if host_ip and ipaddress.ip_address(host_ip) in link.network:
                hosts.append(Neighbor(_symbol("host", host, taken), host_ip, as_num, pw, host))
            else:
                dynamic.setdefault(str(link.network), []).append((host, as_num, pw))
    ranges = []
    for net, members in sorted(dynamic.items()):
        kinds = {(a, p) for _, a, p in members}
        if len(kinds) > 1:
            raise RenderError(f"hosts {', '.join(h for h, _, _ in members)} peer with this ToR "
                              f"from {net} with different AS numbers or passwords; one dynamic "
                              "range needs them equal (or give them ip_addr_v4 on the link)")
        (as_num, pw), = kinds
        ranges.append(Neighbor(_symbol("rack", net.replace(".", "_").replace("/", "_"), taken),
                               net, as_num, pw, ", ".join(h for h, _, _ in members)))
    nets = _workload_nets(pools)
    return _env(template_dir).get_template("tor.conf.j2").render(
        name=name, router_id=router_id, local_as=local_as, hosts=hosts, ranges=ranges,
        uplinks=_uplinks(uplinks, "uplink", taken), originate_default=originate_default,
        workload_nets=nets, hold_time=hold_time, graceful_restart=graceful_restart,
        log_file=log_file)


def _workload_nets(pools: Iterable[str]) -> list[str]:
    nets = sorted({str(ipaddress.ip_network(p)) for p in pools
                   if ipaddress.ip_network(p).version == 4},
                  key=lambda n: ipaddress.ip_network(n))
    # Without pools, any IPv4 prefix but the default itself.
    return [f"{n}+" for n in nets] or ["0.0.0.0/0{1,32}"]


def render_core(*, name: str, router_id: str, local_as: int, tors: Iterable[tuple],
                originate_default: bool = True, hold_time: int = 9,
                graceful_restart: int = 120, log_file: str | None = None,
                template_dir: Path | None = None) -> str:
    """BIRD configuration of a core/spine switch; ``tors``: ``(ip, as[, password])``."""
    _timers(hold_time, graceful_restart)
    taken: set[str] = set()
    return _env(template_dir).get_template("core.conf.j2").render(
        name=name, router_id=_ipv4(router_id, "router id"), local_as=_as(local_as, "core AS"),
        tors=_uplinks(tors, "tor", taken), originate_default=originate_default,
        hold_time=hold_time, graceful_restart=graceful_restart, log_file=log_file)


def render_route_reflector(bgp: BgpSettings, *, rr_ip: str, name: str | None = None,
                           hold_time: int = 9, graceful_restart: int = 120,
                           log_file: str | None = None,
                           template_dir: Path | None = None) -> str:
    """BIRD configuration of the route reflector ``/calico/bgp/v1/rr_v4/<rr_ip>``: its
    clients are the hosts whose rr_cluster_id is its cluster_id."""
    _timers(hold_time, graceful_restart)
    rr_ip = _ipv4(rr_ip, "route reflector")
    rr = bgp.route_reflectors.get(rr_ip)
    if rr is None:
        raise RenderError(f"no route reflector {rr_ip} in the datastore: add "
                          f"/calico/bgp/v1/rr_v4/{rr_ip} with its cluster_id")
    local_as = _as(bgp.as_num or DEFAULT_AS, "global AS")
    taken: set[str] = set()
    clients = []
    for host, cluster in sorted(bgp.rr_cluster_id.items()):
        if cluster != rr.cluster_id:
            continue
        ip = bgp.host_ip_v4.get(host)
        if not ip:
            continue          # a host without a BGP address runs no BGP
        as_num = _host_as(bgp, host)
        if as_num != local_as:
            raise RenderError(f"host {host} is in AS {as_num} but its reflector is in AS "
                              f"{local_as}: route reflection is iBGP, use one AS")
        clients.append(Neighbor(_symbol("host", host, taken), _ipv4(ip, f"host {host}"),
                                as_num, None, host))
    reflectors = [Neighbor(_symbol("rr", o.replace(".", "_"), taken), _ipv4(o, "reflector"),
                           local_as, None, f"{o} (cluster {r.cluster_id})")
                  for o, r in sorted(bgp.route_reflectors.items()) if o != rr_ip]
    return _env(template_dir).get_template("route-reflector.conf.j2").render(
        name=name or rr_ip, router_id=rr_ip, local_as=local_as, cluster_id=rr.cluster_id,
        clients=clients, reflectors=reflectors, hold_time=hold_time,
        graceful_restart=graceful_restart, log_file=log_file)


def load(client, layout) -> tuple[BgpSettings, list[str]]:
    """The BGP settings and IP pools in the datastore (what the renderers need)."""
    from felix_py.datastore.syncer import decode_kv
    store = Store("")
    for prefix in (layout.dir("bgp/v1"), layout.dir("v1/ipam")):
        items, _ = client.get_prefix(prefix)
        for key, value, _rev in items:
            store.apply(decode_kv(layout, key, value))
    return store.bgp, sorted(store.pools)
