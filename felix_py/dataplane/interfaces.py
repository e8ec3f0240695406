"""Workload interfaces and the host's forwarding sysctls.

For every active local endpoint whose interface exists: the link is set up, and proxy ARP
(answering the workload's ARP for its gateway 169.254.1.1), a zero proxy delay and strict
reverse-path filtering are switched on; for an endpoint with an IPv6 address, also proxy
NDP, its zero delay and forwarding (an IPv4-only endpoint's interface is spared these three
writes, half the cost of a cold start).  Once per agent: IPv4 and IPv6 forwarding for the
host.  Each interface is configured once per ifindex (and again when its endpoint gains
an IPv6 address; losing it leaves the IPv6 settings on): a veth re-created under the same
name is configured again.  A ``DataplaneRefresh`` checks every interface and host setting
again and puts back what something else changed.

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
from typing import NamedTuple

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

# A proxy NDP entry: (ifindex, IPv6 gateway), as the kernel dumps them.
ProxyKey = tuple[int, str]


class Wanted(NamedTuple):
    """What a changed endpoint's interface needs, as its link was seen at the change."""
    index: int      # the interface's ifindex
    up: bool        # administratively up already; if not, it is set up (and configured again)
    ipv6: bool      # the endpoint has an IPv6 address: the IPv6 settings are wanted too


def interface_sysctls(name: str, ipv6: bool) -> list[tuple[str, str]]:
    out = [(f"net/ipv4/conf/{name}/proxy_arp", "1"),
           (f"net/ipv4/neigh/{name}/proxy_delay", "0"),
           (f"net/ipv4/conf/{name}/rp_filter", "1")]
    if ipv6:
        out += [(f"net/ipv6/conf/{name}/proxy_ndp", "1"),
                (f"net/ipv6/neigh/{name}/proxy_delay", "0"),
                (f"net/ipv6/conf/{name}/forwarding", "1")]
    return out


def proxied_gateways(store: Store, links: Links) -> dict[ProxyKey, str]:
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
        self._host_sysctls_written = False
        # Interfaces of changed endpoints, checked at the next apply: name -> what it needs.
        self._to_configure: dict[str, Wanted] = {}
        # Interfaces configured (since the last refresh): name -> the ifindex configured.  A
        # veth re-created under the same name has another ifindex and is configured again.
        self._configured: dict[str, int] = {}
        # Those of them whose IPv6 settings were written too (always a subset of the keys of
        # _configured, for the same ifindex).  See apply() for why an interface stays in it.
        self._ipv6_configured: set[str] = set()
        self._failed: dict[str, str] = {}               # name -> why configuring it failed
        self._endpoint_ids: dict[str, EndpointId] = {}  # name -> its endpoint, for reports
        self._proxies_want: dict[ProxyKey, str] = {}    # proxy entry -> interface name
        self._proxies_have: dict[ProxyKey, str] = {}    # likewise, those in the kernel
        # The kernel's proxy entries are read back at the next apply (at start and after a
        # refresh); meanwhile, the workload interfaces seen (ifindex -> name) say which
        # entries are on workload interfaces.
        self._read_back_proxies = True
        self._workload_interfaces: dict[int, str] = {}
        self._refresh = False

    def on_message(self, msg: object) -> None:
        if isinstance(msg, DataplaneRefresh):
            self._refresh = True

    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        if self._refresh:
            # Check every interface again (a write happens only where a value differs) and
            # read the proxy entries back: what something else changed is put back.
            self._refresh = False
            self._configured.clear()
            self._ipv6_configured.clear()
            self._host_sysctls_written = False
            self._read_back_proxies = True
            self._workload_interfaces = {}
            changes = Changes(endpoints=set(store.local_endpoints))
        if self._read_back_proxies:
            for name in links.names():
                if name.startswith(self.prefixes):
                    self._workload_interfaces[links.get(name).index] = name
        for eid in changes.endpoints:
            ep = store.local_endpoints.get(eid)
            info = links.get(ep.name) if ep is not None and ep.state == "active" else None
            if info is not None:
                self._to_configure[ep.name] = Wanted(info.index, info.up, bool(ep.ipv6_nets))
                self._endpoint_ids[ep.name] = eid
            elif ep is not None:
                # Gone or inactive: nothing to configure; the route manager reports it.
                self._to_configure.pop(ep.name, None)
                self._failed.pop(ep.name, None)
        for name, index in list(self._configured.items()):
            info = links.get(name)
            if info is None or info.index != index:
                del self._configured[name]
                self._ipv6_configured.discard(name)
        if changes.endpoints:
            self._proxies_want = proxied_gateways(store, links)

    def apply(self) -> None:
        if not self._host_sysctls_written:
            for path, value in HOST_SYSCTLS:
                self.sysctl.write(path, value)
            self._host_sysctls_written = True
        if self._read_back_proxies:
            # What the kernel holds on workload interfaces, ours or left from before.
            try:
                found = self.nl.dump_proxy_neighbours()
            except (OSError, NetlinkError) as e:
                log.warning("cannot read the proxy NDP entries back (%s); trying again at "
                            "the next change", e)
            else:
                workload = self._workload_interfaces
                self._proxies_have = {(index, ip): workload[index]
                                      for index, ip in found if index in workload}
                self._read_back_proxies = False
                self._workload_interfaces = {}
        todo = {name: want for name, want in self._to_configure.items()
                if not self._configured_as_needed(name, want)}
        self._to_configure = {}
        proxies = [("replace", k, n) for k, n in self._proxies_want.items()
                   if k not in self._proxies_have]
        proxies += [("delete", k, n) for k, n in self._proxies_have.items()
                    if k not in self._proxies_want]
        if not (todo or proxies):
            return
        # One batch; each message's tag says what failed: an interface's name for setting it
        # up, (op, proxy entry) for a proxy entry.
        msgs = [(*self.nl.link_up_message(want.index), name) for name, want in todo.items()
                if not want.up]
        msgs += [(*self.nl.neigh_message(op, *key, None, proxy=True), (op, key))
                 for op, key, _name in proxies]
        failed = self.nl.batch(msgs) if msgs else {}       # tag -> errno
        errors: dict[str, str] = {}                         # interface name -> error
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
        for name, want in todo.items():
            if failed.get(name) == errno.ENODEV:
                continue  # removed meanwhile; its link event follows
            if name in failed:
                errors[name] = f"cannot set interface {name} up: errno {failed[name]}"
                continue
            try:
                for path, value in interface_sysctls(name, want.ipv6):
                    self.sysctl.write(path, value)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as e:
                errors[name] = f"cannot configure interface {name}: {e.strerror}"
                continue
            # An interface set up for IPv6 stays so for the same ifindex, even when
            # configured again for an IPv4-only endpoint (one set down as it lost its
            # address, say): nothing here switches the IPv6 settings off, so they are still
            # in place and the endpoint regaining an address needs no writes.
            if self._configured.get(name) != want.index:
                self._ipv6_configured.discard(name)
            self._configured[name] = want.index
            if want.ipv6:
                self._ipv6_configured.add(name)
            self._failed.pop(name, None)
        self._failed.update(errors)
        if errors:
            # Keep them to configure so the next apply tries again.
            self._to_configure.update({n: todo[n] for n in errors if n in todo})
            raise DataplaneError("; ".join(list(errors.values())[:3]))

    def _configured_as_needed(self, name: str, want: Wanted) -> bool:
        """Whether the interface needs nothing: it is up and configured for this ifindex,
        with the IPv6 settings if wanted.  One set up for IPv6 also does for an endpoint
        that has lost its IPv6 address: its IPv6 settings are not switched off (only its
        proxy entry goes), and its IPv4 ones are in place, so there is nothing to write."""
        return (want.up and self._configured.get(name) == want.index
                and (not want.ipv6 or name in self._ipv6_configured))

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {self._endpoint_ids[n]: ("error", reason) for n, reason in self._failed.items()
                if n in self._endpoint_ids}

    def close(self) -> None:
        self.nl.close()
