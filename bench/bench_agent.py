"""Agent benchmarks, in a throwaway network namespace.

- Cold start of 5,000 routes (1,000 endpoints x 5 addresses, 1,000 veths): the route
  manager's calc + apply on a fresh host, against ``ip -batch`` adding the same routes in
  the same namespace, same run.  Also the whole agent process from exec to ready.
- Endpoint add latency with 1,000 endpoints programmed: etcd put -> route in the kernel,
  seen on a netlink route-event socket, p50/p99; back to back (each add starts once the
  previous route is in) and spaced out (an add finds the agent idle, as a container start
  usually does).
- Agent memory (RSS) with 5,000 endpoints in the datastore.

Run (as root): python -m bench.bench_agent
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from bench.report import compile_project, median, percentile, write_section
from felix_py.calc.store import Store
from felix_py.datastore.client import EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.datastore.syncer import decode_kv
from felix_py.dataplane.links import LinkInfo, Links, LinkUpdate
from felix_py.dataplane.netlink import Netlink
from felix_py.dataplane.routes import RouteManager
from felix_py.lab.netns import Netns, unique_name, wait_for
from felix_py.lab.processes import AgentProcess

PROTO = 98
RTMGRP_IPV4_ROUTE = 0x40


def addr(i: int, j: int) -> str:
    n = i * 5 + j
    return f"10.{100 + (n >> 16)}.{(n >> 8) & 255}.{n & 255}"


def endpoint(i: int, nets: int = 5) -> dict:
    return {"name": f"cali{i}", "ipv4_nets": [f"{addr(i, j)}/32" for j in range(nets)],
            "profile_ids": ["bench"], "labels": {"app": f"a{i % 10}"}}


def inner_cold(n_eps: int, repeat: int) -> tuple[float, float]:
    """Runs inside the namespace: (ip -batch seconds, felix-py seconds), medians."""
    nl = Netlink()
    links = Links()
    for index, name, up, mac in nl.dump_links():
        links.apply(LinkUpdate(name, LinkInfo(index, name, up, mac)))
    layout = KeyLayout()
    ip_times, felix_times = [], []
    batch = tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False)
    batch.write("".join(f"route add {addr(i, j)}/32 dev cali{i} scope link proto {PROTO}\n"
                        for i in range(n_eps) for j in range(5)))
    batch.close()
    import json
    raw = [(layout.endpoint(EndpointId("bench", "k8s", f"w{i}", "eth0")),
            json.dumps(endpoint(i)).encode()) for i in range(n_eps)]
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(["ip", "-batch", batch.name], check=True)
        ip_times.append(time.perf_counter() - t0)
        subprocess.run(["ip", "route", "flush", "proto", str(PROTO)], check=True)
        # felix-py: the store filled from decoded updates, then calc + one netlink batch.
        store = Store("bench")
        for key, value in raw:
            store.apply(decode_kv(layout, key, value))
        changes = store.drain()
        t0 = time.perf_counter()
        mgr = RouteManager(PROTO)
        mgr.on_changes(store, changes, links)
        mgr.apply()
        felix_times.append(time.perf_counter() - t0)
        assert len(mgr.actual) == n_eps * 5
        mgr.close()
        subprocess.run(["ip", "route", "flush", "proto", str(PROTO)], check=True)
    os.unlink(batch.name)
    return median(ip_times), median(felix_times)


def route_socket() -> socket.socket:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.bind((0, RTMGRP_IPV4_ROUTE))
    return s


SPACING = 0.3      # seconds between spaced-out adds


def inner_latency(endpoints: str, prefix: str, n_adds: int, first: int,
                  gap: float) -> list[float]:
    """Inside the namespace, with the agent running: put -> RTM_NEWROUTE for that address;
    ``gap`` seconds between one route seen and the next put."""
    import struct
    client = EtcdClient(endpoints)
    reg = Registry(client, KeyLayout(prefix))
    sock = route_socket()
    out = []
    for k in range(n_adds):
        time.sleep(gap)
        i = first + k
        want = socket.inet_aton(addr(i, 0))
        t0 = time.perf_counter()
        reg.register_endpoint(EndpointId("bench", "k8s", f"w{i}", "eth0"), endpoint(i, 1))
        deadline = t0 + 10
        seen = False
        while not seen and time.perf_counter() < deadline:
            r, _, _ = select.select([sock], [], [], 0.5)
            if not r:
                continue
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                if mtype == 24 and want in data[off:off + length]:
                    seen = True
                off += (length + 3) & ~3
        if not seen:
            raise RuntimeError(f"route for endpoint {i} not seen within 10 s")
        out.append(time.perf_counter() - t0)
    client.close()
    return out


def make_veths(ns: Netns, count: int, start: int = 0) -> None:
    script = "".join(f"link add cali{i} type veth peer name peer{i}\nlink set cali{i} up\n"
                     for i in range(start, start + count))
    with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
        f.write(script)
        f.flush()
        ns.run(["ip", "-batch", f.name], timeout=600)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--adds", type=int, default=200)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--inner", choices=["cold", "latency"])
    ap.add_argument("--etcd", default="")
    ap.add_argument("--prefix", default="/bench")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--gap", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.inner == "cold":
        ip_s, felix_s = inner_cold(args.endpoints, args.repeat)
        print(f"{ip_s} {felix_s}")
        return
    if args.inner == "latency":
        print(" ".join(f"{x:.6f}" for x in inner_latency(args.etcd, args.prefix, args.adds,
                                                         args.first, args.gap)))
        return

    compile_project()
    ns = Netns(unique_name("bench-agent")).create()
    server = EmbeddedEtcd().start()
    agent = None
    try:
        print(f"creating {args.endpoints + args.adds} veths ...", flush=True)
        make_veths(ns, args.endpoints + args.adds)
        me = [sys.executable, "-m", "bench.bench_agent", "--endpoints", str(args.endpoints),
              "--repeat", str(args.repeat)]
        print("cold start: felix-py route manager vs ip -batch ...", flush=True)
        out = ns.run(me + ["--inner", "cold"], timeout=900).stdout.split()
        ip_s, felix_s = float(out[0]), float(out[1])

        client = EtcdClient(server.endpoint, timeout=60)
        layout = KeyLayout(args.prefix)
        reg = Registry(client, layout)
        reg.register_endpoints([(EndpointId("bench", "k8s", f"w{i}", "eth0"), endpoint(i))
                                for i in range(args.endpoints)])
        print("agent process cold start ...", flush=True)
        t0 = time.perf_counter()
        agent = AgentProcess(ns, "bench", server.unix_endpoint, args.prefix,
                             os.path.join(server.data_dir, "agent.log")).start()
        agent.wait_ready(reg, timeout=300)
        wait_for(lambda: len(ns.routes("proto", str(PROTO))) >= args.endpoints * 5,
                 timeout=120, what="all routes")
        agent_s = time.perf_counter() - t0
        spaced = args.adds // 4

        def latencies(adds: int, first: int, gap: float) -> list[float]:
            out = ns.run(me + ["--inner", "latency", "--etcd", server.unix_endpoint,
                               "--prefix", args.prefix, "--adds", str(adds), "--first",
                               str(first), "--gap", str(gap)], timeout=900).stdout
            return [float(x) for x in out.split()]
        print(f"endpoint add latency ({args.adds} adds back to back, {spaced} spaced) ...",
              flush=True)
        lat = latencies(args.adds - spaced, args.endpoints, 0.0)
        lat_idle = latencies(spaced, args.endpoints + args.adds - spaced, SPACING)
        rss_1k = rss_kib(agent.proc.pid)   # `ip netns exec` execs: the same pid
        print("memory with 5,000 endpoints ...", flush=True)
        more = 5000 - args.endpoints - args.adds
        for base in range(0, more, 1000):
            reg.register_endpoints([(EndpointId("bench-other", "k8s", f"x{i}", "eth0"),
                                     endpoint(50_000 + i, 1))
                                    for i in range(base, min(base + 1000, more))])
        time.sleep(3)
        rss_5k = rss_kib(agent.proc.pid)
        client.close()
    finally:
        if agent:
            agent.stop()
        ns.delete()
        server.destroy()

    n_routes = args.endpoints * 5
    body = f"""| measure | felix-py | baseline | ratio |
|---|---|---|---|
| cold start of {n_routes:,} routes ({args.endpoints:,} endpoints x 5 addresses): calc + apply, median of {args.repeat} | {felix_s * 1000:.0f} ms | `ip -batch` {ip_s * 1000:.0f} ms | **{felix_s / ip_s:.2f}x** (target <= 2x) |
| whole agent process, exec to ready with all {n_routes:,} routes (interpreter start, etcd snapshot, sysctls for {args.endpoints:,} interfaces, routes) | {agent_s:.2f} s | | |
| endpoint add latency, etcd put -> route in kernel, {len(lat)} adds back to back with {args.endpoints:,} present | p50 {percentile(lat, 50) * 1000:.1f} ms, p99 {percentile(lat, 99) * 1000:.1f} ms | | |
| the same, {len(lat_idle)} adds {SPACING:g} s apart (the agent idle when each comes) | p50 {percentile(lat_idle, 50) * 1000:.1f} ms, p99 {percentile(lat_idle, 99) * 1000:.1f} ms | | |
| agent RSS with {args.endpoints + args.adds:,} local endpoints | {rss_1k / 1024:.0f} MiB | | |
| agent RSS with 5,000 endpoints in the datastore ({args.endpoints + args.adds:,} local) | {rss_5k / 1024:.0f} MiB | | |

An endpoint is routed only once its chains are in (policy goes before routes in a batch,
except on a fresh host's first), and the policy apply dominates both figures:
`iptables-legacy-restore` rewrites the whole filter table, all {args.endpoints:,} endpoints'
chains, for one endpoint's rules.  An add that finds the agent idle is the time a
container start sees.
"""
    print(body)
    if not args.no_write:
        write_section("agent", "Agent: routes, latency, memory",
                      "python -m bench.bench_agent (as root)", body)


if __name__ == "__main__":
    main()
