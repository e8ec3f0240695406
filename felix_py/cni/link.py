"""The kernel side of a CNI attachment: the veth pair, Calico-style.

The host end is created in the namespace the plugin runs in, named from the endpoint id;
the container end is created directly inside the container's namespace (never passing
through the host's) as ``CNI_IFNAME``, with the workload's addresses as /32 (/128), a
link-scope route to 169.254.1.1 and the default route via it.  The host end carries the
MAC ee:ee:ee:ee:ee:ee and answers ARP for 169.254.1.1 by proxy ARP; the agent routes the
workload's addresses to it.  Kernel errors become ``LinkError`` naming the interface.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.interfaces import GATEWAY_V6

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"      # gives the host end the link-local address GATEWAY_V6
GATEWAY_V4 = "169.254.1.1"
MAX_IFNAME = 15


class LinkError(Exception):
    pass


class NoNetns(LinkError):
    """The container's namespace does not exist."""


def host_ifname(eid: EndpointId, prefix: str = "cali") -> str:
    """The host end's name: the prefix and as many hex digits of a hash of the endpoint id
    as fit in 15 characters (Calico's "cali" + 11)."""
    return prefix + hashlib.sha1(str(eid).encode()).hexdigest()[:MAX_IFNAME - len(prefix)]


def routes_for(ipv4: list[str], ipv6: list[str]) -> list[dict]:
    """The routes the container gets, as CNI result entries."""
    out = []
    if ipv4:
        out.append({"dst": "0.0.0.0/0", "gw": GATEWAY_V4})
    if ipv6:
        out.append({"dst": "::/0", "gw": GATEWAY_V6})
    return out


@contextmanager
def _netns_fd(path: str) -> Iterator[int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NoNetns(f"network namespace {path} does not exist") from None
    except OSError as e:
        raise LinkError(f"cannot open network namespace {path}: {e.strerror}") from None
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def _in_netns(path: str) -> Iterator[IPRoute]:
    if not os.path.exists(path):
        raise NoNetns(f"network namespace {path} does not exist")
    # flags=0: never create the namespace (pyroute2's default would).
    ipr = IPRoute(netns=path, flags=0)
    try:
        yield ipr
    finally:
        ipr.close()


def _sysctl(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _kind(ipr: IPRoute, index: int) -> str | None:
    link = ipr.get_links(index)[0]
    info = link.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info else None


def netns_exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)


@dataclass(frozen=True)
class Attached:
    host_ifname: str
    container_mac: str


def create(host_if: str, netns: str, ifname: str, ipv4: list[str], ipv6: list[str],
           mtu: int = 1500, mac: str | None = None) -> Attached:
    """Create and configure the pair; on any failure nothing created here is left."""
    with _netns_fd(netns) as fd, IPRoute() as ipr:
        if _index(ipr, host_if) is not None:
            raise LinkError(f"host interface {host_if} already exists (a repeated ADD, or "
                            "one left by a failed DEL; DEL the container first)")
        peer = {"ifname": ifname, "net_ns_fd": fd, "mtu": mtu}
        if mac:
            peer["address"] = mac
        try:
            ipr.link("add", ifname=host_if, kind="veth", address=HOST_MAC, mtu=mtu, peer=peer)
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise LinkError(f"interface {ifname} already exists in {netns}") from None
            raise LinkError(f"cannot create veth {host_if}/{ifname}: {e}") from None
        try:
            index = _index(ipr, host_if)
            _host_side(ipr, index, host_if, bool(ipv6))
            container_mac = _container_side(netns, ifname, ipv4, ipv6)
        except BaseException:
            try:
                ipr.link("del", index=_index(ipr, host_if))
            except Exception as e:      # the original error matters more
                log.error("could not remove %s after a failed ADD: %s", host_if, e)
            raise
    return Attached(host_if, container_mac)


def _host_side(ipr: IPRoute, index: int, name: str, ipv6: bool) -> None:
    conf = f"/proc/sys/net/ipv4/conf/{name}"
    try:
        # Answer the container's ARP for 169.254.1.1 at once (no proxy delay).
        _sysctl(f"{conf}/proxy_arp", "1")
        _sysctl(f"/proc/sys/net/ipv4/neigh/{name}/proxy_delay", "0")
        _sysctl(f"{conf}/forwarding", "1")
        if ipv6:
            _sysctl(f"/proc/sys/net/ipv6/conf/{name}/proxy_ndp", "1")
            _sysctl(f"/proc/sys/net/ipv6/conf/{name}/forwarding", "1")
        ipr.link("set", index=index, state="up")
    except (OSError, NetlinkError) as e:
        raise LinkError(f"cannot configure host interface {name}: {e}") from None


def _container_side(netns: str, ifname: str, ipv4: list[str], ipv6: list[str]) -> str:
    with _in_netns(netns) as c:
        try:
            index = _index(c, ifname)
            c.link("set", index=index, state="up")
            for ip in ipv4:
                c.addr("add", index=index, address=ip, prefixlen=32)
            for ip in ipv6:
                # nodad: the address is this container's alone (IPAM says so).
                c.addr("add", index=index, address=ip, prefixlen=128, flags=0x02)
            if ipv4:
                c.route("add", dst=f"{GATEWAY_V4}/32", oif=index, scope="link")
                c.route("add", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=index)
            if ipv6:
                c.route("add", dst="::/0", gateway=GATEWAY_V6, oif=index,
                        family=socket.AF_INET6)
            return c.get_links(index)[0].get("IFLA_ADDRESS")
        except NetlinkError as e:
            raise LinkError(f"cannot configure {ifname} in {netns}: {e}") from None


def delete(host_if: str) -> bool:
    """Remove the pair by its host end, if it is there and a veth; True if removed."""
    with IPRoute() as ipr:
        index = _index(ipr, host_if)
        if index is None:
            return False
        if _kind(ipr, index) != "veth":
            log.warning("not removing %s: it is not a veth", host_if)
            return False
        try:
            ipr.link("del", index=index)
        except NetlinkError as e:
            if e.code == errno.ENODEV:      # its container went away at the same moment
                return False
            raise LinkError(f"cannot remove {host_if}: {e}") from None
        return True


def check(expected_host_if: str, netns: str, ifname: str, mac: str | None,
          addresses: list[str], routes: list[tuple[str, str | None]]) -> list[str]:
    """What is not as the ADD left it (empty when all is well)."""
    problems = []
    with IPRoute() as ipr:
        index = _index(ipr, expected_host_if)
        if index is None:
            problems.append(f"host interface {expected_host_if} is missing")
        else:
            link = ipr.get_links(index)[0]
            if link.get("IFLA_OPERSTATE") not in ("UP", "UNKNOWN"):
                problems.append(f"host interface {expected_host_if} is "
                                f"{link.get('IFLA_OPERSTATE', 'down').lower()}")
    with _in_netns(netns) as c:
        index = _index(c, ifname)
        if index is None:
            return problems + [f"interface {ifname} is missing in {netns}"]
        link = c.get_links(index)[0]
        if mac and link.get("IFLA_ADDRESS", "").lower() != mac.lower():
            problems.append(f"{ifname} has MAC {link.get('IFLA_ADDRESS')}, expected {mac}")
        have = {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in c.get_addr(index=index)}
        for cidr in addresses:
            if str(ipaddress.ip_interface(cidr)) not in have:
                problems.append(f"address {cidr} is missing on {ifname}")
        for dst, gw in routes:
            net = ipaddress.ip_network(dst)
            family = socket.AF_INET if net.version == 4 else socket.AF_INET6
            found = False
            for r in c.get_routes(family=family, oif=index):
                if r["dst_len"] != net.prefixlen or \
                        (r.get("RTA_DST") or str(net.network_address)) != str(net.network_address):
                    continue
                if gw is None or r.get("RTA_GATEWAY") == gw:
                    found = True
            if not found:
                problems.append(f"route {dst}{f' via {gw}' if gw else ''} is missing in "
                                f"{netns}")
    return problems
