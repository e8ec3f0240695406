"""``felixctl lab up|status|ping|exec|down``: the whole system on one machine.

The lab (``felix_py.lab``) is a downward-default fabric in network namespaces: embedded
etcd on a management network, BIRD core and ToRs, hosts running the agent with ExaBGP,
workloads plugged in by felix-cni in two security groups; with ``lab up --dual-stack``,
IPv6 beside IPv4 on every fabric link, BGP session and workload.  These commands build it,
show it, test its connectivity (in each IP version of the lab) and remove it.  They read
the lab's record (``$FELIX_LAB_DIR/state.json``), never the global ``--etcd-endpoints``:
the lab always talks to its own etcd.
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import cached_property

import click

from felix_py.ctl.common import CtlError
from felix_py.ctl.output import dump, emit, fmt, output_option, table
from felix_py.ctl.status import agent_state
from felix_py.datastore.client import DatastoreUnavailable, EtcdClient
from felix_py.datastore.keys import KeyLayout
from felix_py.lab import fabric, observe, ping as ping_mod
from felix_py.lab.netns import existing, unique_name
from felix_py.lab.plan import (EXPORT, EXPORTS, LIMITS, PlanError, Size, from_json,
                               plan as make_plan)
from felix_py.lab.state import LabDirTooLong, LabExists, LabState

TOOLS = {"ip": "iproute2", "bird": "bird2", "birdc": "bird2", "ping": "iputils-ping",
         "iptables-legacy": "iptables", "ipset": "ipset"}


def _need_root() -> None:
    if os.geteuid() != 0:
        raise CtlError("the lab needs root (it creates network namespaces); run it as root")


class Lab:
    """The recorded lab: its record, plan and a client of its etcd."""

    def __init__(self, require_up: bool = True):
        state = LabState.load()
        if state is None:
            raise CtlError("no lab is up; build one with `felixctl lab up`")
        if not state.plan or (require_up and state.phase != "up"):
            raise CtlError(f"the lab {state.lab_id or '?'} was not completely built (a crash, "
                           "or a build still running); remove it with `felixctl lab down`")
        if state.phase != "up":
            click.echo(f"Warning: the lab {state.lab_id} was not completely built.", err=True)
        self.state = state
        self.plan = from_json(state.plan)
        self.layout = KeyLayout(fabric.PREFIX)

    @cached_property
    def client(self) -> EtcdClient:
        client = EtcdClient(self.state.etcd["unix"])
        click.get_current_context().call_on_close(client.close)
        return client

    def view(self) -> observe.View:
        try:
            return observe.read(self.client, self.layout, [h.name for h in self.plan.hosts])
        except DatastoreUnavailable:
            raise CtlError(f"the lab's etcd ({self.state.etcd['unix']}) does not answer; "
                           "`felixctl lab down`, then `felixctl lab up` again") from None


@click.group()
def lab():
    """The lab: a whole felix-py fabric in network namespaces (needs root)."""


@lab.command()
@click.option("--racks", type=click.IntRange(1, LIMITS["racks"]), default=2,
              show_default=True, help="ToR switches, each with its rack of hosts.")
@click.option("--hosts-per-rack", type=click.IntRange(1, LIMITS["hosts_per_rack"]),
              default=2, show_default=True, help="Hosts (agent + ExaBGP) per rack.")
@click.option("--workloads-per-host", type=click.IntRange(1, LIMITS["workloads_per_host"]),
              default=3, show_default=True, help="Workloads (containers) per host.")
@click.option("--timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for BGP to converge.")
@click.option("--dual-stack", is_flag=True,
              help="IPv6 beside IPv4: on every fabric link, a BGP session per family, an "
                   "IPv6 pool and an IPv6 address for every workload; `lab status` and "
                   "`lab ping` check both families.")
@click.option("--keep-on-failure", is_flag=True,
              help="Leave a lab that failed to build as it is, for inspection "
                   "(`felixctl lab down` removes it).")
def up(racks, hosts_per_rack, workloads_per_host, timeout, dual_stack, keep_on_failure):
    """Build the lab and wait until BGP has converged."""
    _need_root()
    missing = sorted({pkg for tool, pkg in TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise CtlError(f"missing Debian package(s) {', '.join(missing)}: run "
                       "./contrib/setup.sh (or apt-get install them)")
    try:
        the_plan = make_plan(Size(racks, hosts_per_rack, workloads_per_host),
                             unique_name("flab"), dual_stack=dual_stack)
    except PlanError as e:
        raise CtlError(str(e)) from None
    try:
        state = LabState.create(the_plan.lab_id)
    except (LabExists, LabDirTooLong) as e:
        raise CtlError(str(e)) from None
    click.echo(f"Building lab {the_plan.lab_id}: {racks} rack(s) x {hosts_per_rack} host(s) "
               f"x {workloads_per_host} workload(s)"
               + (", dual-stack (IPv4 and IPv6)" if dual_stack else "")
               + f", record in {state.path}")
    try:
        fabric.build(the_plan, state, click.echo, timeout)
    except BaseException as e:
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        click.echo(reason, err=True)
        if keep_on_failure:
            raise CtlError(f"lab up failed; the lab is left as it is (logs in "
                           f"{state.workdir}); `felixctl lab down` removes it") from None
        click.echo("Cleaning up ...", err=True)
        fabric.teardown(state)
        first = (reason.splitlines() or [type(e).__name__])[0]
        raise CtlError(f"lab up failed and was cleaned up: {first}") from None
    click.echo(f"Lab {the_plan.lab_id} is up. Next: `felixctl lab status`, `felixctl lab ping`, "
               "`felixctl lab exec host1 -- ip route`, `felixctl lab down`.")
    if state.record:
        click.echo(f"felixctl now uses the lab's etcd ({state.etcd['unix']}), e.g. "
                   "`felixctl endpoint list`.")


@lab.command()
@output_option
def status():
    """Routes per tier (held / expected), BGP sessions and agents; exit 1 if anything
    differs from what the datastore says."""
    _need_root()
    the_lab = Lab(require_up=False)
    nodes = observe.report(the_lab.plan, the_lab.view(), the_lab.state.workdir)
    dual = the_lab.plan.dual_stack
    data, rows = [], []
    for n in nodes:
        agent = agent_state(n.heartbeat, n.ttl) if n.tier == "host" else None
        agent_text = f"{agent['state']} ({agent['detail']})" if agent else None
        v4 = n.families[4]
        item = {"tier": n.tier, "node": n.name, "netns": n.netns, "as_num": n.as_num,
                **_family_data(v4), "agent": agent, "problems": n.problems}
        if dual:
            # The top-level fields are IPv4's, as in an IPv4-only lab; "problems" lists
            # every family's.
            item["ipv6"] = {**_family_data(n.families[6]),
                            "problems": n.families[6].problems}
        data.append(item)
        if not dual:
            rows.append([n.tier, n.name, n.as_num, _routes_text(n.tier, v4),
                         _sessions_text(v4), agent_text, "; ".join(n.problems) or "ok"])
            continue
        # A row per family, each with the node's shared problems and its own.
        for f in n.families.values():
            rows.append([n.tier, n.name, n.as_num, f"IPv{f.version}", _routes_text(n.tier, f),
                         _sessions_text(f), agent_text,
                         "; ".join(n.shared + f.problems) or "ok"])
    headers = ["TIER", "NODE", "AS", "ROUTES (HELD/EXPECTED)", "BGP", "AGENT", "STATE"]
    if dual:
        headers.insert(3, "FAMILY")
    emit(data, headers, rows)
    bad = [n.name for n in nodes if n.problems]
    if fmt() == "table":
        click.echo(f"\n{len(nodes) - len(bad)} of {len(nodes)} nodes as expected"
                   + (f"; check {', '.join(bad)}" if bad else ""))
    if bad or the_lab.state.phase != "up":
        sys.exit(1)


def _family_data(f: observe.FamilyReport) -> dict:
    return {"routes": sorted(f.held), "expected": sorted(f.expected), "default_via": f.default,
            "blackholes": sorted(f.blackholes), "bgp_sessions": f.sessions}


def _routes_text(tier: str, f: observe.FamilyReport) -> str:
    if tier == "host":
        text = f"{len(f.held)}/{len(f.expected)} workloads + " + \
               ("default" if f.default else "NO default")
        if f.blackholes:
            text += f" (+{len(f.blackholes)} block blackhole)"
        return text
    return f"{len(f.held)}/{len(f.expected)} prefixes" + (" + default" if f.default else "")


def _sessions_text(f: observe.FamilyReport) -> str:
    established = sum(st.lower() == "established" for st in f.sessions.values())
    return f"{established}/{len(f.sessions)} established"


@lab.command()
@output_option
def ping():
    """Connectivity matrix of every workload pair (ICMP), expected against observed; exit 1
    if any pair differs."""
    _need_root()
    the_lab = Lab()
    store = the_lab.view().any
    dual = the_lab.plan.dual_stack
    matrices = [ping_mod.run(the_lab.plan, store, v) for v in the_lab.plan.versions]
    passed, failed = sum(m.passed for m in matrices), sum(m.failed for m in matrices)
    if fmt() != "table":
        # A dual-stack lab's pairs carry their family; the totals are of both.
        click.echo(dump({"pairs": [{"from": p.src, "to": p.dst,
                                    **({"family": m.version} if dual else {}),
                                    "expected": p.expected, "observed": p.observed}
                                   for m in matrices for p in m.pairs.values()],
                         "passed": passed, "failed": failed}, fmt()))
    else:
        members: dict[str, list[str]] = {}
        for w in the_lab.plan.workloads:
            members.setdefault(f"{w.group}" + (f" ({w.labels['role']})" if "role" in w.labels
                                               else ""), []).append(w.name)
        for group, names in members.items():
            click.echo(f"{group}: {' '.join(names)}")
        protocols = " and ".join(EXPORTS[v]["protocol"] + (f" (IPv{v})" if dual else "")
                                 for v in the_lab.plan.versions)
        click.echo(f"export: {EXPORT['group']} members with {EXPORT['selector']} answer "
                   f"{protocols} from {EXPORT['to_group']}; nothing else crosses "
                   "between the groups\n")
        for m in matrices:
            if dual:
                click.echo(f"IPv{m.version}:")
            rows = ping_mod.grid(m)
            click.echo(table(rows[0], rows[1:]))
            if dual:
                click.echo()
        click.echo(("" if dual else "\n")
                   + "cell: expected/observed (y: ping answered, n: no answer), ! a mismatch")
        for m in matrices:
            for p in m.pairs.values():
                if not p.passed:
                    click.echo(f"MISMATCH {p.src} ({m.addresses[p.src]}) -> {p.dst} "
                               f"({m.addresses[p.dst]}): expected "
                               f"{'an answer' if p.expected else 'no answer'}, got "
                               f"{'one' if p.observed else 'none'}")
        if dual:
            for m in matrices:
                click.echo(f"IPv{m.version}: {m.passed} passed, {m.failed} failed")
        click.echo(f"{passed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@lab.command("exec", context_settings={"ignore_unknown_options": True,
                                       "allow_interspersed_args": False})
@click.argument("name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def exec_(name, command):
    """Run COMMAND (default: a shell) in the namespace of NAME: mgmt, core, tor1, host1,
    h1w1, ...  Example: felixctl lab exec host1 -- ip route"""
    _need_root()
    the_lab = Lab(require_up=False)
    if name not in the_lab.plan.nodes:
        raise CtlError(f"no node {name!r} in the lab; nodes: "
                       f"{', '.join(the_lab.plan.nodes)}")
    ns = the_lab.plan.netns(name)
    if ns not in existing():
        raise CtlError(f"namespace {ns} of {name} is gone; `felixctl lab down` and up again")
    argv = list(command)
    if argv[:1] == ["--"]:          # click keeps it once NAME ended the options
        argv = argv[1:]
    argv = argv or [os.environ.get("SHELL", "/bin/sh")]
    sys.stdout.flush()
    os.execvp("ip", ["ip", "netns", "exec", ns, *argv])


@lab.command()
def down():
    """Remove every namespace, process and file of the lab; safe to repeat."""
    _need_root()
    state = LabState.load()
    if state is None:
        click.echo("No lab is up; nothing to remove.")
        return
    try:
        done = fabric.teardown(state)
    except fabric.LabError as e:
        raise CtlError(str(e)) from None
    click.echo(f"Lab {state.lab_id or '?'} removed: {done['processes']} process(es) stopped, "
               f"{done['namespaces']} namespace(s) and its files ({state.workdir}) deleted.")
