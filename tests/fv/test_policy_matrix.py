"""Policy for real: two agents, six workloads in three groups, the connectivity matrix.

Hosts A and B are joined by a veth and static routes (until BGP lands); each runs the real
agent.  Groups are written through ``policy.groups`` as felixctl does.  Every ordered pair
of workloads is tried with ICMP echo and with TCP on the exported port and on one nobody
opened; the observed matrix must equal what ``policy.testing.Oracle`` computes from the
same datastore contents.  Then membership changes, a profile breaks, and the matrix follows.
"""

import json
import subprocess
import sys
import time

import pytest
from agentkit import listen

from felix_py.datastore.keys import EndpointId, Kind
from felix_py.calc.store import Store
from felix_py.datastore.syncer import Update
from felix_py import model
from felix_py.lab import netns as nsmod
from felix_py.lab.processes import AgentProcess
from policy import groups
from policy.testing import Oracle, Packet

ALLOWED_PORT, CLOSED_PORT = 5432, 9999
HOST_A, HOST_B = "pol-a", "pol-b"

# name -> (host, ip, groups, labels)
WORKLOADS = {
    "a1": (HOST_A, "10.65.0.1", ["web"], {"role": "frontend"}),
    "a2": (HOST_A, "10.65.0.2", ["db"], {"role": "primary"}),
    "a3": (HOST_A, "10.65.0.3", ["ops"], {}),
    "b1": (HOST_B, "10.65.1.1", ["web"], {"role": "frontend"}),
    "b2": (HOST_B, "10.65.1.2", ["db"], {"role": "replica"}),
    "b3": (HOST_B, "10.65.1.3", ["ops"], {}),
}

PROBER = """
import json, socket, subprocess, sys
from concurrent.futures import ThreadPoolExecutor
def probe(p):
    dst, kind, port = p
    if kind == "icmp":
        return subprocess.run(["ping", "-n", "-q", "-c", "1", "-W", "1", dst],
                              capture_output=True).returncode == 0
    s = socket.socket()
    s.settimeout(1.0)
    try:
        s.connect((dst, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
probes = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(probes)) as ex:
    print(json.dumps(list(ex.map(probe, probes))))
"""


def eid(name):
    return EndpointId(WORKLOADS[name][0], "k8s", name, "eth0")


def probe_all(sources: dict, probes: dict) -> dict:
    """sources: name -> Netns; probes: name -> [(dst, kind, port)]; all run at once."""
    procs = {n: subprocess.Popen(sources[n].exec_argv([sys.executable, "-c", PROBER,
                                                      json.dumps(probes[n])]),
                                 stdout=subprocess.PIPE, text=True)
             for n in probes}
    out = {}
    for n, p in procs.items():
        stdout, _ = p.communicate(timeout=30)
        out[n] = json.loads(stdout)
    return out


KINDS = (("icmp", None), ("tcp", ALLOWED_PORT), ("tcp", CLOSED_PORT))


def observed_matrix(wls) -> dict:
    probes = {s: [(WORKLOADS[d][1], k, p) for d in WORKLOADS if d != s for k, p in KINDS]
              for s in WORKLOADS}
    results = probe_all(wls, probes)
    out = {}
    for s in WORKLOADS:
        it = iter(results[s])
        for d in WORKLOADS:
            if d != s:
                for k, p in KINDS:
                    out[(s, d, k, p)] = next(it)
    return out


def store_from_etcd(client, layout, prefix) -> Store:
    """What the agents see, read straight from etcd: the oracle's input."""
    store = Store(HOST_A)
    items, _ = client.get_prefix(prefix + "/v1/")
    for key, value, _ in items:
        pk = layout.parse(key)
        if pk.kind not in (Kind.ENDPOINT, Kind.PROFILE_RULES, Kind.PROFILE_TAGS,
                           Kind.PROFILE_LABELS):
            continue
        try:
            store.apply(Update(key, pk, model.decode(pk, value)))
        except model.ModelError as e:
            store.apply(Update(key, pk, error=e))
    return store


def expected_matrix(store) -> dict:
    oracle = Oracle(store)
    out = {}
    for s in WORKLOADS:
        for d in WORKLOADS:
            if d == s:
                continue
            src, dst = WORKLOADS[s][1], WORKLOADS[d][1]
            for k, p in KINDS:
                pkt = Packet(src, dst, "icmp", icmp_type=8, icmp_code=0) if k == "icmp" \
                    else Packet(src, dst, "tcp", dst_port=p, src_port=40000)
                out[(s, d, k, p)] = oracle.allowed(pkt)
    return out


def assert_matrix(wls, client, layout, prefix, timeout=20):
    """The observed matrix converges to the expected one (policy is applied asynchronously)."""
    want = expected_matrix(store_from_etcd(client, layout, prefix))
    deadline = time.monotonic() + timeout
    while True:
        got = observed_matrix(wls)
        if got == want:
            return want
        if time.monotonic() > deadline:
            diff = [f"{s}->{d} {k}{'/' + str(p) if p else ''}: expected "
                    f"{'open' if want[key] else 'closed'}, saw {'open' if got[key] else 'closed'}"
                    for key in sorted(want) if want[key] != got[key] for s, d, k, p in [key]]
            pytest.fail("connectivity matrix differs:\n  " + "\n  ".join(diff))
        time.sleep(0.5)


@pytest.fixture
def fabric(host_factory, netns_factory, workload_factory, registry, etcd, prefix, tmp_path):
    host_a, host_b = host_factory("pa"), host_factory("pb")
    nsmod.veth(host_a, "peer", host_b, "peer")
    host_a.addr("peer", "198.51.100.1/30")
    host_b.addr("peer", "198.51.100.2/30")
    host_a.run("ip route add 10.65.1.0/24 via 198.51.100.2")
    host_b.run("ip route add 10.65.0.0/24 via 198.51.100.1")
    hosts = {HOST_A: host_a, HOST_B: host_b}

    for g in ("web", "db", "ops"):
        rules, tags = groups.new_group(g)
        if g == "db":
            # db opens its primary on 5432 to web; web reaches nothing else of db.
            rules = groups.add_export(rules, "db", "web", selector='role == "primary"',
                                      protocol="tcp", ports=[ALLOWED_PORT])
        registry.set_profile(g, rules=rules, tags=tags)
    # a3 and b1 are paired by address, whatever their groups.
    pair = groups.pair_profile_id(eid("a3"), eid("b1"))
    registry.set_profile(pair, rules=groups.pair_rules(["10.65.0.3/32"], ["10.65.1.1/32"]))

    wls = {}
    for name, (host, ip, gs, labels) in WORKLOADS.items():
        wl = workload_factory(hosts[host], name, f"cali{name}", ip)
        profile_ids = gs + ([pair] if name in ("a3", "b1") else [])
        registry.register_endpoint(eid(name), {"name": f"cali{name}", "ipv4_nets": [f"{ip}/32"],
                                               "mac": nsmod.mac_of(wl, "eth0"),
                                               "profile_ids": profile_ids, "labels": labels})
        listen(wl, [ALLOWED_PORT, CLOSED_PORT])
        wls[name] = wl

    agents = []
    for hostname, ns in hosts.items():
        agents.append(AgentProcess(ns, hostname, etcd.unix_endpoint, prefix,
                                  str(tmp_path / f"agent-{hostname}.log")).start())
    try:
        for a in agents:
            a.wait_ready(registry)
        yield hosts, wls, pair
    finally:
        for a in agents:
            a.stop()


def test_matrix_follows_groups_exports_pairs_and_membership(fabric, registry, client, layout,
                                                            prefix):
    hosts, wls, pair = fabric
    want = assert_matrix(wls, client, layout, prefix)
    # The scenario holds what it claims to test (not only what the oracle says).
    assert want[("a1", "a2", "tcp", ALLOWED_PORT)] and want[("b1", "a2", "tcp", ALLOWED_PORT)]
    assert not want[("a1", "a2", "tcp", CLOSED_PORT)] and not want[("a1", "a2", "icmp", None)]
    assert not want[("a1", "b2", "tcp", ALLOWED_PORT)] and not want[("a2", "a1", "icmp", None)]
    assert want[("a3", "b1", "tcp", CLOSED_PORT)] and want[("b1", "a3", "icmp", None)]
    assert not want[("a3", "a1", "icmp", None)] and want[("a1", "b1", "tcp", CLOSED_PORT)]

    # b1 moves from web to ops: it joins the ops members and loses web and the export.
    registry.update_endpoint(eid("b1"), profile_ids=["ops", pair])
    want = assert_matrix(wls, client, layout, prefix)
    assert want[("b1", "b3", "icmp", None)] and not want[("b1", "a2", "tcp", ALLOWED_PORT)]
    assert not want[("a1", "b1", "icmp", None)]

    # A broken profile: its members fall back to deny-all, everyone else is unaffected.
    client.put(layout.build(Kind.PROFILE_RULES, profile="ops"),
               json.dumps({"inbound_rules": [{"action": "allow", "protocol": "tcp",
                                              "dst_ports": [70000]}]}))
    want = assert_matrix(wls, client, layout, prefix)
    assert not want[("a3", "b3", "icmp", None)] and want[("a1", "a2", "tcp", ALLOWED_PORT)]
    nsmod.wait_for(lambda: (st := registry.endpoint_status(eid("a3"))) is not None
                   and st.status == "error" and "ops" in (st.reason or ""),
                   what="a3 reported in error because of profile ops")


def test_spoofing_host_access_and_failsafes(fabric, registry):
    hosts, wls, _ = fabric
    host_a, host_b = hosts[HOST_A], hosts[HOST_B]
    a1 = wls["a1"]
    assert a1.ping("10.65.1.1")                       # a1 -> b1, both web

    # A source address that is not the workload's own is dropped, by rp_filter and, with
    # rp_filter off, by the anti-spoofing rules alone.
    a1.addr("eth0", "10.65.0.99/32")
    assert not a1.ok("ping -n -q -c 1 -W 1 -I 10.65.0.99 10.65.1.1")
    host_a.sysctl("net.ipv4.conf.calia1.rp_filter", 0)
    host_a.sysctl("net.ipv4.conf.all.rp_filter", 0)
    before = _dispatch_drops(host_a)
    assert not a1.ok("ping -n -q -c 1 -W 1 -I 10.65.0.99 10.65.1.1")
    assert _dispatch_drops(host_a) > before
    assert a1.ping("10.65.1.1")

    # Workload to its host: only DHCP, DNS and the failsafe ports (tcp 22) get through.
    host_ip = "198.51.100.1"
    listen(host_a, [22, 53, 8080])
    probes = probe_all({"a1": a1}, {"a1": [(host_ip, "tcp", 22), (host_ip, "tcp", 53),
                                           (host_ip, "tcp", 8080), (host_ip, "icmp", None)]})
    assert probes["a1"] == [True, True, False, False]
    # ...while other hosts reach the same services (felix-py leaves host traffic alone).
    probes = probe_all({"b": host_b}, {"b": [(host_ip, "tcp", 8080), (host_ip, "icmp", None)]})
    assert probes["b"] == [True, True]

    # Failsafe outbound: the host reaches tcp 2379 even if its own OUTPUT rules drop it.
    listen(host_b, [2379, 2381])
    for port in (2379, 2381):
        host_a.run(f"iptables-legacy -A OUTPUT -p tcp --dport {port} -j DROP")
    probes = probe_all({"a": host_a}, {"a": [("198.51.100.2", "tcp", 2379),
                                             ("198.51.100.2", "tcp", 2381)]})
    assert probes["a"] == [True, False]

    # DefaultEndpointToHostAction ACCEPT opens the host to its workloads.
    registry.set_config("DefaultEndpointToHostAction", "ACCEPT")
    nsmod.wait_for(lambda: probe_all({"a1": a1}, {"a1": [(host_ip, "tcp", 8080)]})["a1"][0],
                   timeout=15, what="workload reaching host port 8080 after ACCEPT")


def _dispatch_drops(host) -> int:
    """Packets dropped by the last rule of the from-workload dispatch chain."""
    out = host.run("iptables-legacy -L felix-fromd -v -x -n").stdout.splitlines()
    drops = [ln for ln in out if ln.split()[2:3] == ["DROP"]]
    return int(drops[-1].split()[0])

