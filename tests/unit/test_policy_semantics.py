"""The compiled chains mean what the model means.

A small interpreter walks the exact rule text ``HostPolicy`` produces (the subset of
iptables felix-py writes, with its ipsets) for packets through FORWARD and INPUT, and the
verdicts are compared with ``policy.testing.Oracle``, which evaluates the profiles directly
on the model.  Random worlds cover every key, negations, actions, several profiles per
endpoint, missing and broken profiles, local and remote endpoints.
"""

import ipaddress
import random
import shlex

import pytest

from felix_py.calc.store import Store
from policy import names
from policy.host import HostPolicy, Settings
from policy.testing import Feeder, Oracle, Packet

PROTO_NUM = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132, "udplite": 136}


class Verdict(Exception):
    pass


class Interpreter:
    """Evaluates felix-py's chains for one packet (a NEW connection)."""

    def __init__(self, chains: dict, sets: dict):
        self.chains = {c: [shlex.split(r) for r in rules] for c, rules in chains.items()}
        self.sets = {n: s.members for n, s in sets.items()}

    def run(self, hook: str, pkt: dict) -> str:
        pkt = dict(pkt, mark=0)
        try:
            if self._chain(names.HOOKS[hook], pkt) == "goto-return":
                pass
        except Verdict as v:
            return str(v)
        return "ACCEPT"        # the built-in chain's policy

    def _chain(self, chain: str, pkt: dict) -> str:
        for args in self.chains[chain]:
            target, targs = self._matches(args, pkt)
            if target is None:
                continue
            if target in ("ACCEPT", "DROP"):
                raise Verdict(target)
            if target == "RETURN":
                return "return"
            if target == "LOG":
                continue
            if target == "MARK":
                value, mask = (int(x, 16) for x in targs["--set-xmark"].split("/"))
                pkt["mark"] = (pkt["mark"] & ~mask) ^ value
                continue
            if targs.get("goto"):
                return self._chain(target, pkt)
            self._chain(target, pkt)
        return "return"

    def _matches(self, args: list, pkt: dict):
        i, neg, module = 0, False, None
        target, targs = None, {}
        while i < len(args):
            a = args[i]
            if a == "!":
                neg = True
                i += 1
                continue
            if a in ("-j", "-g"):
                target = args[i + 1]
                targs["goto"] = a == "-g"
                rest = args[i + 2:]
                for k in range(0, len(rest) - 1, 2):
                    targs[rest[k]] = rest[k + 1]
                break
            if a == "-m":
                module = args[i + 1]
                i += 2
                continue
            ok, used = self._one(a, args[i + 1:], module, pkt)
            if ok == neg:
                return None, None
            neg = False
            i += 1 + used
        return target, targs

    def _one(self, flag, rest, module, pkt):
        v = rest[0] if rest else None
        if flag in ("-i", "-o"):
            iface = pkt["in" if flag == "-i" else "out"] or ""
            return (iface.startswith(v[:-1]) if v.endswith("+") else iface == v), 1
        if flag in ("-s", "-d"):
            return ipaddress.ip_address(pkt["src" if flag == "-s" else "dst"]) in \
                ipaddress.ip_network(v), 1
        if flag == "-p":
            return PROTO_NUM.get(v, int(v) if v.isdigit() else -1) == pkt["proto"], 1
        if flag == "--match-set":
            return pkt[rest[1]] in self.sets[v], 2
        if flag in ("--sports", "--dports", "--sport", "--dport"):
            port = pkt["sport" if flag.startswith("--s") else "dport"]
            return port is not None and any(
                (int(p.split(":")[0]) <= port <= int(p.split(":")[1])) if ":" in p
                else port == int(p) for p in v.split(",")), 1
        if flag in ("--icmp-type", "--icmpv6-type"):
            t, _, c = v.partition("/")
            return pkt["icmp_type"] == int(t) and (not c or pkt["icmp_code"] == int(c)), 1
        if flag == "--mac-source":
            return pkt["mac"] == v, 1
        if flag == "--mark":
            value, mask = (int(x, 16) for x in v.split("/"))
            return (pkt["mark"] & mask) == value, 1
        if flag == "--ctstate":
            return "NEW" in v.split(","), 1       # every packet here starts a connection
        if flag == "--comment":
            return True, 1
        if flag in ("--src-range", "--dst-range"):
            lo, hi = (ipaddress.ip_address(x) for x in v.split("-"))
            return lo <= ipaddress.ip_address(pkt["src" if flag == "--src-range" else "dst"]) <= hi, 1
        raise AssertionError(f"interpreter does not know {flag} (module {module})")


# -- random worlds ------------------------------------------------------------------------------

GROUPS = ["g0", "g1", "g2"]
NETS = ["10.0.0.0/24", "10.0.1.0/25", "10.0.0.3/32"]
SELECTORS = ["role == 'a'", "has(tier)", "role in {'a','b'} && !has(tier)", "all()"]


def random_rule(rnd):
    r = {"action": rnd.choice(["allow", "allow", "deny", "deny", "log"])}
    proto = rnd.choice([None, "tcp", "udp", "icmp", 6])
    if proto is not None:
        r["protocol" if rnd.random() < 0.8 else "!protocol"] = proto
    for _ in range(rnd.randrange(3)):
        key = rnd.choice(["src_net", "dst_net", "src_tag", "dst_tag", "src_selector",
                          "dst_selector"])
        value = {"src_net": NETS, "dst_net": NETS, "src_tag": GROUPS + ["nobody"] * 0,
                 "dst_tag": GROUPS, "src_selector": SELECTORS, "dst_selector": SELECTORS}[key]
        r[("!" if rnd.random() < 0.3 else "") + key] = rnd.choice(value)
    if r.get("protocol") in ("tcp", "udp", 6) and rnd.random() < 0.6:
        key = rnd.choice(["dst_ports", "!dst_ports", "src_ports"])
        r[key] = rnd.sample([80, 443, "1000:2000", 5432, 22], rnd.randrange(1, 4))
    if r.get("protocol") == "icmp" and rnd.random() < 0.5:
        if rnd.random() < 0.5:
            r["icmp_type"] = rnd.choice([0, 8])
        else:
            r["!icmp_type"], r["!icmp_code"] = 8, 0
    return r


def random_world(rnd):
    store = Store("h1")
    f = Feeder(store)
    for g in GROUPS:
        rules = {"inbound_rules": [random_rule(rnd) for _ in range(rnd.randrange(4))],
                 "outbound_rules": [random_rule(rnd) for _ in range(rnd.randrange(3))]}
        f.profile(g, rules=rules, tags=[g], labels={"tier": "x"} if rnd.random() < 0.3 else {})
    if rnd.random() < 0.2:
        f.profile("g1", rules='{"inbound_rules": [{"src_net": "bad"}]}')
    eps = {}
    for i in range(8):
        host = "h1" if i < 5 else "h2"
        ip = f"10.0.{i % 2}.{i + 1}"
        profiles = rnd.sample(GROUPS + ["missing"], rnd.choice([0, 1, 2, 2, 3, 3]))
        labels = {"role": rnd.choice(["a", "b", "c"])} if rnd.random() < 0.7 else {}
        mac = f"02:00:00:00:00:{i:02x}"
        f.endpoint(host, f"w{i}", {"name": f"cali{i}", "ipv4_nets": [f"{ip}/32"], "mac": mac,
                                   "profile_ids": profiles, "labels": labels})
        eps[ip] = (host, f"cali{i}", mac)
    return store, eps


def packets(rnd, eps):
    ips = list(eps) + ["192.0.2.7"]
    for _ in range(120):
        src, dst = rnd.sample(ips, 2)
        proto = rnd.choice(["tcp", "udp", "icmp"])
        if proto == "icmp":
            t = rnd.choice([0, 8])
            yield Packet(src, dst, "icmp", icmp_type=t, icmp_code=0)
        else:
            yield Packet(src, dst, proto, dst_port=rnd.choice([80, 443, 1500, 5432, 22, 9]),
                         src_port=rnd.choice([80, 40000]))


@pytest.mark.parametrize("seed", range(60))
def test_compiled_chains_agree_with_the_model(seed):
    rnd = random.Random(seed)
    store, eps = random_world(rnd)
    hp = HostPolicy("h1", Settings(families=(4,)))
    hp.update(store, store.drain())
    interp = Interpreter(hp.chains[4], hp.sets)
    oracle = Oracle(store)
    checked = 0
    for p in packets(rnd, eps):
        src_local = eps.get(p.src, ("",))[0] == "h1"
        dst_local = eps.get(p.dst, ("",))[0] == "h1"
        if not (src_local or dst_local):
            continue        # not this host's business
        want = True
        if src_local:
            want = oracle.decide(oracle.by_ip[p.src], "outbound", p)
        if dst_local and want:
            want = oracle.decide(oracle.by_ip[p.dst], "inbound", p)
        pkt = {"in": eps[p.src][1] if src_local else "uplink",
               "out": eps[p.dst][1] if dst_local else "uplink",
               "src": p.src, "dst": p.dst, "proto": PROTO_NUM[p.protocol],
               "sport": p.src_port, "dport": p.dst_port, "icmp_type": p.icmp_type,
               "icmp_code": p.icmp_code, "mac": eps[p.src][2] if p.src in eps else None}
        got = interp.run("FORWARD", pkt) == "ACCEPT"
        assert got == want, (p, hp.chains[4])
        checked += 1
        if src_local:
            # The same packet with a forged source address or MAC never gets through.
            spoofed = dict(pkt, src="10.0.3.3")
            assert interp.run("FORWARD", spoofed) == "DROP"
            assert interp.run("FORWARD", dict(pkt, mac="02:ff:ff:ff:ff:ff")) == "DROP"
    assert checked > 10


def test_workload_to_host_path():
    store = Store("h1")
    f = Feeder(store)
    f.group("g")
    f.endpoint("h1", "w", {"name": "caliw", "ipv4_nets": ["10.0.0.1/32"], "profile_ids": ["g"]})
    for action, other in (("DROP", "DROP"), ("ACCEPT", "ACCEPT"), ("RETURN", "ACCEPT")):
        hp = HostPolicy("h1", Settings(families=(4,), endpoint_to_host_action=action))
        hp.update(store, Feeder(store).store.changes.__class__(
            endpoints=set(store.endpoints), profiles=set(store.profile_rules)))
        interp = Interpreter(hp.chains[4], hp.sets)
        base = {"in": "caliw", "out": None, "src": "10.0.0.1", "dst": "192.0.2.1",
                "proto": 6, "sport": 40000, "icmp_type": None, "icmp_code": None, "mac": None}
        assert interp.run("INPUT", dict(base, dport=22)) == "ACCEPT"      # failsafe
        assert interp.run("INPUT", dict(base, dport=53)) == "ACCEPT"      # DNS
        assert interp.run("INPUT", dict(base, proto=17, sport=68, dport=67,
                                        src="0.0.0.0")) == "ACCEPT"      # DHCP
        assert interp.run("INPUT", dict(base, dport=8080)) == other
        assert interp.run("INPUT", dict(base, dport=22, src="10.9.9.9")) == "DROP"   # spoofed
        assert interp.run("INPUT", dict(base, dport=8080, **{"in": "uplink"})) == "ACCEPT"
        assert interp.run("OUTPUT", dict(base, dport=2379, **{"in": None})) == "ACCEPT"
