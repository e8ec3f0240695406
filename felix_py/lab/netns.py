"""Network namespaces and veth pairs: the hosts, switches and workloads of tests and the lab.

Everything is created directly inside namespaces this process names itself; the root
namespace's interfaces, routes and rules are never touched.  ``Netns.delete()`` is safe to
call twice; ``cleanup()`` removes every namespace a run created, even after a failure.
"""

from __future__ import annotations

import itertools
import logging
import os
import shlex
import signal
import subprocess
import time

log = logging.getLogger(__name__)

_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A namespace name no other run uses: prefix, pid, counter."""
    return f"{prefix}-{os.getpid()}-{next(_counter)}"


def existing() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


class NetnsError(RuntimeError):
    pass


class Netns:
    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Netns({self.name})"

    def create(self) -> "Netns":
        _run(["ip", "netns", "add", self.name])
        self.run("ip link set lo up")
        return self

    def exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name] + argv

    def run(self, cmd: str | list[str], check: bool = True, timeout: float = 60,
            **kw) -> subprocess.CompletedProcess:
        argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
        r = subprocess.run(self.exec_argv(argv), capture_output=True, text=True,
                           timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise NetnsError(f"[{self.name}] {' '.join(argv)} failed ({r.returncode}): "
                             f"{r.stderr.strip() or r.stdout.strip()}")
        return r

    def ok(self, cmd: str | list[str], timeout: float = 30) -> bool:
        return self.run(cmd, check=False, timeout=timeout).returncode == 0

    def popen(self, argv: list[str], log_path: str | None = None, env: dict | None = None,
              **kw) -> subprocess.Popen:
        """Start a long-lived process in this namespace; stopped by ``delete()``."""
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(self.exec_argv(argv), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True, env=env, **kw)
        if log_path:
            out.close()
        self.procs.append(p)
        return p

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """End a process this object started (its whole session), by its pid."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    def pids(self) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def delete(self) -> None:
        for p in list(self.procs):
            self.stop(p)
        # Anything else still running inside was started for this namespace by us.
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.name in existing():
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    # -- addressing helpers ------------------------------------------------------------
    def addr(self, dev: str, cidr: str) -> None:
        """Add an address (IPv4 or IPv6, with its prefix length) to ``dev``.  An IPv6 one
        is added without duplicate address detection (``nodad``): the callers' addresses
        are unique by construction (the lab's plan, the tests'), and BIRD and ExaBGP can
        bind to it at once instead of after DAD."""
        self.run(["ip", "addr", "add", cidr, "dev", dev, *(["nodad"] if ":" in cidr else [])])

    def up(self, dev: str) -> None:
        self.run(f"ip link set dev {dev} up")

    def sysctl(self, name: str, value: str | int) -> None:
        self.run(f"sysctl -qw {name}={value}")

    def routes(self, *args: str) -> list[str]:
        return [ln.strip() for ln in self.run(["ip", "route", "show", *args]).stdout.splitlines()
                if ln.strip()]

    def ping(self, address: str, count: int = 1, timeout: float = 1) -> bool:
        return self.ok(f"ping -n -q -c {count} -W {timeout} {address}",
                       timeout=count * timeout + 5)


def veth(a: Netns, name_a: str, b: Netns, name_b: str) -> None:
    """A veth pair created directly inside the two namespaces."""
    _run(["ip", "link", "add", name_a, "netns", a.name, "type", "veth", "peer", "name",
          name_b, "netns", b.name])
    a.up(name_a)
    b.up(name_b)


def workload(host: Netns, name: str, host_ifname: str, ipv4: str, ns_name: str | None = None,
             mac: str | None = None) -> Netns:
    """A container Calico-style: its address as /32 on eth0, a route to 169.254.1.1 on eth0
    and the default route via it; the host side of the veth is ``host_ifname``."""
    wl = Netns(ns_name or unique_name(name)).create()
    _run(["ip", "link", "add", "eth0", "netns", wl.name, *(["address", mac] if mac else []),
          "type", "veth", "peer", "name", host_ifname, "netns", host.name])
    wl.up("eth0")
    host.up(host_ifname)
    wl.addr("eth0", f"{ipv4}/32")
    wl.run("ip route add 169.254.1.1 dev eth0 scope link")
    wl.run("ip route add default via 169.254.1.1 dev eth0")
    return wl


def mac_of(ns: Netns, dev: str) -> str:
    return ns.run(["cat", f"/sys/class/net/{dev}/address"]).stdout.strip()


def wait_for(predicate, timeout: float = 10, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
