"""The lab for real: ``felixctl lab up|status|ping|exec|down`` run as a user runs them.

Each test points FELIX_LAB_DIR and FELIX_STATE_DIR at its own temporary directory, so it
never meets a lab (or an embedded etcd record) of the machine's user; the lab's namespace
names carry its own id.  Whatever happens, the fixture takes the lab down.  The default
lab is tested at its default size; the dual-stack one at 2 x 2 x 2, the smallest size
with every policy case and traffic across the core.
"""

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from felix_py.lab.netns import Netns, existing, wait_for
from felix_py.lab.plan import POOL6
from felix_py.lab.state import LabState

FELIXCTL = os.path.join(os.path.dirname(sys.executable), "felixctl")


class LabCli:
    def __init__(self, root):
        self.root = str(root)
        self.lab_dir = os.path.join(self.root, "lab")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("FELIX_ETCD_ENDPOINTS", "FELIX_ETCD_PREFIX")}
        self.env.update(FELIX_LAB_DIR=self.lab_dir,
                        FELIX_STATE_DIR=os.path.join(self.root, "state"))

    def __call__(self, *args, timeout=240):
        return subprocess.run([FELIXCTL, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout)

    def popen(self, *args):
        return subprocess.Popen([FELIXCTL, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env)

    def state(self):
        return LabState.load(self.lab_dir)


@pytest.fixture
def lab():
    # Not pytest's tmp_path: the lab keeps unix sockets in its dir, whose paths are short.
    root = tempfile.mkdtemp(prefix="felix-labtest-")
    cli = LabCli(root)
    yield cli
    cli("lab", "down", timeout=120)
    shutil.rmtree(root, ignore_errors=True)


def processes_mentioning(text):
    """Running (not zombie) processes whose command line names ``text``."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            continue
        if not zombie and text.encode() in argv:
            out.append(int(pid))
    return out


def assert_all_gone(cli, state):
    """No namespace, process or file of the lab is left."""
    assert not [n for n in existing() if n.startswith(state.lab_id + "-")]
    assert not [p["pid"] for p in state.processes if state.running(p)]
    assert not processes_mentioning(cli.root)
    assert not os.path.exists(state.workdir)            # etcd's data, configs, logs
    assert not os.path.exists(state.path)
    assert not os.path.exists(os.path.join(cli.root, "state", "etcd-endpoint"))


def test_lab_default_size(lab):
    r = lab("lab", "up")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    assert len(steps) == 7 and all(ln.endswith("s)") for ln in steps), r.stdout
    state = lab.state()
    assert state.phase == "up" and len(state.namespaces) == 1 + 1 + 2 + 4 + 12

    # Route counts per tier, from `lab status` and from the switches' and hosts' kernels.
    r = lab("lab", "status", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = {n["node"]: n for n in json.loads(r.stdout)}
    eps = json.loads(lab("endpoint", "list", "-o", "json").stdout)    # the lab's own etcd
    addr = {e["metadata"]["workload"]: e["spec"]["ipv4_nets"][0].split("/")[0] for e in eps}
    host_of = {e["metadata"]["workload"]: e["metadata"]["host"] for e in eps}
    assert len(addr) == 12
    rack = {"host1": "tor1", "host2": "tor1", "host3": "tor2", "host4": "tor2"}
    for h in rack:
        n = nodes[h]
        local = {f"{a}/32" for w, a in addr.items() if host_of[w] == h}
        assert set(n["routes"]) == local and len(local) == 3, n
        assert n["default_via"] == [state.plan["hosts"][int(h[4:]) - 1]["tor_ip"]], n
        assert n["agent"]["state"] == "alive" and not n["problems"], n
        kernel = Netns(n["netns"]).run("ip -4 route show proto 98").stdout
        assert kernel.count(" dev cali") == 3 and kernel.startswith("default via"), kernel
    for tor in ("tor1", "tor2"):
        n = nodes[tor]
        inside = {w for w, a in addr.items() for p in n["routes"]
                  if ipaddress.ip_address(a) in ipaddress.ip_network(p)}
        assert inside == {w for w in addr if rack[host_of[w]] == tor}, n     # its rack only
        assert set(n["routes"]) == set(n["expected"]) and n["bgp_sessions"], n
    core = nodes["core"]
    assert set(core["routes"]) == set(nodes["tor1"]["routes"]) | set(nodes["tor2"]["routes"])
    assert len(core["routes"]) == 4 and not core["problems"]
    # Block aggregation: 12 workloads, one IPAM /26 per host, so 4 routes and no /32.
    assert all(p.endswith("/26") for p in core["routes"]), core["routes"]
    core_kernel = Netns(core["netns"]).run("ip -4 route show").stdout
    assert all(p in core_kernel for p in core["routes"]), core_kernel
    assert "7 of 7 nodes as expected" in lab("lab", "status").stdout

    # The whole matrix as expected, and the scenario holds what it claims.
    r = lab("lab", "ping")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.rstrip().splitlines()[-1] == "132 passed, 0 failed"
    pairs = {(p["from"], p["to"]): p for p in
             json.loads(lab("lab", "ping", "-o", "json").stdout)["pairs"]}
    assert len(pairs) == 132 and all(p["expected"] == p["observed"] for p in pairs.values())
    assert pairs[("h2w1", "h3w1")]["observed"]          # web <-> web, across racks
    assert pairs[("h4w3", "h1w2")]["observed"]          # web -> db primary: the export
    assert not pairs[("h1w1", "h2w2")]["observed"]      # web -> db replica
    assert not pairs[("h1w2", "h1w1")]["observed"]      # db -> web, same host
    assert pairs[("h2w2", "h3w2")]["observed"]          # db <-> db

    r = lab("lab", "exec", "h3w2", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert r.returncode == 0 and f"{addr['h3w2']}/32" in r.stdout, r.stdout + r.stderr
    r = lab("lab", "exec", "nosuch", "--", "true")
    assert r.returncode == 1 and "no node 'nosuch'" in r.stderr

    r = lab("lab", "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_all_gone(lab, state)
    r = lab("lab", "down")
    assert r.returncode == 0 and "nothing to remove" in r.stdout
    r = lab("lab", "status")
    assert r.returncode == 1 and "no lab is up" in r.stderr


def test_dual_stack_lab(lab):
    """`lab up --dual-stack` at 2 racks x 2 hosts x 2 workloads: the smallest lab with a
    rack crossing the core and every policy case (web, db primary, db replica), in both
    families."""
    r = lab("lab", "up", "--dual-stack", "--workloads-per-host", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "dual-stack" in r.stdout.splitlines()[0], r.stdout
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("[")]
    assert len(steps) == 7 and all(ln.endswith("s)") for ln in steps), r.stdout
    state = lab.state()
    assert state.phase == "up" and len(state.namespaces) == 1 + 1 + 2 + 4 + 8
    assert state.plan["dual_stack"] is True         # what status and ping read
    plan_hosts = {h["name"]: h for h in state.plan["hosts"]}

    # Every workload has an address of each family from felix-cni's IPAM, in the pools.
    eps = json.loads(lab("endpoint", "list", "-o", "json").stdout)
    assert len(eps) == 8
    addr4 = {e["metadata"]["workload"]: e["spec"]["ipv4_nets"][0].split("/")[0] for e in eps}
    addr6 = {e["metadata"]["workload"]: e["spec"]["ipv6_nets"][0].split("/")[0] for e in eps}
    host_of = {e["metadata"]["workload"]: e["metadata"]["host"] for e in eps}
    assert all(len(e["spec"]["ipv4_nets"]) == len(e["spec"]["ipv6_nets"]) == 1 for e in eps)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(POOL6) for a in addr6.values())
    r = lab("lab", "exec", "h3w2", "--", "ip", "-6", "-o", "addr", "show", "eth0")
    assert r.returncode == 0 and f"{addr6['h3w2']}/128" in r.stdout, r.stdout + r.stderr

    # Routes and sessions per family, from `lab status` and from the kernels.
    r = lab("lab", "status", "-o", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = {n["node"]: n for n in json.loads(r.stdout)}
    rack = {"host1": "tor1", "host2": "tor1", "host3": "tor2", "host4": "tor2"}
    for h, tor in rack.items():
        n, v6 = nodes[h], nodes[h]["ipv6"]
        assert not n["problems"] and not v6["problems"], n
        assert set(n["routes"]) == {f"{a}/32" for w, a in addr4.items() if host_of[w] == h}
        assert set(v6["routes"]) == {f"{a}/128" for w, a in addr6.items() if host_of[w] == h}
        assert len(v6["routes"]) == 2 and len(v6["blackholes"]) == 1, v6
        assert all(b.endswith("/122") for b in v6["blackholes"]), v6
        # One session per family, each with the ToR's address of that family.
        assert n["bgp_sessions"] == {plan_hosts[h]["tor_ip"]: "established"}, n
        assert v6["bgp_sessions"] == {plan_hosts[h]["tor_ip6"]: "established"}, v6
        assert v6["default_via"], v6
        kernel = Netns(n["netns"]).run("ip -6 route show proto 98").stdout
        assert kernel.count(" dev cali") == 2 and "default via" in kernel, kernel
        assert "blackhole" in kernel, kernel
    # Each family's sessions are the ones bgp.fabric renders with that family's channel:
    # on a ToR host_<host> (IPv4) and host6_<host> (IPv6), uplink_<the core's address>; on
    # the core tor_<the ToR's address>.
    sessions = {"tor1": ({"host_host1", "host_host2", "uplink_172_16_0_1"},
                         {"host6_host1", "host6_host2", "uplink_fd00_172_16_1__1"}),
                "tor2": ({"host_host3", "host_host4", "uplink_172_16_0_5"},
                         {"host6_host3", "host6_host4", "uplink_fd00_172_16_2__1"}),
                "core": ({"tor_172_16_0_2", "tor_172_16_0_6"},
                         {"tor_fd00_172_16_1__2", "tor_fd00_172_16_2__2"})}
    for tor in ("tor1", "tor2"):
        n, v6 = nodes[tor], nodes[tor]["ipv6"]
        assert not n["problems"] and set(v6["routes"]) == set(v6["expected"]), n
        inside = {w for w, a in addr6.items() for p in v6["routes"]
                  if ipaddress.ip_address(a) in ipaddress.ip_network(p)}
        assert inside == {w for w in addr6 if rack[host_of[w]] == tor}, v6    # its rack only
        # Two hosts and the core, in each family.
        assert len(n["bgp_sessions"]) == len(v6["bgp_sessions"]) == 3, n
        assert set(v6["bgp_sessions"].values()) == {"Established"}, v6
        assert (set(n["bgp_sessions"]), set(v6["bgp_sessions"])) == sessions[tor], n
    core, v6 = nodes["core"], nodes["core"]["ipv6"]
    assert not core["problems"] and len(v6["bgp_sessions"]) == 2, core
    assert (set(core["bgp_sessions"]), set(v6["bgp_sessions"])) == sessions["core"], core
    assert set(v6["routes"]) == set(nodes["tor1"]["ipv6"]["routes"]) | \
        set(nodes["tor2"]["ipv6"]["routes"])
    # Block aggregation in IPv6 too: one /122 per host, no /128.
    assert len(v6["routes"]) == 4 and all(p.endswith("/122") for p in v6["routes"]), v6
    assert v6["default_via"] == [""]                # originated by the core
    core_kernel = Netns(core["netns"]).run("ip -6 route show").stdout
    assert all(p in core_kernel for p in v6["routes"]), core_kernel
    r = lab("lab", "status")
    assert "7 of 7 nodes as expected" in r.stdout, r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.split()[:1] in
            (["core"], ["tor"], ["host"])]
    assert len(rows) == 14 and {row[3] for row in rows} == {"IPv4", "IPv6"}, r.stdout

    # Both matrices as expected, the IPv6 one with the same expectations as the IPv4 one.
    r = lab("lab", "ping")
    assert r.returncode == 0, r.stdout + r.stderr
    tail = r.stdout.rstrip().splitlines()[-3:]
    assert tail == ["IPv4: 56 passed, 0 failed", "IPv6: 56 passed, 0 failed",
                    "112 passed, 0 failed"], r.stdout
    pairs = json.loads(lab("lab", "ping", "-o", "json").stdout)["pairs"]
    by_family = {v: {(p["from"], p["to"]): p for p in pairs if p["family"] == v}
                 for v in (4, 6)}
    v4, v6 = by_family[4], by_family[6]
    assert len(v4) == len(v6) == 56 and len(pairs) == 112
    assert all(p["expected"] == p["observed"] for p in pairs)
    assert {k: p["expected"] for k, p in v6.items()} == {k: p["expected"] for k, p in v4.items()}
    assert v6[("h2w1", "h3w1")]["observed"]         # web <-> web, across racks (the core)
    assert v6[("h4w1", "h1w2")]["observed"]         # web -> db primary: the icmpv6 export
    assert not v6[("h1w1", "h2w2")]["observed"]     # web -> db replica
    assert not v6[("h1w2", "h1w1")]["observed"]     # db -> web, same host
    assert v6[("h2w2", "h3w2")]["observed"]         # db <-> db, across racks

    r = lab("lab", "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_all_gone(lab, state)


def _interrupt_when_agents_run(lab, sig):
    proc = lab.popen("lab", "up", "--racks", "1", "--hosts-per-rack", "1",
                     "--workloads-per-host", "1")
    try:
        wait_for(lambda: (s := lab.state()) and any(p["role"] == "agent"
                                                    for p in s.processes),
                 timeout=60, interval=0.05, what="the lab's agent started")
        state = lab.state()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err, state


def test_interrupted_build_cleans_up_after_itself(lab):
    rc, out, err, state = _interrupt_when_agents_run(lab, signal.SIGINT)
    assert rc == 1 and "cleaned up" in err, out + err
    assert_all_gone(lab, state)


def test_down_after_a_crash(lab):
    rc, out, err, state = _interrupt_when_agents_run(lab, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert [n for n in existing() if n.startswith(state.lab_id + "-")]
    r = lab("lab", "status")            # what there is, and that it is not all there
    assert r.returncode == 1 and "not completely built" in r.stderr, r.stdout + r.stderr
    assert "host1" in r.stdout, r.stdout
    r = lab("lab", "ping")
    assert r.returncode == 1 and "lab down" in r.stderr
    r = lab("lab", "up")
    assert r.returncode == 1 and "lab down" in r.stderr          # never two labs at once
    state = lab.state()             # everything it recorded before it died
    r = lab("lab", "down")
    assert r.returncode == 0, r.stdout + r.stderr
    assert_all_gone(lab, state)
