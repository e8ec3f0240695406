"""IPAM benchmarks: the cost of an allocation, and how much block aggregation shrinks the
fabric's routing tables.

- Allocation: ``Ipam.auto_assign`` of one address (reads, compare-and-swap transaction on
  block and handle) and ``release_by_handle``, against a bare etcd put / delete of one key
  with the same client: the price of conflict-free allocation in round trips.
- Aggregation: racks of hosts allocate addresses for their workloads (interleaved, as
  containers start everywhere at once), register them, then a third of them go and are
  replaced.  Each host's announcements are computed by the agent's own calc
  (``calc.routes.exported_prefixes`` over a Store loaded from etcd); a ToR holds its rack's
  announcements, the core everyone's.  Compared with one /32 per workload.  Two fabrics:
  strict affinity with a roomy pool (downward default), and no strict affinity with a pool
  too small for one block per host, so that some hosts borrow.

Run: python -m bench.bench_ipam [--racks 4 --hosts 9 --workloads 50]
"""

from __future__ import annotations

import argparse
import logging
import random
import time

from bench.report import write_section
from felix_py.calc.routes import exported_prefixes
from felix_py.calc.store import Store
from felix_py.datastore.client import EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.datastore.syncer import decode_kv
from felix_py.ipam import Ipam


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


def allocation(client: EtcdClient, n: int) -> str:
    layout = KeyLayout("/bench-alloc")
    Registry(client, layout).add_pool("10.96.0.0/16")
    ipam = Ipam(client, layout, "h1")
    alloc = timed(lambda i: ipam.auto_assign(f"w{i}", 1), n)
    release = timed(lambda i: ipam.release_by_handle(f"w{i}"), n)
    put = timed(lambda i: client.put(f"/bench-raw/k{i}", "x" * 200), n)
    delete = timed(lambda i: client.delete(f"/bench-raw/k{i}"), n)
    client.delete_prefix("/bench-alloc/")
    return (f"| operation ({n} in a row, one host) | felix-py IPAM | bare etcd put/delete "
            f"| ratio |\n|---|---|---|---|\n"
            f"| allocate one address | {alloc * 1000:.2f} ms | {put * 1000:.2f} ms "
            f"| {alloc / put:.1f}x |\n"
            f"| release by handle | {release * 1000:.2f} ms | {delete * 1000:.2f} ms "
            f"| {release / delete:.1f}x |\n")


def fabric(client: EtcdClient, name: str, racks: int, hosts: int, workloads: int,
           pool: str, strict: bool, seed: int = 1) -> dict:
    layout = KeyLayout(f"/bench-{name}")
    registry = Registry(client, layout)
    registry.add_pool(pool)
    names = [f"r{r}-h{h}" for r in range(racks) for h in range(hosts)]
    ipams = {h: Ipam(client, layout, h) for h in names}
    if strict:
        ipams[names[0]].set_config(strict_affinity=True)
    rng = random.Random(seed)
    live: dict[str, list[tuple[EndpointId, str]]] = {h: [] for h in names}
    counter = 0

    def start(host: str) -> None:
        nonlocal counter
        counter += 1
        eid = EndpointId(host, "cni", f"c{counter}", "eth0")
        handle = f"net.c{counter}.eth0"
        ip = ipams[host].auto_assign(handle, 1, attrs={"endpoint": str(eid)})[0]
        registry.register_endpoint(eid, {"name": f"cali{counter:011x}"[:15],
                                         "ipv4_nets": [f"{ip}/32"]})
        live[host].append((eid, handle))

    def stop(host: str) -> None:
        eid, handle = live[host].pop(rng.randrange(len(live[host])))
        registry.remove_endpoint(eid)
        ipams[host].release_by_handle(handle)

    for _ in range(workloads):                    # interleaved: everyone starts at once
        for h in names:
            start(h)
    for _ in range(workloads // 3):               # churn: a third go and are replaced
        for h in names:
            stop(h)
    for _ in range(workloads // 3):
        for h in names:
            start(h)

    snapshot = client.get_prefix(layout.prefix + "/")[0]
    per_host = {}
    for h in names:
        store = Store(h)
        for key, value, _ in snapshot:
            store.apply(decode_kv(layout, key, value))
        per_host[h] = exported_prefixes(store)
    client.delete_prefix(layout.prefix + "/")
    tor = [set().union(*(per_host[f"r{r}-h{h}"] for h in range(hosts))) for r in range(racks)]
    core = set().union(*per_host.values())
    addresses = racks * hosts * workloads
    return {"name": name, "addresses": addresses, "hosts": racks * hosts,
            "tor_plain": hosts * workloads, "tor": max(len(t) for t in tor),
            "core_plain": addresses, "core": len(core),
            "blocks": sum(1 for p in core if not p.endswith("/32")),
            "single": sum(1 for p in core if p.endswith("/32"))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--racks", type=int, default=4)
    ap.add_argument("--hosts", type=int, default=9, help="hosts per rack")
    ap.add_argument("--workloads", type=int, default=50, help="workloads per host")
    ap.add_argument("--allocations", type=int, default=500)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with EmbeddedEtcd() as etcd:
        client = EtcdClient(etcd.endpoint)
        alloc_table = allocation(client, args.allocations)
        print(alloc_table)
        n_hosts = args.racks * args.hosts
        # A pool with room for every host, and one with 32 blocks of 64 for more hosts.
        results = [fabric(client, "strict", args.racks, args.hosts, args.workloads,
                          "10.64.0.0/16", strict=True),
                   fabric(client, "borrowing", args.racks, args.hosts, args.workloads,
                          "10.80.0.0/21", strict=False)]
    rows = "\n".join(
        f"| {r['name']} | {r['hosts']} | {r['addresses']} | {r['tor_plain']} | {r['tor']} "
        f"| {r['tor_plain'] / r['tor']:.1f}x | {r['core_plain']} | {r['core']} "
        f"({r['blocks']} blocks + {r['single']} /32) | {r['core_plain'] / r['core']:.1f}x |"
        for r in results)
    body = (alloc_table + "\n"
            f"Route tables of a fabric of {args.racks} racks x {args.hosts} hosts, "
            f"{args.workloads} workloads per host, a third replaced; /26 blocks. "
            f"\"strict\": strict affinity, pool 10.64.0.0/16; \"borrowing\": no strict "
            f"affinity, pool 10.80.0.0/21 (32 blocks for {n_hosts} hosts).\n\n"
            "| fabric | hosts | workloads | ToR routes, one /32 each | ToR routes, blocks "
            "| smaller | core routes, one /32 each | core routes, blocks | smaller |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + rows + "\n")
    print(body)
    write_section("ipam", "IPAM: allocation cost and route aggregation",
                  "python -m bench.bench_ipam", body)


if __name__ == "__main__":
    main()
