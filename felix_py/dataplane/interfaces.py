"""Workload interfaces and the host's forwarding sysctls.

For every active local endpoint whose interface exists: the link is set up, and proxy ARP
(answering the workload's ARP for its gateway 169.254.1.1), a zero proxy delay, strict
reverse-path filtering and, for IPv6, proxy NDP and forwarding are switched on.  Once per
agent: IPv4 and IPv6 forwarding for the host.  Each interface is configured once per
ifindex: a veth re-created under the same name is configured again.
"""

from __future__ import annotations

import errno
import logging
import os

from felix_py.calc.store import Changes, Store
from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.links import Links
from felix_py.dataplane.manager import DataplaneError
from felix_py.dataplane.netlink import Netlink

log = logging.getLogger(__name__)

HOST_SYSCTLS = (("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/forwarding", "1"))


def interface_sysctls(name: str) -> list[tuple[str, str]]:
    return [(f"net/ipv4/conf/{name}/proxy_arp", "1"),
            (f"net/ipv4/neigh/{name}/proxy_delay", "0"),
            (f"net/ipv4/conf/{name}/rp_filter", "1"),
            (f"net/ipv6/conf/{name}/proxy_ndp", "1"),
            (f"net/ipv6/conf/{name}/forwarding", "1")]


class ProcSys:
    """Writes under /proc/sys (of the agent's own network namespace)."""

    def __init__(self, root: str = "/proc/sys"):
        self.root = root

    def write(self, path: str, value: str) -> None:
        full = os.path.join(self.root, path)
        try:
            with open(full, "r+") as f:
                if f.read().strip() == value:
                    return
                f.seek(0)
                f.write(value)
        except FileNotFoundError:
            if "/ipv6/" in path:
                return  # IPv6 disabled on this host or interface: nothing to switch on
            raise


class InterfaceManager:
    name = "interfaces"

    def __init__(self, netlink: Netlink | None = None, sysctl: ProcSys | None = None):
        self.nl = netlink or Netlink()
        self.sysctl = sysctl or ProcSys()
        self._host_done = False
        self._want: dict[str, tuple[int, bool]] = {}      # name -> (ifindex, admin up)
        self._done: dict[str, int] = {}                   # name -> ifindex configured
        self._failed: dict[str, str] = {}
        self._names: dict[str, EndpointId] = {}

    def on_changes(self, store: Store, changes: Changes, links: Links) -> None:
        for eid in changes.endpoints:
            ep = store.local_endpoints.get(eid)
            info = links.get(ep.name) if ep is not None and ep.state == "active" else None
            if info is not None:
                self._want[ep.name] = (info.index, info.up)
                self._names[ep.name] = eid
            elif ep is not None:
                # Gone or inactive: nothing to configure; the route manager reports it.
                self._want.pop(ep.name, None)
                self._failed.pop(ep.name, None)
        for name in list(self._done):
            info = links.get(name)
            if info is None or info.index != self._done[name]:
                del self._done[name]

    def apply(self) -> None:
        if not self._host_done:
            for path, value in HOST_SYSCTLS:
                self.sysctl.write(path, value)
            self._host_done = True
        todo = {n: v for n, v in self._want.items() if self._done.get(n) != v[0] or not v[1]}
        self._want = {}
        if not todo:
            return
        msgs = [(*self.nl.link_up_message(index), name) for name, (index, up) in todo.items()
                if not up]
        failed = self.nl.batch(msgs) if msgs else {}
        errors = {}
        for name, (index, _up) in todo.items():
            if failed.get(name) == errno.ENODEV:
                continue  # removed meanwhile; its link event follows
            if name in failed:
                errors[name] = f"cannot set interface {name} up: errno {failed[name]}"
                continue
            try:
                for path, value in interface_sysctls(name):
                    self.sysctl.write(path, value)
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as e:
                errors[name] = f"cannot configure interface {name}: {e.strerror}"
                continue
            self._done[name] = index
            self._failed.pop(name, None)
        self._failed.update(errors)
        if errors:
            # Keep them wanted so the next apply tries again.
            self._want.update({n: todo[n] for n in errors})
            raise DataplaneError("; ".join(list(errors.values())[:3]))

    def endpoint_problems(self) -> dict[EndpointId, tuple[str, str]]:
        return {self._names[n]: ("error", reason) for n, reason in self._failed.items()
                if n in self._names}

    def close(self) -> None:
        self.nl.close()
