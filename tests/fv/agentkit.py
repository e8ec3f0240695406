"""Watching an agent from inside its namespace: its HTTP endpoints, its route events; TCP
listeners for connection tests; an agent with short BGP timers that finds its ExaBGP;
workloads plugged in as felix-cni does it, IPv6 pings and link-local addresses."""

import json
import subprocess
import sys
import threading
import time

from felix_py.lab.netns import wait_for
from felix_py.lab.processes import AgentProcess

_GET = """import sys, urllib.error, urllib.request
try:
    r = urllib.request.urlopen(sys.argv[1], timeout=2)
    print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""


def http_get(ns, port: int, path: str) -> str:
    """The status code on the first line, then the body."""
    return ns.run([sys.executable, "-c", _GET, f"http://127.0.0.1:{port}{path}"]).stdout


def metric(ns, port: int, name: str) -> float | None:
    """One unlabelled metric's value from /metrics, or None when it is not there."""
    for line in http_get(ns, port, "/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def route_events_during(ns, action, family: str = "-4") -> list[str]:
    """The route events (``ip -o monitor route`` lines) the kernel reports while
    ``action`` runs, and for a second after."""
    mon = subprocess.Popen(ns.exec_argv(["ip", "-o", family, "monitor", "route"]),
                           stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(mon.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(0.3)
        action()
        time.sleep(1.0)
    finally:
        mon.terminate()
        mon.wait(5)
        reader.join(5)
    return lines


_LISTENER = """
import select, socket, sys
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
socks = []
for port in map(int, sys.argv[2:]):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    s.listen(128)
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
"""


def listen(ns, ports, family: int = 4):
    """A process in ``ns`` accepting (and closing) TCP connections on ``ports``, once every
    port listens."""
    proc = ns.popen([sys.executable, "-c", _LISTENER, str(family), *map(str, ports)])
    wait_for(lambda: all(f":{p} " in ns.run(f"ss -Hltn{family}").stdout for p in ports),
             what=f"IPv{family} listeners on {ports} in {ns.name}")
    return proc


_PLUG = """import json, sys
from felix_py.cni import link
print(link.create(*json.loads(sys.argv[1])).container_mac)
"""


def plug(host, netns_factory, name, ipv4, ipv6):
    """A container plugged in as felix-cni does it (felix-cni's own kernel code, run in the
    host namespace: the host end's link-local address is the workload's IPv6 gateway);
    returns (namespace, its MAC)."""
    wl = netns_factory(name)
    mac = host.run([sys.executable, "-c", _PLUG, json.dumps(
        [f"cali{name}", f"/run/netns/{wl.name}", "eth0", ipv4, ipv6])]).stdout.strip()
    return wl, mac


def ping6(ns, dst, src=None):
    return ns.ok(["ping", "-6", "-n", "-q", "-c", "1", "-W", "1",
                  *(["-I", src] if src else []), dst], timeout=6)


def wait_link_local(ns, dev):
    """Until ``dev``'s link-local address is usable (BIRD sends it as a second next hop
    once it is)."""
    wait_for(lambda: "fe80::" in (a := ns.run(f"ip -6 addr show dev {dev} scope link").stdout)
             and "tentative" not in a, 10, what=f"{ns.name} {dev}'s link-local address")


class BgpAgent(AgentProcess):
    """An agent whose BGP sessions notice a dead peer in 3 s, for tests that stop one."""

    def start(self):
        self.env = {"FELIX_BGP_HOLD_TIME_SECS": "3", **self.env}
        return super().start()

    def exabgp_pid(self):
        for pid in self.ns.pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().rstrip(b"\0").split(b"\0")
            except OSError:
                continue
            # python -m bgp.launcher CONF, or --spare: started early, told its CONF later
            if argv[1:3] == [b"-m", b"bgp.launcher"]:
                return pid
        return None
