"""Policy dataplane speed: felix-py's PolicyManager against the raw restore tools.

Run as root: ``/work/venv/bin/python bench/bench_policy.py [--endpoints 5000 --groups 50]``.

Everything runs in two throwaway namespaces.  The measuring process starts inside the
first (where the PolicyManager programs the kernel) and enters the second only to replay
the identical work with the raw tools, so both sides run on the same machine in the same
run:

- cold start: N endpoints in G groups, from a synced Store to everything enforced
  (compile + ipsets + iptables, IPv4 and IPv6) against ``ipset restore`` +
  ``iptables-restore`` + ``ip6tables-restore`` loading the saved result into an empty
  namespace;
- one endpoint added with N present: from the datastore update to enforced, against the
  raw tools replaying the very batches the manager sent;
- why not python-iptables / pyroute2 ipset: the same simple rules and members through them
  and through the restore tools.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.report import median, percentile, write_section  # noqa: E402

CLONE_NEWNET = 0x40000000


class Netns:
    """Switch this thread between the namespace it started in and another one."""

    def __init__(self, other: str):
        self.home = os.open("/proc/self/ns/net", os.O_RDONLY)
        self.other = os.open(f"/var/run/netns/{other}", os.O_RDONLY)
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def _set(self, fd):
        if self.libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")

    def run_in_other(self, fn):
        self._set(self.other)
        try:
            return fn()
        finally:
            self._set(self.home)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def tool(argv, stdin=None) -> str:
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


class Recording:
    """Wraps a backend and keeps every batch it was given, to replay with the raw tools."""

    def __init__(self, backend):
        self.backend, self.batches = backend, []

    def save(self):
        return self.backend.save()

    def restore(self, batch):
        text = batch if isinstance(batch, str) else "\n".join(batch) + "\n"
        self.batches.append(text)
        self.backend.restore(text.splitlines() if not isinstance(batch, str) else batch)


def populate(feeder, endpoints: int, groups_n: int, host: str):
    from policy import groups
    for g in range(groups_n):
        name = f"group{g}"
        rules, tags = groups.new_group(name)
        if g % 5 == 0:     # some groups export a port to the next one
            rules = groups.add_export(rules, name, f"group{g + 1}", selector="role == 'api'",
                                      ports=[8080])
        feeder.profile(name, rules=rules, tags=tags)
    for i in range(endpoints):
        feeder.endpoint(host, f"w{i}", endpoint_value(i, groups_n))


def endpoint_value(i: int, groups_n: int) -> dict:
    return {"name": f"cali{i:07x}", "ipv4_nets": [f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32"],
            "mac": f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
            "profile_ids": [f"group{i % groups_n}"], "labels": {"role": "api" if i % 7 == 0 else "web"}}


def road_not_taken(ns: "Netns", n_rules: int, n_members: int) -> dict:
    """python-iptables and pyroute2's ipset against the restore tools, on simple work, in
    the (still empty) second namespace, which is emptied again afterwards."""
    import iptc
    from pyroute2.ipset import IPSet
    text = "*filter\n:felix-raw - [0:0]\n" + "".join(
        f"-A felix-raw -s 10.1.{i // 250}.{i % 250}/32 -p tcp -m tcp --dport {1000 + i % 100} "
        f"-m comment --comment r{i} -j ACCEPT\n" for i in range(n_rules)) + "COMMIT\n"

    def via_iptc():
        table = iptc.Table(iptc.Table.FILTER, autocommit=False)
        chain = table.create_chain("felix-iptc")
        for i in range(n_rules):
            r = iptc.Rule()
            r.src, r.protocol = f"10.1.{i // 250}.{i % 250}/32", "tcp"
            r.create_match("tcp").dport = str(1000 + i % 100)
            r.create_match("comment").comment = f"r{i}"
            r.create_target("ACCEPT")
            chain.append_rule(r)
        table.commit()
        table.close()

    set_text = "create felix-raw hash:ip family inet\n" + "".join(
        f"add felix-raw 10.2.{i // 250}.{i % 250}\n" for i in range(n_members))

    def via_pyroute2():
        with IPSet() as ips:
            ips.create("felix-pyr", stype="hash:ip", family=2)
            for i in range(n_members):
                ips.add("felix-pyr", f"10.3.{i // 250}.{i % 250}", etype="ip")

    def run():
        out = {"restore_simple": timed(lambda: tool(["iptables-legacy-restore", "--noflush"],
                                                    text)),
               "iptc": timed(via_iptc),
               "ipset_restore": timed(lambda: tool(["ipset", "restore"], set_text)),
               "pyroute2": timed(via_pyroute2)}
        tool(["iptables-legacy-restore"], "*filter\nCOMMIT\n")      # flush and delete all
        tool(["ipset", "destroy"])
        return out
    return ns.run_in_other(run)


def inner(args) -> dict:
    """Runs inside namespace 1; ``args.other`` names namespace 2."""
    from felix_py import config as config_mod
    from felix_py.calc.store import Store
    from felix_py.dataplane.ipsets import IpsetBackend, Ipsets
    from felix_py.dataplane.iptables import IptablesTable, RestoreBackend
    from felix_py.dataplane.policy import PolicyManager
    from policy.testing import Feeder

    ns = Netns(args.other)
    road = road_not_taken(ns, args.iptc_rules, args.endpoints)
    host = "bench-host"
    store = Store(host)
    feeder = Feeder(store)
    populate(feeder, args.endpoints, args.groups, host)
    changes = store.drain()

    cfg = config_mod.load(env={})
    empty = {4: "*filter\nCOMMIT\n", 6: "*filter\nCOMMIT\n"}

    def flush():
        """Empty this namespace's filter tables and sets (no --noflush: flush and delete)."""
        tool(["iptables-legacy-restore"], empty[4])
        tool(["ip6tables-legacy-restore"], empty[6])
        tool(["ipset", "destroy"])

    # Cold start, alternating ours and the raw tools, median of a few rounds (load varies).
    colds, calcs, raws, dumps = [], [], [], None
    for _ in range(args.rounds):
        flush()
        rec = {f: Recording(RestoreBackend(f)) for f in (4, 6)}
        rec_sets = Recording(IpsetBackend())
        m = PolicyManager(cfg, host, tables={f: IptablesTable(f, rec[f]) for f in (4, 6)},
                          ipsets=Ipsets(rec_sets), check_backend=False)
        t0 = time.perf_counter()
        m.on_changes(store, changes, None)
        calcs.append(time.perf_counter() - t0)
        m.apply()
        colds.append(time.perf_counter() - t0)
        if dumps is None:
            dumps = {"sets": tool(["ipset", "save"]),
                     4: tool(["iptables-legacy-save", "-t", "filter"]),
                     6: tool(["ip6tables-legacy-save", "-t", "filter"])}

        def raw_cold():
            flush()
            return {"ipset": timed(lambda: tool(["ipset", "restore"], dumps["sets"])),
                    4: timed(lambda: tool(["iptables-legacy-restore"], dumps[4])),
                    6: timed(lambda: tool(["ip6tables-legacy-restore"], dumps[6]))}
        raws.append(ns.run_in_other(raw_cold))
    rules = {f: sum(1 for ln in dumps[f].splitlines() if ln.startswith("-A ")) for f in (4, 6)}
    chains = {f: sum(1 for ln in dumps[f].splitlines() if ln.startswith(":felix-")) for f in (4, 6)}
    members = sum(1 for ln in dumps["sets"].splitlines() if ln.startswith("add "))
    t_cold, t_calc = median(colds), median(calcs)
    raw = {k: median([r[k] for r in raws]) for k in raws[0]}
    t_raw = median([sum(r.values()) for r in raws])

    # One endpoint at a time, with the rest present; the raw side replays the same batches.
    ours, theirs, lines = [], [], []
    for k in range(args.adds):
        i = args.endpoints + k
        for r in (*rec.values(), rec_sets):
            r.batches.clear()
        t0 = time.perf_counter()
        feeder.endpoint(host, f"w{i}", endpoint_value(i, args.groups))
        m.on_changes(store, store.drain(), None)
        m.apply()
        ours.append(time.perf_counter() - t0)
        batches = ([("ipset", b) for b in rec_sets.batches]
                   + [(f, b) for f in (4, 6) for b in rec[f].batches])
        lines.append(sum(b.count("\n") for _, b in batches))

        def replay():
            t = 0.0
            for kind, b in batches:
                argv = ["ipset", "restore", "-exist"] if kind == "ipset" else \
                    [("iptables-legacy-restore" if kind == 4 else "ip6tables-legacy-restore"),
                     "--noflush"]
                t += timed(lambda: tool(argv, b))
            return t
        theirs.append(ns.run_in_other(replay))

    m.close()
    return {"cold": t_cold, "calc": t_calc, "colds": colds, "raw_totals": [sum(r.values()) for r in raws], "raw": {str(k): v for k, v in raw.items()},
            "raw_total": t_raw, "rules": rules, "chains": chains, "members": members,
            "ours": ours, "theirs": theirs, "lines": lines, "iptc_rules": args.iptc_rules,
            **road}


def outer(args) -> None:
    from felix_py.lab.netns import Netns as LabNetns, unique_name
    a = LabNetns(unique_name("bpol")).create()
    b = LabNetns(unique_name("bpolraw")).create()
    try:
        r = a.run([sys.executable, os.path.abspath(__file__), "--inner", b.name,
                   "--endpoints", str(args.endpoints), "--groups", str(args.groups),
                   "--adds", str(args.adds), "--iptc-rules", str(args.iptc_rules),
                   "--rounds", str(args.rounds)],
                  timeout=3600)
        res = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        a.delete()
        b.delete()
    report(args, res)


def report(args, r) -> None:
    ratio = r["cold"] / r["raw_total"]
    p50, p99 = percentile(r["ours"], 50), percentile(r["ours"], 99)
    q50, q99 = percentile(r["theirs"], 50), percentile(r["theirs"], 99)
    body = f"""
Cold start: {args.endpoints:,} local endpoints in {args.groups} groups (every fifth group
exports tcp/8080 of its `role == 'api'` members to the next): {r['rules']['4']:,} IPv4 and
{r['rules']['6']:,} IPv6 rules in {r['chains']['4']:,} + {r['chains']['6']:,} felix chains,
{r['members']:,} ipset members.

Median of {args.rounds} rounds, ours and the raw tools alternating (each round:
{", ".join(f"{a:.2f}s vs {b:.2f}s" for a, b in zip(r["colds"], r["raw_totals"]))}).

| cold start | seconds | ratio |
|---|---|---|
| felix-py: compile ({r['calc']:.3f}s) + ipsets + iptables + ip6tables | {r['cold']:.3f} | **{ratio:.2f}x** |
| raw: `ipset restore` + `iptables-restore` + `ip6tables-restore` of the saved result | {r['raw_total']:.3f} | 1.00x |
| of which `iptables-restore` (IPv4) alone | {r['raw']['4']:.3f} | |

Target: at most 3x.  {'Met.' if ratio <= 3 else 'NOT met.'}

One endpoint added with {args.endpoints:,} present, datastore update to enforced
({args.adds} samples; a batch is {median(r['lines']):.0f} restore lines at the median):

| one endpoint added | p50 ms | p99 ms |
|---|---|---|
| felix-py (calc + ipset + iptables + ip6tables commits) | {p50 * 1000:.1f} | {p99 * 1000:.1f} |
| raw tools replaying the same batches | {q50 * 1000:.1f} | {q99 * 1000:.1f} |
| ratio | {p50 / q50:.2f}x | {p99 / q99:.2f}x |

A legacy iptables commit rewrites the whole table, so the raw replay itself grows with the
number of rules present; the manager adds its diff and the process start of each tool.

Why the restore tools (docs/policy.md), measured on an empty table:

| same simple work | seconds | ratio |
|---|---|---|
| python-iptables, {r['iptc_rules']:,} rules in one commit | {r['iptc']:.3f} | {r['iptc'] / r['restore_simple']:.0f}x |
| `iptables-restore --noflush`, the same rules | {r['restore_simple']:.3f} | 1x |
| pyroute2 IPSet, {args.endpoints:,} members one request each | {r['pyroute2']:.3f} | {r['pyroute2'] / r['ipset_restore']:.0f}x |
| `ipset restore`, the same members | {r['ipset_restore']:.3f} | 1x |
"""
    print(body)
    write_section("policy", "Policy: iptables and ipsets", " ".join(
        ["bench/bench_policy.py", f"--endpoints {args.endpoints}", f"--groups {args.groups}",
         f"--adds {args.adds}", f"--rounds {args.rounds}"]), body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=5000)
    p.add_argument("--groups", type=int, default=50)
    p.add_argument("--adds", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iptc-rules", type=int, default=5000)
    p.add_argument("--inner", metavar="OTHER_NETNS", help=argparse.SUPPRESS)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_policy needs root (it works in network namespaces it creates)")
    if args.inner:
        args.other = args.inner
        print(json.dumps(inner(args)))
    else:
        outer(args)


if __name__ == "__main__":
    main()
