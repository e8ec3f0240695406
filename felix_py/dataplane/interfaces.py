"""Workload interfaces and the host's forwarding sysctls.

For every active local endpoint whose interface exists: the link is set up, and proxy ARP
(answering the workload's ARP for its gateway 169.254.1.1), a zero proxy delay and strict
reverse-path filtering are switched on; for an endpoint with an IPv6 address, also proxy
NDP, its zero delay and forwarding (an IPv4-only endpoint's interface is spared these three
writes, half the cost of a cold start).  Once per agent: IPv4 and IPv6 forwarding for the
host.  Each interface is configured once per ifindex (and again when its endpoint gains
an IPv6 address): a veth re-created under the same name is configured again.  A
``DataplaneRefresh`` checks every interface and host setting again and puts back what
something else changed.

IPv6 has no proxy ARP that answers for any address: an endpoint with an IPv6 address gets a
proxy NDP entry for its IPv6 gateway on its interface, so that the host answers the
workload's neighbour solicitations for it, whatever MAC the host end has.  These entries
are kept equal to the endpoints' gateways (added, moved, removed).  At start and at each
refresh the kernel's entries on workload interfaces (named with an ``InterfacePrefix``) are
read back, so that one left by an endpoint removed while the agent was stopped goes too.
"""

from __future__ import annotations

import errno
import logging
import os

from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import Links
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane.netlink import Netlink, NetlinkError

log = logging.getLogger(__name__)

# The IPv6 gateway of a workload whose endpoint names none: felix-cni's (and Calico's), the
# link-local address that the host end's MAC ee:ee:ee:ee:ee:ee gives it.
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
GONE = (errno.ENOENT, errno.ENODEV)     # a proxy entry to delete is already gone, or its link

HOST_SYSCTLS = (("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/forwarding", "1"))


def interface_sysctls(name: str, ipv6: bool) -> list[tuple[str, str]]:
    out = [(f"net/ipv4/conf/{name}/proxy_arp", "1"),
           (f"net/ipv4/neigh/{name}/proxy_delay", "0"),
           (f"net/ipv4/conf/{name}/rp_filter", "1")]
    if ipv6:
        out += [(f"net/ipv6/conf/{name}/proxy_ndp", "1"),
                (f"net/ipv6/neigh/{name}/proxy_delay", "0"),
                (f"net/ipv6/conf/{name}/forwarding", "1")]
    return out


def proxied_gateways(store: Store, links: Links) -> dict[tuple[int, str], str]:
    """(ifindex, IPv6 gateway) -> interface name, for every active local endpoint with an
    IPv6 address whose interface exists."""
    out = {}
    for ep in store.local_endpoints.values():
        info = links.get(ep.name) if ep.state == "active" and ep.ipv6_nets else None
        if info is not None:
            out[(info.index, ep.ipv6_gateway or GATEWAY_V6)] = ep.name
    return out


class ProcSys:
    """Writes under /proc/sys (of the agent's own network namespace)."""

    def __init__(self, root: str = "/proc/sys"):
        self.root = root

    def write(self, path: str, value: str) -> None:
        """Set one value, unless it already holds it.  Plain file descriptors: Python's file
        objects made a cold start of thousands of interfaces several times slower."""
        data = value.encode()
        try:
            fd = os.open(os.path.join(self.root, path), os.O_RDWR)
        except FileNotFoundError:
            if "/ipv6/" in path:
                return  # IPv6 disabled on this host or interface: nothing to switch on
            raise
        try:
            if os.read(fd, 64).strip() != data:
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, data)
        finally:
            os.close(fd)


class InterfaceManager:
    name = "interfaces"

    def __init__(self, netlink: Netlink | None = None, sysctl: ProcSys | None = None,
                 prefixes: tuple[str, ...] = ("cali",)):
        self.nl = netlink or Netlink()
        self.sysctl = sysctl or ProcSys()
        self.prefixes = tuple(prefixes)
        self._host_done = False
        self._want: dict[str, tuple[int, bool, bool]] = {}  # name -> (ifindex, admin up, IPv6)
        self._done: dict[str, tuple[int, bool]] = {}        # name -> (ifindex, IPv6) configured
        self._failed: dict[str, str] = {}
        self._names: dict[str, EndpointId] = {}
        self._proxies_want: dict[tuple[int, str], str] = {}   # (ifindex, gateway) -> name
        self._proxies_have: dict[tuple[int, str], str] = {}
        self._read_proxies: dict[int, str] | None = {}    # ifindex -> name: read them back
        self._refresh = False

    def on_message(self, msg: object) -> None:
        if isinstance(msg, DataplaneRefresh):
            self._refresh = True

    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        if self._refresh:
            # Check every interface again (a write happens only where a value differs) and
            # read the proxy entries back: what something else changed is put back.
            self._refresh = False
            self._done.clear()
            self._host_done = False
            self._read_proxies = {}
            changes = Changes(endpoints=set(store.local_endpoints))
        if self._read_proxies is not None:
            for name in links.names():
                if name.startswith(self.prefixes):
                    self._read_proxies[links.get(name).index] = name
        for eid in changes.endpoints:
            ep = store.local_endpoints.get(eid)
            info = links.get(ep.name) if ep is not None and ep.state == "active" else None
            if info is not None:
                self._want[ep.name] = (info.index, info.up, bool(ep.ipv6_nets))
                self._names[ep.name] = eid
            elif ep is not None:
                # Gone or inactive: nothing to configure; the route manager reports it.
                self._want.pop(ep.name, None)
                self._failed.pop(ep.name, None)
        for name in list(self._done):
            info = links.get(name)
            if info is None or info.index != self._done[name][0]:
                del self._done[name]
        if changes.endpoints:
            self._proxies_want = proxied_gateways(store, links)

    def apply(self) -> None:
        if not self._host_done:
            for path, value in HOST_SYSCTLS:
                self.sysctl.write(path, value)
            self._host_done = True
        if self._read_proxies is not None:
            # What the kernel holds on workload interfaces, ours or left from before.
            try:
                found = self.nl.dump_proxy_neighbours()
            except (OSError, NetlinkError) as e:
                log.warning("cannot read the proxy NDP entries back (%s); trying again at "
                            "the next change", e)
            else:
                self._proxies_have = {(index, ip): self._read_proxies[index]
                                      for index, ip in found if index in self._read_proxies}
                self._read_proxies = None
        # Not yet configured for this ifindex, or not for IPv6 where it is needed now.
        todo = {n: v for n, v in self._want.items()
                if not v[1] or self._done.get(n) not in ((v[0], v[2]), (v[0], True))}
        self._want = {}
        proxies = [("replace", k, n) for k, n in self._proxies_want.items()
                   if k not in self._proxies_have]
        proxies += [("delete", k, n) for k, n in self._proxies_have.items()
                    if k not in self._proxies_want]
        if not (todo or proxies):
            return
        msgs = [(*self.nl.link_up_message(index), name) for name, (index, up, _) in todo.items()
                if not up]
        msgs += [(*self.nl.neigh_message(op, *key, None, proxy=True), (op, key))
                 for op, key, _name in proxies]
        failed = self.nl.batch(msgs) if msgs else {}
        errors = {}
        for op, key, name in proxies:
            code = failed.get((op, key))
            if not code or (op == "delete" and code in GONE):
                if op == "replace":
                    self._proxies_have[key] = name
                    self._failed.pop(name, None)
                else:
                    self._proxies_have.pop(key)
            elif code != errno.ENODEV:      # a link removed meanwhile: its event follows
                errors[name] = (f"cannot {'add' if op == 'replace' else 'remove'} the proxy "
                                f"NDP entry for gateway {key[1]} on {name}: errno {code}")
        for name, (index, _up, ipv6) in todo.items():
            if failed.get(name) == errno.ENODEV:
                continue  # removed meanwhile; its link event follows
            if name in failed:
                errors[name] = f"cannot set interface {name} up: errno {failed[name]}"
                continue
            try:
                for path, value in interface_sysctls(name, ipv6):
                    self.sysctl.write(path, value)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as e:
                errors[name] = f"cannot configure interface {name}: {e.strerror}"
                continue
            self._done[name] = (index, ipv6 or self._done.get(name) == (index, True))
            self._failed.pop(name, None)
        self._failed.update(errors)
        if errors:
            # Keep them wanted so the next apply tries again.
            self._want.update({n: todo[n] for n in errors if n in todo})
            raise DataplaneError("; ".join(list(errors.values())[:3]))

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {self._names[n]: ("error", reason) for n, reason in self._failed.items()
                if n in self._names}

    def close(self) -> None:
        self.nl.close()
