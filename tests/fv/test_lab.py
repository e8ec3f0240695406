"""The lab for real: ``felixctl lab up|status|ping|exec|down`` run as a user runs them.

Each test points FELIX_LAB_DIR and FELIX_STATE_DIR at its own temporary directory, so it
never meets a lab (or an embedded etcd record) of the machine's user; the lab's namespace
names carry its own id.  Whatever happens, the fixture takes the lab down.
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
