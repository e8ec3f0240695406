"""Building and removing the lab: a downward-default fabric in network namespaces.

``build(plan, state, say)`` makes, in order, each step reported through ``say``:

1. the management network: a namespace with a bridge and the embedded etcd on it;
2. the datastore: IP pool, AS numbers, BGP mode, every host's BGP address and ToR peer,
   the two security groups and their export;
3. the fabric's wiring: core, ToR and host namespaces, point-to-point links core<->ToR
   and ToR<->host, each host's management veth;
4. the switches: BIRD on the core and every ToR, configured by ``bgp.fabric`` from the
   datastore;
5. the agents: felix-py (with ExaBGP) in every host namespace, talking to etcd over the
   management network;
6. the workloads: a namespace each, plugged in by felix-cni exactly as a container runtime
   does (CNI ADD: address from IPAM, veth, endpoint registered);
7. convergence: every host has its default route, every switch holds its routes, every
   endpoint is reported up.

A dual-stack plan adds IPv6 to steps 2-7: the IPv6 pool, every host's ``ip_addr_v6`` and
``peer_v6`` (its ToR's IPv6 address), an icmpv6 export beside the icmp one; IPv6 addresses
and forwarding on the fabric links; BIRD sessions of both families (``bgp.fabric`` renders
them from the same datastore); workloads given an IPv6 address too by felix-cni's IPAM
(``assign_ipv6``); convergence in both families.

Every namespace is recorded in the state file before it is created and every process
right after it starts, so ``teardown(state)`` removes all of it, however far the build got.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from bgp import fabric as bird_conf
from bgp.lab import Bird
from felix_py.datastore import client as client_mod
from felix_py.datastore.client import EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd, EmbeddedEtcdError
from felix_py.datastore.keys import KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.lab import observe
from felix_py.lab.netns import Netns, existing, veth
from felix_py.lab.plan import (EXPORTS, GROUPS, HOST_AS, MGMT_BRIDGE, MGMT_NET, POOL, POOL6,
                               Plan, address_of)
from felix_py.lab.processes import AgentProcess
from felix_py.lab.state import LabState
from policy import groups

PREFIX = "/calico"
CNI_NETWORK = "lab"
# The agents' heartbeat: every 2s, gone 10s after an agent stops.
AGENT_ENV = {"FELIX_REPORTING_INTERVAL_SECS": "2", "FELIX_REPORTING_TTL_SECS": "10"}

Say = Callable[..., None]


class LabError(RuntimeError):
    """The lab could not be built (the message says which step and why)."""


def cni_plugin() -> str:
    """felix-cni as installed beside this Python (a container runtime would find it in
    its CNI_PATH)."""
    beside = os.path.join(os.path.dirname(sys.executable), "felix-cni")
    found = beside if os.access(beside, os.X_OK) else shutil.which("felix-cni")
    if not found:
        raise LabError("felix-cni is not installed beside this Python; reinstall felix-py "
                       "(pip install -e .)")
    return found


class Builder:
    def __init__(self, plan: Plan, state: LabState, timeout: float):
        self.plan, self.state, self.timeout = plan, state, timeout
        self.notes: list[str] = []          # printed after the step's progress line
        self.workdir = state.workdir
        self.ns: dict[str, Netns] = {}
        self.client: EtcdClient | None = None
        self.layout = KeyLayout(PREFIX)

    # -- helpers -------------------------------------------------------------------------
    def netns(self, node: str) -> Netns:
        name = self.plan.netns(node)
        self.state.add_namespace(name)
        self.ns[node] = Netns(name).create()
        return self.ns[node]

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    # -- the steps -----------------------------------------------------------------------
    def steps(self):
        p = self.plan
        dual = p.dual_stack
        return [
            (f"management network: etcd at {p.etcd_url}", self.management),
            ("datastore: pools (IPv4, IPv6), BGP settings of both families, security groups"
             if dual else "datastore: pool, BGP settings, security groups", self.datastore),
            (f"wiring: core, {len(p.tors)} ToR(s), {len(p.hosts)} host(s)"
             + (", IPv4 and IPv6 on every link" if dual else ""), self.wiring),
            ("switches: BIRD on the core and the ToRs", self.switches),
            (f"agents: felix-py and ExaBGP on {len(p.hosts)} host(s)", self.agents),
            (f"workloads: {len(p.workloads)} via felix-cni"
             + (", an IPv4 and an IPv6 address each" if dual else ""), self.workloads),
            ("BGP convergence" + (" (IPv4 and IPv6)" if dual else ""), self.converge),
        ]

    def management(self) -> None:
        ns = self.netns("mgmt")
        ns.run(["ip", "link", "add", MGMT_BRIDGE, "type", "bridge"])
        ns.up(MGMT_BRIDGE)
        ns.addr(MGMT_BRIDGE, f"{self.plan.etcd_ip}/{MGMT_NET.prefixlen}")
        etcd = EmbeddedEtcd(data_dir=self.path("etcd"), host=self.plan.etcd_ip, netns=ns.name)
        self.state.etcd = {"url": self.plan.etcd_url, "unix": etcd.unix_endpoint,
                           "data_dir": etcd.data_dir}
        self.state.save()
        try:
            etcd.start()
        except EmbeddedEtcdError as e:
            raise LabError(f"{e}:\n{_tail(etcd.log_path)}") from None
        finally:
            if etcd.pid:
                self.state.add_process("etcd", etcd.pid, ns.name)
        self.client = EtcdClient(etcd.unix_endpoint)
        self._record_endpoint(etcd.unix_endpoint)

    def _record_endpoint(self, endpoint: str) -> None:
        """Point plain ``felixctl`` at the lab's etcd, unless another etcd is recorded."""
        record = client_mod.EMBEDDED_RECORD
        if os.path.exists(record):
            self.notes.append(f"note: {record} names another etcd; reach the lab's with "
                              f"--etcd-endpoints {endpoint}")
            return
        os.makedirs(os.path.dirname(record), exist_ok=True)
        with open(record, "w", encoding="utf-8") as f:
            f.write(endpoint + "\n")
        self.state.record = record
        self.state.save()

    def datastore(self) -> None:
        reg = Registry(self.client, self.layout)
        reg.mark_ready()
        dual = self.plan.dual_stack
        reg.add_pool(POOL)
        if dual:
            reg.add_pool(POOL6)
        reg.set_as_number(HOST_AS)
        reg.set_bgp_mode("downward-default")
        for h in self.plan.hosts:
            reg.set_host_bgp_address(h.name, h.bgp_ip)
            reg.add_bgp_peer(h.tor_ip, h.tor_as, host=h.name)
            if dual:
                reg.set_host_bgp_address(h.name, h.bgp_ip6, 6)
                reg.add_bgp_peer(h.tor_ip6, h.tor_as, host=h.name)
        for name in GROUPS:
            rules, tags = groups.new_group(name)
            for export in (EXPORTS[v] for v in self.plan.versions):
                if name == export["group"]:
                    rules = groups.add_export(rules, name, export["to_group"],
                                              selector=export["selector"],
                                              protocol=export["protocol"])
            reg.set_profile(name, rules=rules, tags=tags)

    def wiring(self) -> None:
        p = self.plan
        for node in [p.core.name, *(t.name for t in p.tors), *(h.name for h in p.hosts)]:
            self.netns(node)
        for node in [p.core.name, *(t.name for t in p.tors)]:
            self.ns[node].sysctl("net.ipv4.ip_forward", 1)
            if p.dual_stack:
                self.ns[node].sysctl("net.ipv6.conf.all.forwarding", 1)
        for link in (*p.uplinks, *p.rack_links):
            veth(self.ns[link.a], link.a_if, self.ns[link.b], link.b_if)
            # Netns.addr adds an IPv6 address without duplicate address detection (the
            # plan made the addresses unique), so BIRD and ExaBGP can bind to it at once.
            for node, dev, cidrs in ((link.a, link.a_if, link.a_addrs),
                                     (link.b, link.b_if, link.b_addrs)):
                for cidr in cidrs:
                    self.ns[node].addr(dev, cidr)
        mgmt = self.ns["mgmt"]
        for h in p.hosts:
            veth(mgmt, h.name, self.ns[h.name], "mgmt")
            mgmt.run(["ip", "link", "set", h.name, "master", MGMT_BRIDGE])
            self.ns[h.name].addr("mgmt", h.mgmt_ip)

    def switches(self) -> None:
        p = self.plan
        bgp, pools = bird_conf.load(self.client, self.layout)
        # A dual-stack link has two sessions, one per family: the neighbour's address of
        # each family is given (bgp.fabric renders each with its family's channel).
        confs = {p.core.name: bird_conf.render_core(
            name=p.core.name, router_id=p.core.router_id, local_as=p.core.as_num,
            tors=[(address_of(cidr), t.as_num) for link, t in zip(p.uplinks, p.tors)
                  for cidr in link.b_addrs],
            log_file=observe.bird_log(self.workdir, p.core.name))}
        for link, t in zip(p.uplinks, p.tors):
            confs[t.name] = bird_conf.render_tor(
                bgp, pools, name=t.name, router_id=t.router_id, local_as=t.as_num,
                addresses=[a for x in p.rack_links if x.a == t.name for a in x.a_addrs],
                uplinks=[(address_of(cidr), p.core.as_num) for cidr in link.a_addrs],
                log_file=observe.bird_log(self.workdir, t.name))
        for name, conf in confs.items():
            bird = Bird(self.ns[name], name, self.workdir)
            try:
                bird.start(conf)
            finally:
                if bird.proc is not None:
                    self.state.add_process("bird", bird.proc.pid, self.ns[name].name)

    def agents(self) -> None:
        reg = Registry(self.client, self.layout)
        started = []
        for h in self.plan.hosts:
            # TMPDIR: ExaBGP's run directory goes to the workdir, which teardown removes
            # even when the agent could not.
            a = AgentProcess(self.ns[h.name], h.name, self.plan.etcd_url, PREFIX,
                             self.path(f"{h.name}.agent.log"), {**AGENT_ENV,
                                                                 "TMPDIR": self.workdir})
            a.start()
            self.state.add_process("agent", a.proc.pid, self.ns[h.name].name)
            started.append(a)
        for a in started:
            try:
                a.wait_ready(reg, timeout=60)
            except (RuntimeError, TimeoutError) as e:
                raise LabError(str(e)) from None

    def workloads(self) -> None:
        for w in self.plan.workloads:
            self.netns(w.name)
        plugin = cni_plugin()
        with ThreadPoolExecutor(max(1, min(16, len(self.plan.hosts)))) as pool:
            for _ in pool.map(lambda h: [self._cni_add(plugin, w)
                                         for w in self.plan.workloads_of(h.name)],
                              self.plan.hosts):
                pass

    def _cni_add(self, plugin: str, w) -> None:
        conf = {"cniVersion": "1.0.0", "name": CNI_NETWORK, "type": "felix-cni",
                "etcd_endpoints": self.plan.etcd_url, "etcd_prefix": PREFIX,
                "hostname": w.host, "args": {"cni": {"profiles": [w.group],
                                                     "labels": w.labels}}}
        if self.plan.dual_stack:
            # felix-cni's IPAM hands out an IPv6 address (from the IPv6 pool, in the host's
            # IPv6 block) beside the IPv4 one; the veth gets both.
            conf["ipam"] = {"type": "felix-ipam", "assign_ipv4": True, "assign_ipv6": True}
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": "ADD", "CNI_CONTAINERID": w.name, "CNI_IFNAME": "eth0",
               "CNI_NETNS": f"/var/run/netns/{self.ns[w.name].name}",
               "CNI_PATH": os.path.dirname(plugin)}
        r = subprocess.run(self.ns[w.host].exec_argv([plugin]), input=json.dumps(conf),
                           capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            try:
                msg = json.loads(r.stdout)["msg"]
            except (ValueError, KeyError, TypeError):
                msg = (r.stderr or r.stdout).strip()
            raise LabError(f"felix-cni ADD of {w.name} on {w.host} failed: {msg}")

    def converge(self) -> None:
        timeout = self.timeout
        deadline = time.monotonic() + timeout
        while True:
            missing = self.unconverged()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise LabError(f"BGP did not converge within {timeout:.0f}s: "
                               + "; ".join(missing))
            time.sleep(0.5)

    def unconverged(self) -> list[str]:
        """What is not yet as it should be, one phrase per node; empty once converged."""
        view = observe.read(self.client, self.layout, [h.name for h in self.plan.hosts])
        out = [f"{n.name}: {'; '.join(n.problems)}"
               for n in observe.report(self.plan, view, self.workdir) if n.problems]
        statuses = Registry(self.client, self.layout).endpoint_statuses()
        down = [eid.workload for eid in sorted(view.any.endpoints)
                if getattr(statuses.get(eid), "status", None) != "up"]
        if down:
            out.append(f"endpoint(s) not up yet: {', '.join(down)}")
        return out


def build(plan: Plan, state: LabState, say: Say, timeout: float = 90) -> None:
    """Build the whole lab, one progress line per step; on failure raise LabError naming
    the step (the caller tears down)."""
    state.plan = plan.to_json()
    state.save()
    b = Builder(plan, state, timeout)
    steps = b.steps()
    try:
        for i, (what, step) in enumerate(steps, start=1):
            say(f"[{i}/{len(steps)}] {what} ...", nl=False)
            t0 = time.monotonic()
            try:
                step()
            except LabError as e:
                say(" failed")
                raise LabError(f"{what}: {e}") from None
            except Exception as e:
                say(" failed")
                raise LabError(f"{what}: {type(e).__name__}: {e}") from e
            say(f" done ({time.monotonic() - t0:.1f}s)")
            for note in b.notes:
                say(f"    {note}")
            b.notes.clear()
    finally:
        b.close()
    state.phase = "up"
    state.save()


# -- teardown ---------------------------------------------------------------------------

STOP_ORDER = ("agent", "bird", "etcd")


def teardown(state: LabState, grace: float = 5.0) -> dict:
    """Remove every process, namespace and file the lab made; safe to repeat.  Returns
    counts of what it removed."""
    stopped = _stop_processes(state, grace)
    prefix = f"{state.lab_id}-" if state.lab_id else None
    names = set(state.namespaces)
    if prefix:
        names |= {n for n in existing() if n.startswith(prefix)}
    present = names & existing()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: Netns(n).delete(), sorted(present)))
    left = present & existing()
    if left:
        raise LabError(f"could not delete namespace(s) {', '.join(sorted(left))}; "
                       "see `ip netns pids NAME`, then run `felixctl lab down` again")
    if state.record and _reads(state.record) == state.etcd.get("unix"):
        os.unlink(state.record)
    # Only ever <lab dir>/<lab id>, whatever a damaged record says.
    workdir = os.path.join(os.path.dirname(state.path), state.lab_id)
    if state.lab_id and os.path.isdir(workdir):
        shutil.rmtree(workdir)
    state.remove()
    try:
        os.rmdir(os.path.dirname(state.path))
    except OSError:
        pass                    # not empty: someone else's files, or not ours to remove
    return {"processes": stopped, "namespaces": len(present)}


def _stop_processes(state: LabState, grace: float) -> int:
    """Stop the recorded processes that still run, in waves: the agents first (they stop
    ExaBGP and remove its files, and still need etcd to do so), then BIRD, then etcd.
    SIGTERM, and SIGKILL what is left after ``grace`` seconds."""
    stopped = 0
    roles = [*STOP_ORDER, *sorted({p["role"] for p in state.processes} - set(STOP_ORDER))]
    for role in roles:
        wave = [p for p in state.processes if p["role"] == role and state.running(p)]
        for p in wave:
            _signal(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(state, p) for p in wave):
            time.sleep(0.1)
        for p in wave:
            if state.running(p):
                _signal(p["pid"], signal.SIGKILL)
                _alive(state, p)
        stopped += len(wave)
    return stopped


def _signal(pid: int, sig: int) -> None:
    try:
        # Started in a session of its own: its group is it and the children it did not
        # move elsewhere.
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(state: LabState, proc: dict) -> bool:
    try:
        os.waitpid(proc["pid"], os.WNOHANG)     # reap it when this process started it
    except ChildProcessError:
        pass
    return state.running(proc)


def _reads(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""
