"""The iptables and ipset managers and the PolicyManager, against state fakes of the kernel.

The fakes hold tables the way the kernel does (chains of rules, sets of members), execute
the restore batches the managers send (rejecting what the kernel would reject), and can be
told to fail.  Each rule carries an identity so tests can see which rules were rewritten.
"""

import itertools
import random
import re
import shlex

import pytest

from felix_py import config as config_mod
from felix_py.calc.store import Store
from felix_py.dataplane.iptables import IptablesError, IptablesTable, parse_save, render
from felix_py.dataplane.ipsets import IpsetError, Ipsets
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane.policy import PolicyManager
from policy import names
from policy.host import SetSpec
from policy.testing import Feeder

BUILTINS = ("INPUT", "FORWARD", "OUTPUT")
_ids = itertools.count()


class FakeIptables:
    def __init__(self):
        self.chains = {b: [] for b in BUILTINS}     # chain -> [(id, text)]
        self.fail = False
        self.batches = []

    def save(self) -> str:
        out = ["*filter"]
        out += [f":{c} {'ACCEPT' if c in BUILTINS else '-'} [0:0]" for c in self.chains]
        out += [f"-A {c} {text}" for c, rules in self.chains.items() for _, text in rules]
        return "\n".join(out + ["COMMIT"]) + "\n"

    def restore(self, lines) -> None:
        text = "\n".join(lines)
        self.batches.append(text)
        if self.fail:
            raise IptablesError("injected failure")
        work = {c: list(r) for c, r in self.chains.items()}
        for line in text.splitlines():
            if line in ("*filter", "COMMIT"):
                continue
            if line.startswith(":"):
                work.setdefault(line[1:].split()[0], [])
                continue
            args = shlex.split(line)
            op, chain = args[0], args[1]
            if chain not in work:
                raise IptablesError(f"no chain {chain}: {line}")
            if op == "-A":
                work[chain].append((next(_ids), self._check(work, line.split(" ", 2)[2])))
            elif op == "-I":
                pos = int(args[2])
                if not 1 <= pos <= len(work[chain]) + 1:
                    raise IptablesError(f"index out of range: {line}")
                work[chain].insert(pos - 1, (next(_ids), self._check(work, line.split(" ", 3)[3])))
            elif op == "-D":
                pos = int(args[2])
                if not 1 <= pos <= len(work[chain]):
                    raise IptablesError(f"index out of range: {line}")
                del work[chain][pos - 1]
            elif op == "-F":
                work[chain] = []
            elif op == "-X":
                if work[chain] or any(self._target(t) == chain for rs in work.values()
                                      for _, t in rs):
                    raise IptablesError(f"chain {chain} not empty or in use")
                del work[chain]
            else:
                raise IptablesError(f"unknown op {line}")
        self.chains = work

    @staticmethod
    def _target(text):
        m = re.search(r"-[jg] (\S+)", text)
        return m.group(1) if m else None

    def _check(self, work, text):
        t = self._target(text)
        if t and t.startswith("felix-") and t not in work:
            raise IptablesError(f"jump to missing chain {t}")
        return text

    def bodies(self, chain):
        """Rule bodies without our comment, as the manager was asked to write them."""
        return tuple(re.sub(r'^-m comment --comment "felix:[0-9a-f]{16}" ', "", t)
                     for _, t in self.chains[chain])


class FakeIpsets:
    def __init__(self):
        self.sets = {}                  # name -> (family, set)
        self.fail = False

    def save(self) -> str:
        out = []
        for n, (fam, members) in self.sets.items():
            out.append(f"create {n} hash:ip family {'inet' if fam == 4 else 'inet6'} hashsize 1024")
            out += [f"add {n} {m}" for m in members]
        return "\n".join(out) + "\n"

    def restore(self, text: str) -> None:
        if self.fail:
            raise IpsetError("injected failure")
        for line in text.splitlines():
            p = line.split()
            if not p or p[0] == "COMMIT":
                continue
            if p[0] == "create":
                self.sets.setdefault(p[1], (4 if p[p.index("family") + 1] == "inet" else 6, set()))
            elif p[0] == "add":
                self.sets[p[1]][1].add(p[2])
            elif p[0] == "del":
                self.sets[p[1]][1].discard(p[2])
            elif p[0] == "destroy":
                del self.sets[p[1]]


# -- IptablesTable --------------------------------------------------------------------------

def desired_ok(fake, desired):
    for chain, rules in desired.items():
        assert fake.bodies(chain) == rules, chain
    for hook, target in names.HOOKS.items():
        assert fake.bodies(hook)[0] == f"-j {target}"
        assert [t for _, t in fake.chains[hook]].count(fake.chains[hook][0][1]) == 1


def base():
    return {names.INPUT: ("-j ACCEPT",), names.FORWARD: ("-j felix-a",),
            names.OUTPUT: (), "felix-a": ("-s 10.0.0.1 -j DROP", "-s 10.0.0.2 -j DROP")}


def test_first_apply_hooks_on_top_leaves_foreign_rules_and_removes_stale_chains():
    fake = FakeIptables()
    fake.chains["INPUT"] = [(0, "-s 1.2.3.4 -j DROP")]
    fake.chains["mine"] = [(1, "-j ACCEPT")]                        # not ours: left alone
    fake.chains["felix-old"] = [(2, "-j DROP")]                     # ours, stale: removed
    fake.chains["FORWARD"] = [(3, "-j felix-old"), (4, "-j ACCEPT")]
    t = IptablesTable(4, fake)
    t.apply(base(), set())
    desired_ok(fake, base())
    assert "felix-old" not in fake.chains and fake.chains["mine"] == [(1, "-j ACCEPT")]
    assert fake.chains["INPUT"][1] == (0, "-s 1.2.3.4 -j DROP")
    assert fake.bodies("FORWARD") == ("-j felix-FORWARD", "-j ACCEPT")


def test_unchanged_rules_keep_their_identity_and_counters():
    fake = FakeIptables()
    t = IptablesTable(4, fake)
    d = base()
    t.apply(d, set())
    before = list(fake.chains["felix-a"])
    d = dict(d, **{"felix-a": ("-s 10.0.0.0 -j DROP", "-s 10.0.0.1 -j DROP",
                               "-s 10.0.0.15 -j DROP", "-s 10.0.0.2 -j DROP")})
    t.apply(d, {"felix-a"})
    desired_ok(fake, d)
    after = fake.chains["felix-a"]
    assert after[1] == before[0] and after[3] == before[1]      # the same rule objects
    # Nothing to do: no batch at all.
    n = len(fake.batches)
    t.apply(d, {"felix-a"})
    assert len(fake.batches) == n


def test_random_edits_always_end_in_the_desired_state():
    rnd = random.Random(4)
    fake = FakeIptables()
    t = IptablesTable(4, fake)
    pool = [f"-s 10.0.0.{i} -j DROP" for i in range(12)]
    desired = base()
    t.apply(desired, set())
    for _ in range(150):
        desired = dict(desired)
        chain = f"felix-c{rnd.randrange(4)}"
        if rnd.random() < 0.2:
            desired.pop(chain, None)
            desired[names.FORWARD] = tuple(f"-j {c}" for c in desired if c.startswith("felix-c"))
        else:
            desired[chain] = tuple(rnd.choice(pool) for _ in range(rnd.randrange(8)))
            desired[names.FORWARD] = tuple(f"-j {c}" for c in sorted(desired)
                                           if c.startswith("felix-c"))
        t.apply(desired, {chain, names.FORWARD})
        desired_ok(fake, desired)
        assert {c for c in fake.chains if c.startswith("felix-")} == set(desired)


def test_failure_is_an_error_and_the_next_apply_reconciles_in_full():
    fake = FakeIptables()
    t = IptablesTable(4, fake)
    t.apply(base(), set())
    fake.fail = True
    d = dict(base(), **{"felix-a": ("-j ACCEPT",)})
    with pytest.raises(DataplaneError, match="injected"):
        t.apply(d, {"felix-a"})
    fake.fail = False
    fake.chains["felix-a"].append((99, "-j RETURN"))              # drift meanwhile
    t.apply(d, set())                                              # nothing marked dirty...
    desired_ok(fake, d)                                            # ...but read back and fixed


def test_refresh_puts_hooks_back_on_top():
    fake = FakeIptables()
    t = IptablesTable(4, fake)
    t.apply(base(), set())
    fake.chains["INPUT"].insert(0, (50, "-j DROP"))                 # someone else, above us
    fake.chains["INPUT"].append((51, "-j felix-INPUT"))             # and a second jump
    t.refresh()
    t.apply(base(), set())
    assert fake.bodies("INPUT") == ("-j felix-INPUT", "-j DROP")


def test_render_deletes_stale_chains_after_their_references():
    state = parse_save("*filter\n:FORWARD ACCEPT [0:0]\n:felix-x - [0:0]\n:felix-y - [0:0]\n"
                       "-A felix-x -m comment --comment \"felix:0123456789abcdef\" -j felix-y\n"
                       "-A FORWARD -j felix-FORWARD\nCOMMIT\n")
    assert state.chains == {"felix-x": ["0123456789abcdef"], "felix-y": []}
    lines, new = render({names.FORWARD: ()}, {"felix-x", "felix-y", names.FORWARD}, state)
    assert lines.index("-F felix-x") < lines.index("-X felix-y")
    assert set(new.chains) == {names.FORWARD}


# -- Ipsets ------------------------------------------------------------------------------------

def test_ipsets_diff_members_and_leave_foreign_sets():
    fake = FakeIpsets()
    fake.sets = {"other": (4, {"1.1.1.1"}), "felix-4t-old": (4, {"2.2.2.2"})}
    s = Ipsets(fake)
    s.update({"felix-4t-a": SetSpec(4, frozenset({"10.0.0.1", "10.0.0.2"}))}, set())
    assert fake.sets["felix-4t-a"] == (4, {"10.0.0.1", "10.0.0.2"})
    s.remove_stale({"felix-4t-a": None})
    assert set(fake.sets) == {"other", "felix-4t-a"}
    s.update({"felix-4t-a": SetSpec(4, frozenset({"10.0.0.2", "10.0.0.3"}))}, {"felix-4t-a"})
    assert fake.sets["felix-4t-a"][1] == {"10.0.0.2", "10.0.0.3"}
    fake.fail = True
    with pytest.raises(DataplaneError):
        s.update({"felix-4t-a": SetSpec(4, frozenset())}, {"felix-4t-a"})
    fake.fail = False
    fake.sets["felix-4t-a"][1].add("9.9.9.9")                        # drift
    s.update({"felix-4t-a": SetSpec(4, frozenset())}, set())
    assert fake.sets["felix-4t-a"][1] == set()


# -- PolicyManager ------------------------------------------------------------------------------

def manager(**cfg):
    conf = config_mod.load(env={f"FELIX_{k}": v for k, v in cfg.items()})
    tables = {4: IptablesTable(4, FakeIptables()), 6: IptablesTable(6, FakeIptables())}
    ipsets = FakeIpsets()
    m = PolicyManager(conf, "h1", tables=tables, ipsets=Ipsets(ipsets), check_backend=False)
    return m, tables[4].backend, tables[6].backend, ipsets


def test_manager_applies_sets_before_rules_and_removes_them_after():
    store = Store("h1")
    f = Feeder(store)
    f.group("web")
    f.endpoint("h1", "w1", {"name": "cali1", "ipv4_nets": ["10.0.0.1/32"],
                            "ipv6_nets": ["fd00::1/128"], "profile_ids": ["web"]})
    m, v4, v6, sets = manager()
    m.on_changes(store, store.drain(), None)
    m.apply()
    assert sets.sets["felix-4t-web"] == (4, {"10.0.0.1"})
    assert sets.sets["felix-6t-web"] == (6, {"fd00::1"})
    assert v4.bodies("felix-pi-web")[1].startswith("-m set --match-set felix-4t-web src")
    assert v6.bodies("felix-pi-web")[1].startswith("-m set --match-set felix-6t-web src")
    assert v4.bodies("felix-fromd")[0] == "-i cali1 -s 10.0.0.1/32 -g felix-from-cali1"

    # A failing iptables commit: the error surfaces, nothing is lost, the retry succeeds.
    f.remove_endpoint("h1", "w1")
    m.on_changes(store, store.drain(), None)
    v4.fail = True
    with pytest.raises(DataplaneError):
        m.apply()
    assert "felix-4t-web" in sets.sets                    # still referenced by the old rules
    v4.fail = False
    m.on_changes(store, store.drain(), None)
    m.apply()
    assert "felix-pi-web" not in v4.chains and "felix-4t-web" not in sets.sets
    assert m.status()["chains"] > 0 and m.status()["applies"] == 1 + 1


def one_web_endpoint() -> Store:
    store = Store("h1")
    f = Feeder(store)
    f.group("web")
    f.endpoint("h1", "w1", {"name": "cali1", "ipv4_nets": ["10.0.0.1/32"],
                            "profile_ids": ["web"]})
    return store


def test_guard_writes_the_skeleton_on_a_cold_host_and_the_full_apply_still_reconciles():
    store = one_web_endpoint()
    m, v4, v6, _ = manager()
    v4.chains["felix-old"] = [(5, "-j DROP")]                      # left by an older run
    m.guard.apply()
    for fake in (v4, v6):
        assert fake.bodies("FORWARD")[0] == "-j felix-FORWARD"
        # Traffic to and from any workload interface goes to dispatch roots that drop it.
        assert fake.bodies("felix-tod") == ("-j DROP",)
        assert fake.bodies("felix-fromd") == ("-j DROP",)
        assert "-o cali+ -j felix-tod" in fake.bodies("felix-FORWARD")
        assert not [c for c in fake.chains if c.startswith("felix-to-")]
    assert "felix-old" in v4.chains                                 # the guard removes nothing
    assert not m.guard.fresh_host                                   # an older run's chain
    batches = len(v4.batches)

    m.on_changes(store, store.drain(), None)
    m.apply()
    assert v4.bodies("felix-tod")[0] == "-o cali1 -g felix-to-cali1"
    assert "felix-old" not in v4.chains                             # full reconcile after all
    assert len(v4.batches) == batches + 1
    m.guard.apply()                                                 # once per agent
    assert len(v4.batches) == batches + 1


def test_guard_leaves_the_chains_of_a_running_host_as_they_are():
    store = one_web_endpoint()
    m, v4, _, _ = manager()
    m.on_changes(store, store.drain(), None)
    m.apply()
    before = {c: list(r) for c, r in v4.chains.items()}
    batches = len(v4.batches)

    restarted = PolicyManager(config_mod.load(env={}), "h1", tables={4: IptablesTable(4, v4)},
                              ipsets=m.ipsets, check_backend=False)
    restarted.guard.apply()
    assert v4.chains == before and len(v4.batches) == batches       # not a rule rewritten
    assert not restarted.guard.fresh_host


def test_only_a_host_without_any_felix_chain_is_fresh():
    m, v4, v6, _ = manager()
    m.guard.apply()
    assert m.guard.fresh_host and "felix-tod" in v4.chains and "felix-tod" in v6.chains


def test_manager_reports_endpoint_problems_and_refreshes_on_message():
    store = Store("h1")
    f = Feeder(store)
    f.profile("bad", rules='{"inbound_rules": [{"action": "allow", "src_net": "10.0.0.300/32"}]}')
    f.endpoint("h1", "w1", {"name": "cali1", "ipv4_nets": ["10.0.0.1/32"], "profile_ids": ["bad"]})
    m, v4, _, _ = manager()
    m.on_changes(store, store.drain(), None)
    m.apply()
    (state, reason), = m.endpoint_problems().values()
    assert state == "error" and "profile bad" in reason and "not a valid CIDR" in reason
    assert v4.bodies("felix-pi-bad")[-1].endswith("-j DROP")
    v4.chains["INPUT"].insert(0, (77, "-j ACCEPT"))
    m.on_message(DataplaneRefresh())
    m.on_changes(store, store.drain(), None)
    m.apply()
    assert v4.bodies("INPUT")[0] == "-j felix-INPUT"


def test_manager_follows_endpoint_to_host_action_changes():
    store = Store("h1")
    m, v4, _, _ = manager(DEFAULT_ENDPOINT_TO_HOST_ACTION="DROP")
    m.on_changes(store, store.drain(), None)
    m.apply()
    assert v4.bodies(names.WL_TO_HOST)[-1] == "-j DROP"
    m._config_source = lambda: config_mod.load(env={"FELIX_DEFAULT_ENDPOINT_TO_HOST_ACTION":
                                                    "ACCEPT"})
    store.changes.config = True
    m.on_changes(store, store.drain(), None)
    m.apply()
    assert v4.bodies(names.WL_TO_HOST)[-1] == "-j ACCEPT"


# -- backend detection and error messages -------------------------------------------------------

class _Ran:
    def __init__(self, stdout="", returncode=0):
        self.stdout, self.returncode = stdout, returncode


def test_host_backend_names_what_the_host_iptables_programs():
    from felix_py.dataplane.iptables import host_backend
    assert host_backend(lambda *a, **k: _Ran("iptables v1.8.9 (nf_tables)\n")) == "nf_tables"
    assert host_backend(lambda *a, **k: _Ran("iptables v1.8.7 (legacy)\n")) == "legacy"

    def missing(*a, **k):
        raise FileNotFoundError("iptables")
    assert host_backend(missing) == "unknown"


def test_ipv6_is_left_out_when_ip6tables_cannot_run():
    from felix_py.dataplane.policy import available_families
    assert available_families(lambda *a, **k: _Ran(returncode=0)) == (4, 6)
    assert available_families(lambda *a, **k: _Ran(returncode=1)) == (4,)


def test_restore_errors_quote_the_line_that_failed():
    from felix_py.dataplane.iptables import _explain
    batch = ["*filter", ":felix-a - [0:0]", "-A felix-a -m set --match-set nope src -j DROP",
             "COMMIT"]
    msg = _explain("iptables-restore: line 3 failed\n", batch)
    assert msg.endswith("(line 3: -A felix-a -m set --match-set nope src -j DROP)")
