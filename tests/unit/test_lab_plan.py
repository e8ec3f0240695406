"""The lab's plan: names, addresses and AS numbers from its size, and its record round trip;
the dual-stack plan's IPv6 addresses beside an unchanged IPv4 plan."""

import ipaddress
import json

import pytest

from felix_py.lab.plan import (LIMITS, POOL, POOL6, RACK_NET6, UPLINK_NET6, PlanError, Size,
                               from_json, plan)


def test_default_lab():
    p = plan(Size(), "flab-1-0")
    assert [t.name for t in p.tors] == ["tor1", "tor2"]
    assert [(t.as_num, t.rack) for t in p.tors] == [(65101, 1), (65102, 2)]
    assert p.core.as_num == 65000 and p.core.rack is None
    assert [(h.name, h.tor, h.tor_as) for h in p.hosts] == [
        ("host1", "tor1", 65101), ("host2", "tor1", 65101),
        ("host3", "tor2", 65102), ("host4", "tor2", 65102)]
    assert len(p.workloads) == 12 and p.workloads_of("host3")[1].name == "h3w2"
    assert p.netns("host1") == "flab-1-0-host1"
    assert p.nodes[:4] == ["mgmt", "core", "tor1", "tor2"] and len(p.nodes) == 20
    assert p.etcd_url == "http://172.31.0.1:2379"


def test_every_link_is_a_point_to_point_pair_and_addresses_are_unique():
    p = plan(Size(3, 4, 2), "x")
    seen = set()
    for link in (*p.uplinks, *p.rack_links):
        a, b = ipaddress.ip_interface(link.a_addr), ipaddress.ip_interface(link.b_addr)
        assert a.network == b.network and a.network.prefixlen == 30
        seen |= {a.ip, b.ip}
    mgmt = {ipaddress.ip_interface(h.mgmt_ip).ip for h in p.hosts}
    assert len(seen) == 2 * (3 + 12) and len(mgmt) == 12
    assert ipaddress.ip_address(p.etcd_ip) not in mgmt
    # A host's BGP peer is its ToR's end of its own rack link.
    for h, link in zip(p.hosts, p.rack_links):
        assert (link.a, link.b) == (h.tor, h.name)
        assert link.a_addr.split("/")[0] == h.tor_ip and link.b_addr.split("/")[0] == h.bgp_ip
    # Nothing of the fabric lies in the workloads' pool.
    assert not any(ip in ipaddress.ip_network(POOL) for ip in seen | mgmt)


def test_groups_and_labels():
    p = plan(Size(2, 2, 3), "x")
    groups = {w.name: (w.group, w.labels.get("role")) for w in p.workloads}
    assert groups["h1w1"] == ("web", None) and groups["h1w3"] == ("web", None)
    # The first host of each rack holds the db primaries.
    assert groups["h1w2"] == ("db", "primary") and groups["h3w2"] == ("db", "primary")
    assert groups["h2w2"] == ("db", "replica") and groups["h4w2"] == ("db", "replica")


@pytest.mark.parametrize("size, flag", [(Size(0, 1, 1), "--racks"),
                                        (Size(1, LIMITS["hosts_per_rack"] + 1, 1),
                                         "--hosts-per-rack"),
                                        (Size(1, 1, 0), "--workloads-per-host")])
def test_sizes_out_of_range_name_the_flag(size, flag):
    with pytest.raises(PlanError, match=flag):
        plan(size, "x")


def test_record_round_trip():
    p = plan(Size(2, 3, 1), "flab-9-9")
    assert from_json(p.to_json()) == p


# -- dual stack ---------------------------------------------------------------------------

def _links(p):
    return (*p.uplinks, *p.rack_links)


def _strings(data):
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for v in data.values():
            yield from _strings(v)
    elif isinstance(data, (list, tuple)):
        for v in data:
            yield from _strings(v)


def test_the_default_plan_and_its_record_are_what_they_were():
    """An IPv4-only plan has no IPv6 in it, and its record has no IPv6 field at all (a
    record written before dual-stack labs existed reads back the same)."""
    for size in (Size(), Size(3, 4, 2)):
        p = plan(size, "flab-1-0")
        assert not p.dual_stack and p.versions == (4,)
        assert all(x.a_addr6 is None and x.b_addr6 is None for x in _links(p))
        assert all(h.bgp_ip6 is None and h.tor_ip6 is None for h in p.hosts)
        record = p.to_json()
        assert "dual_stack" not in record
        assert set(record["uplinks"][0]) == {"a", "a_if", "a_addr", "b", "b_if", "b_addr"}
        assert set(record["hosts"][0]) == {"name", "index", "rack", "tor", "bgp_ip", "tor_ip",
                                           "tor_as", "mgmt_ip"}
        assert not [v for v in _strings(record) if ":" in v]       # no IPv6 address
        assert from_json(json.loads(json.dumps(record))) == p
    p = plan(Size(), "flab-1-0")
    assert p.rack_links[0].a_addr == "172.20.0.1/30" and p.hosts[0].bgp_ip == "172.20.0.2"
    assert p.uplinks[1].b_addr == "172.16.0.6/30" and p.hosts[3].mgmt_ip == "172.31.0.13/16"


def test_dual_stack_keeps_the_ipv4_plan_address_for_address():
    for size in (Size(), Size(3, 4, 2), Size(1, 1, 1)):
        v4, dual = plan(size, "x"), plan(size, "x", dual_stack=True)
        assert dual.dual_stack and dual.versions == (4, 6)
        assert (dual.core, dual.tors, dual.workloads, dual.nodes) == \
            (v4.core, v4.tors, v4.workloads, v4.nodes)
        for a, b in zip(_links(v4), _links(dual)):
            assert (a.a, a.a_if, a.a_addr, a.b, a.b_if, a.b_addr) == \
                (b.a, b.a_if, b.a_addr, b.b, b.b_if, b.b_addr)
        for a, b in zip(v4.hosts, dual.hosts):
            assert (a.name, a.bgp_ip, a.tor_ip, a.tor_as, a.mgmt_ip) == \
                (b.name, b.bgp_ip, b.tor_ip, b.tor_as, b.mgmt_ip)


def test_dual_stack_addresses():
    p = plan(Size(), "x", dual_stack=True)
    assert [(x.a_addr6, x.b_addr6) for x in p.uplinks] == [
        ("fd00:172:16:1::1/64", "fd00:172:16:1::2/64"),
        ("fd00:172:16:2::1/64", "fd00:172:16:2::2/64")]
    assert [(h.name, h.tor_ip6, h.bgp_ip6) for h in p.hosts] == [
        ("host1", "fd00:172:20:1::1", "fd00:172:20:1::2"),
        ("host2", "fd00:172:20:2::1", "fd00:172:20:2::2"),
        ("host3", "fd00:172:20:3::1", "fd00:172:20:3::2"),
        ("host4", "fd00:172:20:4::1", "fd00:172:20:4::2")]
    # Host indexes past 9 are hex, as IPv6 groups are.
    assert plan(Size(1, 12, 1), "x", dual_stack=True).hosts[11].bgp_ip6 == "fd00:172:20:c::2"


@pytest.mark.parametrize("size", [Size(), Size(3, 4, 2), Size(1, 1, 1),
                                  Size(LIMITS["racks"], LIMITS["hosts_per_rack"], 1)])
def test_dual_stack_links_have_both_families_and_nothing_overlaps(size):
    p = plan(size, "x", dual_stack=True)
    nets4, nets6, seen = [], [], set()
    for link in _links(p):
        a4, b4 = ipaddress.ip_interface(link.a_addr), ipaddress.ip_interface(link.b_addr)
        a6, b6 = ipaddress.ip_interface(link.a_addr6), ipaddress.ip_interface(link.b_addr6)
        assert (a4.version, b4.version, a6.version, b6.version) == (4, 4, 6, 6)
        # Both ends on one network per family, and never the same address.
        assert a4.network == b4.network and a6.network == b6.network
        assert a6.network.prefixlen == 64 and a6.ip != b6.ip
        assert a6.network.subnet_of(UPLINK_NET6 if link in p.uplinks else RACK_NET6)
        # Unique local addresses, neither link-local (BIRD needs an interface for those)
        # nor global.
        assert all(ip in ipaddress.ip_network("fc00::/7") for ip in (a6.ip, b6.ip))
        nets4.append(a4.network)
        nets6.append(a6.network)
        seen |= {a4.ip, b4.ip, a6.ip, b6.ip}
    assert len(set(nets4)) == len(nets4) and len(set(nets6)) == len(nets6)
    assert not any(x.overlaps(y) for i, x in enumerate(nets6) for y in nets6[i + 1:])
    assert len(seen) == 4 * len(_links(p))
    mgmt = {ipaddress.ip_interface(h.mgmt_ip).ip for h in p.hosts}
    # Nothing of the fabric lies in either of the workloads' pools.
    pools = [ipaddress.ip_network(POOL), ipaddress.ip_network(POOL6)]
    assert not any(ip in net for ip in seen | mgmt for net in pools if ip.version == net.version)
    # A host's IPv6 BGP address and peer are the two ends of its own rack link.
    for h, link in zip(p.hosts, p.rack_links):
        assert (link.a, link.b) == (h.tor, h.name)
        assert link.a_addr6.split("/")[0] == h.tor_ip6
        assert link.b_addr6.split("/")[0] == h.bgp_ip6


def test_dual_stack_record_round_trip():
    p = plan(Size(2, 3, 1), "flab-9-9", dual_stack=True)
    record = json.loads(json.dumps(p.to_json()))
    assert record["dual_stack"] is True
    assert from_json(record) == p and from_json(record).versions == (4, 6)
