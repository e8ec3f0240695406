"""IPAM against a real etcd: block affinity, claiming, borrowing, strict affinity, handles,
concurrent allocators, garbage collection after a crash, and `felixctl ipam`."""

import ipaddress
import json
import subprocess
import sys
import textwrap

import pytest
from ctlkit import Ctl

from felix_py.datastore.keys import EndpointId, Kind
from felix_py.ipam import (AddressInUse, HandleInUse, Ipam, NoPool, PoolExhausted, blocks,
                           gc)


@pytest.fixture
def ipam_for(client, layout, registry):
    return lambda host: Ipam(client, layout, host)


@pytest.fixture
def ctl(client, etcd, prefix):
    return Ctl(client, etcd.endpoint, prefix)


def in_block(ip, cidr):
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


def state(client, layout):
    """Every IPAM key's decoded record, to prove what an operation left behind."""
    items = client.get_prefix(layout.dir("ipam/v2"))[0]
    return {k: json.loads(v) for k, v, _ in items}


def test_own_blocks_first_then_a_new_block_then_borrowing(registry, ipam_for):
    registry.add_pool("10.65.0.0/26", block_size=28)          # 4 blocks of 16
    a, b = ipam_for("host-a"), ipam_for("host-b")
    got_a = [a.auto_assign(f"a{i}", 1)[0] for i in range(20)]
    assert len(a.affine_blocks("host-a", 4)) == 2             # 16 in the first, 4 in a new one
    assert all(any(in_block(ip, c) for c in a.affine_blocks("host-a", 4)) for ip in got_a)

    got_b = b.auto_assign("b-all", 40)
    b_blocks = b.affine_blocks("host-b", 4)
    assert len(b_blocks) == 2                                  # the two blocks left
    own = [ip for ip in got_b if any(in_block(ip, c) for c in b_blocks)]
    borrowed = [ip for ip in got_b if ip not in own]
    assert len(own) == 32 and len(borrowed) == 8
    assert all(any(in_block(ip, c) for c in a.affine_blocks("host-a", 4)) for ip in borrowed)
    info = a.lookup(borrowed[0])
    assert info.borrowed and info.block_host == "host-a" and info.attrs["host"] == "host-b"
    assert len(set(got_a) | set(got_b)) == 60

    assert len(a.auto_assign("a-last", 4)) == 4                # the last 4 free addresses
    with pytest.raises(PoolExhausted, match="have no free address for host host-a"):
        a.auto_assign("a-more", 1)


def test_strict_affinity_never_borrows_and_a_failed_allocation_holds_nothing(
        registry, ipam_for, client, layout):
    registry.add_pool("10.65.0.0/27", block_size=28)          # 2 blocks
    a, b = ipam_for("host-a"), ipam_for("host-b")
    a.set_config(strict_affinity=True)
    a.auto_assign("a1", 1)
    b.auto_assign("b1", 10)
    before = state(client, layout)
    # host-b's own block has 6 left and host-a's block 15, but b may not borrow.
    with pytest.raises(PoolExhausted, match="strict affinity forbids borrowing"):
        b.auto_assign("b2", 7)
    assert state(client, layout) == before                     # the 6 it took were given back
    assert b.handle("b2") is None
    assert blocks.used_count(dict(b.blocks())[b.affine_blocks("host-b", 4)[0]]) == 10
    # A block claimed under strict affinity is marked so: nobody borrows from it later.
    a.set_config(strict_affinity=False)
    assert all(blk.strict_affinity for _, blk in a.blocks())
    with pytest.raises(PoolExhausted):
        b.auto_assign("b3", 7)


def test_release_by_handle_frees_exactly_its_addresses(registry, ipam_for):
    registry.add_pool("10.65.0.0/24")
    a = ipam_for("host-a")
    one = a.auto_assign("c1.eth0", 3)
    two = a.auto_assign("c2.eth0", 2)
    assert a.ips_by_handle("c1.eth0") == one and a.handle("c1.eth0").block
    assert sorted(a.release_by_handle("c1.eth0")) == sorted(one)
    assert a.handle("c1.eth0") is None and a.ips_by_handle("c1.eth0") == []
    assert a.ips_by_handle("c2.eth0") == two
    assert all(a.lookup(ip) is None for ip in one)
    assert all(a.lookup(ip).handle_id == "c2.eth0" for ip in two)
    assert a.release_by_handle("c1.eth0") == []               # idempotent
    # Releasing by address only frees what the given handle holds.
    assert a.release_ips(two, handle_id="someone-else") == []
    assert a.release_ips(two[:1], handle_id="c2.eth0") == two[:1]
    assert a.handle("c2.eth0").block == {a.lookup(two[1]).block: 1}


def test_exclusive_allocation_refuses_a_handle_in_use(registry, ipam_for):
    registry.add_pool("10.65.0.0/24")
    a = ipam_for("host-a")
    first = a.auto_assign("c1.eth0", 1, exclusive=True)
    with pytest.raises(HandleInUse, match="c1.eth0"):
        a.auto_assign("c1.eth0", 1, exclusive=True)
    assert a.ips_by_handle("c1.eth0") == first


def test_static_address_claims_its_block_and_conflicts_are_refused(registry, ipam_for):
    registry.add_pool("10.65.0.0/24")
    a, b = ipam_for("host-a"), ipam_for("host-b")
    assert a.assign_ip("10.65.0.77", "s1") == "10.65.0.77"
    assert a.affine_blocks("host-a", 4) == ["10.65.0.64/26"]
    with pytest.raises(AddressInUse, match="held by handle s1"):
        b.assign_ip("10.65.0.77", "s2")
    assert b.assign_ip("10.65.0.78", "s2") == "10.65.0.78"     # borrowed: a's block
    with pytest.raises(NoPool, match="in no enabled IPv4 pool"):
        a.assign_ip("192.0.2.1", "s3")


def test_ipv6_and_pool_selection(registry, ipam_for):
    registry.add_pool("10.65.0.0/24")
    registry.add_pool("10.66.0.0/24")
    registry.add_pool("fd00:65::/120")
    registry.add_pool("10.67.0.0/24", disabled=True)
    a = ipam_for("host-a")
    got = a.auto_assign("dual", 1, 1, pools4=["10.66.0.0/24"])
    v4, v6 = (ipaddress.ip_address(x) for x in got)
    assert v4 in ipaddress.ip_network("10.66.0.0/24") and v6.version == 6
    assert a.affine_blocks("host-a", 6)[0].endswith("/122")
    with pytest.raises(NoPool, match="disabled"):
        a.auto_assign("x", 1, pools4=["10.67.0.0/24"])
    with pytest.raises(NoPool, match="does not exist"):
        a.auto_assign("x", 1, pools4=["10.99.0.0/24"])
    assert a.handle("x") is None


CONCURRENT = textwrap.dedent("""
    import json, sys
    from felix_py.datastore.client import EtcdClient
    from felix_py.datastore.keys import KeyLayout
    from felix_py.ipam import Ipam
    endpoint, prefix, name, count = sys.argv[1:5]
    ipam = Ipam(EtcdClient(endpoint), KeyLayout(prefix), "host-a")
    sys.stdin.readline()                      # start together
    got = [ipam.auto_assign(f"{name}-{i}", 1)[0] for i in range(int(count))]
    print(json.dumps(got))
""")


def test_two_processes_allocating_at_once_get_distinct_addresses(etcd, registry, prefix,
                                                                 ipam_for):
    registry.add_pool("10.65.0.0/20")
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, etcd.endpoint, prefix, name,
                               "500"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name in ("p1", "p2")]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0
        results.append(json.loads(out))
    every = results[0] + results[1]
    assert len(every) == 1000 and len(set(every)) == 1000
    a = ipam_for("host-a")
    stored = {x.ip: x.handle_id for x in a.allocations()}
    assert len(stored) == 1000
    assert {stored[ip] for ip in results[0]} == {f"p1-{i}" for i in range(500)}
    # Own blocks are filled before new ones are claimed: 1000 addresses, 16 blocks of 64.
    assert len(a.affine_blocks("host-a", 4)) == 16


CRASH = textwrap.dedent("""
    import os, sys
    from felix_py.datastore.client import EtcdClient
    from felix_py.datastore.keys import KeyLayout
    from felix_py.ipam import Ipam
    endpoint, prefix = sys.argv[1:3]
    ipam = Ipam(EtcdClient(endpoint), KeyLayout(prefix), "host-a")
    print(ipam.auto_assign("net.crashed.eth0", 1,
                           attrs={"endpoint": "host-a/cni/crashed/eth0"})[0], flush=True)
    os._exit(9)                               # dies before registering the endpoint
""")


def test_gc_frees_the_address_of_an_orchestrator_that_crashed_before_registering(
        etcd, registry, prefix, ipam_for, ctl):
    registry.add_pool("10.65.0.0/24")
    a = ipam_for("host-a")
    live_eid = EndpointId("host-a", "cni", "alive", "eth0")
    live = a.auto_assign("net.alive.eth0", 1, attrs={"endpoint": str(live_eid)})[0]
    registry.register_endpoint(live_eid, {"name": "cali1", "ipv4_nets": [f"{live}/32"]})
    manual = a.auto_assign("by-hand", 1)[0]                  # no endpoint: never collected
    crash = subprocess.run([sys.executable, "-c", CRASH, etcd.endpoint, prefix],
                           capture_output=True, text=True, timeout=60)
    assert crash.returncode == 9
    leaked = crash.stdout.strip()
    assert a.lookup(leaked).handle_id == "net.crashed.eth0"

    # Within the grace period an allocation may be an ADD between its two steps.
    assert "Released 0 leaked addresses" in ctl("ipam", "gc")
    out = ctl("ipam", "gc", "--min-age", "0", "--dry-run")
    assert "Would release 1" in out and leaked in out and "host-a/cni/crashed/eth0" in out
    assert a.lookup(leaked) is not None
    assert "Released 1 leaked address." in ctl("ipam", "gc", "--min-age", "0")
    assert a.lookup(leaked) is None and a.handle("net.crashed.eth0") is None
    assert a.lookup(live).handle_id == "net.alive.eth0"
    assert a.lookup(manual).handle_id == "by-hand"
    assert gc.find_leaks(a, min_age=0) == []


def test_felixctl_ipam_show_allocate_release_config(registry, ctl, client, layout):
    registry.add_pool("10.65.0.0/24")
    got = ctl.json("ipam", "allocate", "--host", "host-a", "--handle", "h1", "--ipv4", "3")
    assert got["handle"] == "h1" and len(got["addresses"]) == 3

    assert ctl.json("ipam", "show") == [
        {"pool": "10.65.0.0/24", "disabled": False, "blocks_claimed": 1, "blocks": 4,
         "addresses": 256, "in_use": 3, "free": 253}]
    blocks_table = ctl("ipam", "show", "--blocks")
    assert "host-a" in blocks_table and "61" in blocks_table
    one = ctl.json("ipam", "show", "--ip", got["addresses"][0])
    assert one["allocated"] and one["handle"] == "h1" and one["block_host"] == "host-a"
    assert ctl.json("ipam", "show", "--handle", "h1")["addresses"] == got["addresses"]

    # Refused commands write nothing and say why in one line.
    assert "already held by handle h1" in ctl.fails("ipam", "allocate", "--host", "host-a",
                                                   "--ip", got["addresses"][0])
    assert "10.99.0.0/24 does not exist" in ctl.fails("ipam", "allocate", "--host", "host-a",
                                                     "--pool", "10.99.0.0/24")
    assert "--ip ADDRESS" in ctl.fails("ipam", "release")
    assert f"Released {got['addresses'][0]}." in ctl("ipam", "release", "--ip",
                                                     got["addresses"][0])
    assert "Released" in ctl("ipam", "release", "--handle", "h1")
    assert "holds no address" in ctl.fails("ipam", "release", "--handle", "h1")
    assert client.get(layout.build(Kind.IPAM_HANDLE, handle="h1")) is None

    assert ctl.json("ipam", "config", "--strict-affinity")["strict_affinity"] is True
    assert ctl.value("ipam/v2/config")["strict_affinity"] is True


def test_felixctl_ipam_release_blocks_of_a_decommissioned_host(registry, ctl, client, layout,
                                                                ipam_for):
    registry.add_pool("10.65.0.0/26", block_size=28)
    c, b = ipam_for("host-c"), ipam_for("host-b")
    a_, b_, c_ = "10.65.0.0/28", "10.65.0.16/28", "10.65.0.32/28"
    c.assign_ip("10.65.0.1", "c-a")                       # block A, emptied again
    c.release_by_handle("c-a")
    c.assign_ip("10.65.0.17", "c-gone", {"endpoint": "host-c/k8s/gone/eth0"})  # block B
    b.assign_ip("10.65.0.18", "b-live", {"endpoint": "host-b/k8s/live/eth0"})  # borrowed in B
    registry.register_endpoint(EndpointId("host-b", "k8s", "live", "eth0"),
                               {"name": "calilive", "ipv4_nets": ["10.65.0.18/32"]})
    c.assign_ip("10.65.0.33", "c-c")                      # block C, emptied again
    c.release_by_handle("c-c")
    d_ = "10.65.0.48/28"                                  # a claim on a block that is gone
    client.put(c.affinity_key("host-c", d_), json.dumps({"state": "confirmed"}))

    def claimed(cidr):
        return client.get(c.affinity_key("host-c", cidr)) is not None

    def block(cidr):
        raw = client.get(c.block_key(cidr))
        return None if raw is None else json.loads(raw)

    # A host still in use is refused, naming what keeps it in use; nothing is written.
    web = EndpointId("host-c", "k8s", "web", "eth0")
    registry.register_endpoint(web, {"name": "caliweb", "ipv4_nets": ["10.65.0.40/32"]})
    assert ctl.fails("ipam", "release-blocks", "--host", "host-c") == (
        "Error: host host-c still has 1 endpoint(s) registered (host-c/k8s/web/eth0): a host "
        "in use keeps its blocks; remove them first (`felixctl endpoint list --host host-c`, "
        "`felixctl endpoint remove`)")
    registry.remove_endpoint(web)
    client.put(layout.host_status("host-c"), json.dumps({"time": "2026-01-01T00:00:00Z",
                                                         "uptime": 5}))
    assert "agent on host host-c is running" in ctl.fails("ipam", "release-blocks", "--host",
                                                         "host-c")
    client.delete(layout.host_status("host-c"))
    assert ctl.fails("ipam", "release-blocks", "--host", "host-x") == (
        "Error: host host-x holds no IPAM blocks; nothing to release (see `felixctl ipam "
        "show --blocks`)")
    # A block that still holds addresses refuses the whole command without --force.
    assert ctl.fails("ipam", "release-blocks", "--host", "host-c") == (
        "Error: host host-c: blocks still holding addresses (10.65.0.16/28: 2 in use); nothing "
        "released. Free them first (`felixctl ipam gc` frees those whose endpoint is gone), "
        "or give --force to keep these blocks without an owner; --dry-run shows every block")

    before = ctl.dump()
    assert ctl("ipam", "release-blocks", "--host", "host-c", "--dry-run").splitlines() == [
        "Host host-c, dry run: 2 blocks would be released; 1 block still holding addresses "
        "(refused without --force); 1 block stale (gone, or another host's): only the claim "
        "would be removed.",
        "BLOCK          IN USE    HELD FOR HOSTS     WOULD BE",
        "-------------  --------  -----------------  ----------",
        "10.65.0.0/28   0         -                  released",
        "10.65.0.16/28  2         host-c=1,host-b=1  in use",
        "10.65.0.32/28  0         -                  released",
        "10.65.0.48/28  0         -                  stale"]
    assert ctl.dump() == before
    # The leaked address of host-c's gone workload is garbage; host-b's is not.
    assert "Released 1 leaked address." in ctl("ipam", "gc", "--min-age", "0")
    before = ctl.dump()
    assert ctl.json("ipam", "release-blocks", "--host", "host-c", "--force", "--dry-run") == {
        "host": "host-c", "dry_run": True, "blocks": [
            {"block": a_, "in_use": 0, "held_for": {}, "result": "released"},
            {"block": b_, "in_use": 1, "held_for": {"host-b": 1}, "result": "unassigned"},
            {"block": c_, "in_use": 0, "held_for": {}, "result": "released"},
            {"block": d_, "in_use": 0, "held_for": {}, "result": "stale"}]}
    assert ctl.dump() == before

    assert ctl("ipam", "release-blocks", "--host", "host-c", "--force").splitlines() == [
        "Host host-c: 2 blocks released; 1 block kept without an owner (their addresses stay "
        "allocated); 1 block stale (gone, or another host's): only the claim removed.",
        "BLOCK          IN USE    HELD FOR HOSTS    RESULT",
        "-------------  --------  ----------------  ----------",
        "10.65.0.0/28   0         -                 released",
        "10.65.0.16/28  1         host-b=1          unassigned",
        "10.65.0.32/28  0         -                 released",
        "10.65.0.48/28  0         -                 stale"]
    assert block(a_) is None and block(c_) is None
    assert not any(claimed(x) for x in (a_, b_, c_, d_))
    kept = block(b_)
    assert "affinity" not in kept and kept["allocations"][2] is not None
    assert b.lookup("10.65.0.18").handle_id == "b-live"
    assert ctl.fails("ipam", "release-blocks", "--host", "host-c").endswith(
        "host host-c holds no IPAM blocks; nothing to release (see `felixctl ipam show "
        "--blocks`)")
    # A block without an owner goes with its last address, and can be claimed again.
    b.release_by_handle("b-live")
    assert block(b_) is None
    assert b.assign_ip("10.65.0.20", "b-new") and block(b_)["affinity"] == "host:host-b"
