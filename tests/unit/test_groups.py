"""Security groups: the profile edits, and what they mean for traffic (through the Oracle)."""

import pytest

from felix_py import model
from felix_py.calc.store import Store
from policy import groups
from policy.testing import Feeder, Oracle, Packet

EPS = {  # name -> (ip, groups, labels)
    "web1": ("10.0.0.1", ["web"], {"role": "frontend"}),
    "web2": ("10.0.0.2", ["web"], {}),
    "db1": ("10.0.1.1", ["db"], {"role": "primary"}),
    "db2": ("10.0.1.2", ["db"], {"role": "replica"}),
    "ops1": ("10.0.2.1", ["ops"], {}),
    "both": ("10.0.3.1", ["web", "db"], {}),
}


def world(edit=None, eps=EPS):
    """A store with the groups web, db, ops, after ``edit(rules_by_group)``."""
    store = Store("h1")
    f = Feeder(store)
    rules = {g: groups.new_group(g)[0] for g in ("web", "db", "ops")}
    if edit:
        edit(rules)
    for g, r in rules.items():
        f.profile(g, rules=r, tags=[g])
    for name, (ip, gs, labels) in eps.items():
        f.endpoint("h1", name, {"name": f"cali{name}"[:15], "ipv4_nets": [f"{ip}/32"],
                                "profile_ids": gs, "labels": labels})
    return store


def can(store, a, b, port=80, proto="tcp"):
    src, dst = EPS[a][0], EPS[b][0]
    pkt = Packet(src, dst, proto, dst_port=port, src_port=40000) if proto != "icmp" \
        else Packet(src, dst, "icmp", icmp_type=8, icmp_code=0)
    return Oracle(store).allowed(pkt)


def test_new_group_rules_and_tags():
    rules, tags = groups.new_group("web")
    assert tags == ["web"]
    assert rules.inbound_rules == [model.Rule(action="allow", src_tag="web")]
    assert rules.outbound_rules == [model.Rule(action="allow")]


def test_members_reach_each_other_and_nothing_outside_reaches_them():
    s = world()
    assert can(s, "web1", "web2") and can(s, "web2", "web1", 9999) and can(s, "web1", "web2", proto="icmp")
    assert not can(s, "web1", "db1") and not can(s, "db1", "web1") and not can(s, "ops1", "db2")
    # An endpoint in two groups reaches and is reached by the members of both.
    assert can(s, "both", "web1") and can(s, "both", "db1")
    assert can(s, "web1", "both") and can(s, "db2", "both")
    # Traffic from outside any endpoint is not let in by a group.
    assert not Oracle(s).allowed(Packet("192.0.2.1", EPS["web1"][0], "tcp", dst_port=80))


def test_export_opens_selected_members_on_chosen_ports_only():
    def edit(r):
        r["db"] = groups.add_export(r["db"], "db", "web", selector="role == 'primary'",
                                    ports=[5432, "6000:6010"])
    s = world(edit)
    assert can(s, "web1", "db1", 5432) and can(s, "web2", "db1", 6005)
    assert not can(s, "web1", "db1", 22) and not can(s, "web1", "db1", proto="icmp")
    assert not can(s, "web1", "db2", 5432)            # not selected
    assert not can(s, "ops1", "db1", 5432)            # not exported to
    assert not can(s, "db1", "web1", 5432)            # one way only
    assert can(s, "db1", "db2")                       # members still reach each other


def test_export_to_all_members_and_udp():
    def edit(r):
        r["db"] = groups.add_export(r["db"], "db", "ops", protocol="udp", ports=[53])
    s = world(edit)
    assert can(s, "ops1", "db1", 53, "udp") and can(s, "ops1", "db2", 53, "udp")
    assert not can(s, "ops1", "db1", 53, "tcp")


def test_export_is_idempotent_and_removable():
    rules, _ = groups.new_group("db")
    once = groups.add_export(rules, "db", "web", ports=[5432])
    assert groups.add_export(once, "db", "web", ports=[5432]) == once
    twice = groups.add_export(once, "db", "web", selector="has(x)", ports=[1])
    # Remove with wildcards: every export to web, whatever its selector or ports.
    assert groups.remove_export(twice, "db", "web") == rules
    # Remove one by its ports only.
    assert groups.remove_export(twice, "db", "web", ports=[1]) == once
    with pytest.raises(groups.GroupError, match="no export to 'ops'"):
        groups.remove_export(twice, "db", "ops")


def test_export_refuses_nonsense():
    rules, _ = groups.new_group("db")
    with pytest.raises(groups.GroupError, match="reaches itself"):
        groups.add_export(rules, "db", "db", ports=[1])
    with pytest.raises(groups.GroupError, match="use connect"):
        groups.add_export(rules, "db", "web", protocol=None)
    with pytest.raises(groups.GroupError, match="not a valid group name"):
        groups.add_export(rules, "db", "no spaces", ports=[1])
    with pytest.raises(ValueError, match="out of range"):
        groups.add_export(rules, "db", "web", ports=[70000])


def test_connect_both_sides_and_disconnect():
    def edit(r):
        r["web"] = groups.connect(r["web"], "web", "db")
        r["db"] = groups.connect(r["db"], "db", "web")
    s = world(edit)
    assert can(s, "web1", "db2", 9999) and can(s, "db2", "web1", proto="icmp")
    assert not can(s, "ops1", "web1") and not can(s, "web1", "ops1")

    def one_side(r):
        edit(r)
        r["db"] = groups.disconnect(r["db"], "db", "web")
    s = world(one_side)
    assert can(s, "db1", "web1") and not can(s, "web1", "db1")


def test_connect_is_idempotent_and_disconnect_leaves_exports():
    rules, _ = groups.new_group("db")
    rules = groups.add_export(rules, "db", "web", ports=[5432])
    c = groups.connect(rules, "db", "web")
    assert groups.connect(c, "db", "web") == c
    assert groups.disconnect(c, "db", "web") == rules
    with pytest.raises(groups.GroupError, match="not connected"):
        groups.disconnect(rules, "db", "web")
    with pytest.raises(groups.GroupError, match="itself"):
        groups.connect(rules, "db", "db")


def test_describe():
    rules, _ = groups.new_group("db")
    rules = groups.add_export(rules, "db", "web", selector="role=='primary'", ports=[5432])
    rules = groups.connect(rules, "db", "ops")
    rules = rules.model_copy(update={"inbound_rules": [*rules.inbound_rules,
                                                      model.Rule(action="deny", src_net="10.9.0.0/16")]})
    d = groups.describe(rules, "db")
    assert d["members_connected"] is True
    assert d["exports"] == [{"to": "web", "selector": 'role == "primary"', "protocol": "tcp",
                             "ports": [5432]}]
    assert d["connections"] == ["ops"]
    assert d["other_rules"] == [{"direction": "inbound",
                                 "rule": '{"action":"deny","src_net":"10.9.0.0/16"}'}]


def test_pair_connects_two_workloads_by_address_whatever_their_groups():
    pid = groups.pair_profile_id("h1/k8s/web1/eth0", "h1/k8s/ops1/eth0")
    assert pid == groups.pair_profile_id("h1/k8s/ops1/eth0", "h1/k8s/web1/eth0")
    assert pid.startswith("pair-") and model.Endpoint(name="x", profile_ids=[pid])
    eps = dict(EPS)
    eps["web1"] = (EPS["web1"][0], ["web", pid], EPS["web1"][2])
    eps["ops1"] = (EPS["ops1"][0], ["ops", pid], {})
    store = world(eps=eps)
    Feeder(store).profile(pid, rules=groups.pair_rules([f"{EPS['web1'][0]}/32"],
                                                       [f"{EPS['ops1'][0]}/32"]))
    assert can(store, "web1", "ops1", 9999) and can(store, "ops1", "web1", proto="icmp")
    # Nobody else gains anything: not web2 to ops1, not ops1 to web2.
    assert not can(store, "web2", "ops1") and not can(store, "ops1", "web2")
    assert can(store, "web2", "web1")


def test_pair_rules_keep_families_apart():
    r = groups.pair_rules(["10.0.0.1/32", "fd00::1/128"], ["10.0.0.2/32"])
    assert r.inbound_rules == r.outbound_rules
    assert {(x.src_net, x.dst_net) for x in r.inbound_rules} == {
        ("10.0.0.1/32", "10.0.0.2/32"), ("10.0.0.2/32", "10.0.0.1/32")}
    with pytest.raises(groups.GroupError, match="no IP version"):
        groups.pair_rules(["fd00::1/128"], ["10.0.0.2/32"])
    with pytest.raises(groups.GroupError, match="itself"):
        groups.pair_profile_id("a", "a")


def test_profiles_in_order_deny_and_log():
    """An endpoint's profiles are tried in order: deny drops at once, log goes on, no match
    goes to the next profile."""
    store = Store("h1")
    f = Feeder(store)
    f.profile("first", rules={"inbound_rules": [{"action": "log"},
                                                {"action": "deny", "src_net": "10.0.0.2/32"}]},
              tags=["first"])
    f.profile("second", rules={"inbound_rules": [{"action": "allow"}]}, tags=["second"])
    f.endpoint("h1", "a", {"name": "calia", "ipv4_nets": ["10.0.0.1/32"],
                           "profile_ids": ["first", "second"]})
    f.endpoint("h1", "b", {"name": "calib", "ipv4_nets": ["10.0.0.2/32"], "profile_ids": []})
    f.endpoint("h1", "c", {"name": "calic", "ipv4_nets": ["10.0.0.3/32"], "profile_ids": []})
    o = Oracle(store)
    assert not o.allowed(Packet("10.0.0.2", "10.0.0.1", dst_port=1))   # denied by first
    # c: first logs, does not match the deny, falls through to second which allows...
    # but c has no profile, so its own outbound drops everything.
    assert not o.allowed(Packet("10.0.0.3", "10.0.0.1", dst_port=1))
    assert o.allowed(Packet("192.0.2.9", "10.0.0.1", dst_port=1))      # via second
