"""The lab's plan: names, addresses and AS numbers from its size, and its record round trip."""

import ipaddress

import pytest

from felix_py.lab.plan import (LIMITS, POOL, PlanError, Size, from_json, plan)


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
