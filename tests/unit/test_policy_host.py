"""HostPolicy: the chains and sets of one host, recomputed incrementally from the Store."""

import re

from felix_py.calc.store import Store
from policy import groups, names
from policy.host import DISPATCH_LEAF, HostPolicy, Settings
from policy.testing import Feeder

S4 = Settings(families=(4,))


def setup(settings=S4):
    store = Store("h1")
    f = Feeder(store)
    for g in ("web", "db"):
        f.group(g)
    hp = HostPolicy("h1", settings)
    return store, f, hp


def ep(iface, ip, profiles, **kw):
    return {"name": iface, "ipv4_nets": [f"{ip}/32"], "profile_ids": profiles, **kw}


def sync(store, hp):
    hp.update(store, store.drain())
    return hp.take_dirty()


def test_first_sync_builds_everything_for_local_endpoints():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"], mac="02:00:00:00:00:01"))
    f.endpoint("h2", "w2", ep("cali2", "10.0.1.1", ["web"]))     # remote: only in the set
    f.endpoint("h2", "w3", ep("cali3", "10.0.1.2", ["db"]))      # remote, profile unused here
    chains, sets = sync(store, hp)
    c = hp.chains[4]
    assert {"felix-to-cali1", "felix-from-cali1", "felix-pi-web", "felix-po-web"} <= set(c)
    assert "felix-pi-db" not in c and "felix-to-cali2" not in c
    assert hp.sets == {"felix-4t-web": hp.sets["felix-4t-web"]}
    assert hp.sets["felix-4t-web"].members == {"10.0.0.1", "10.0.1.1"}
    assert c["felix-fromd"][0] == ("-i cali1 -s 10.0.0.1/32 -m mac --mac-source "
                                   "02:00:00:00:00:01 -g felix-from-cali1")
    assert c["felix-fromd"][-1] == "-j DROP" and c["felix-tod"][-1] == "-j DROP"
    assert chains[4] == set(c) and sets == {"felix-4t-web"}


def test_joining_a_group_touches_one_set_and_one_endpoint():
    store, f, hp = setup()
    for i in range(1, 6):
        f.endpoint("h1", f"w{i}", ep(f"cali{i}", f"10.0.0.{i}", ["web"]))
    f.endpoint("h1", "d1", ep("calid1", "10.0.1.1", ["db"]))
    sync(store, hp)
    f.endpoint("h1", "w3", ep("cali3", "10.0.0.3", ["web", "db"]))
    chains, sets = sync(store, hp)
    assert sets == {"felix-4t-db"}
    assert hp.sets["felix-4t-db"].members == {"10.0.0.3", "10.0.1.1"}
    assert chains[4] == {"felix-to-cali3", "felix-from-cali3"}      # no profile chain rewritten
    assert "-j felix-pi-db" in hp.chains[4]["felix-to-cali3"]


def test_remote_endpoint_changes_touch_only_sets():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"]))
    sync(store, hp)
    f.endpoint("h2", "w9", ep("cali9", "10.0.9.9", ["web"]))
    assert sync(store, hp) == ({4: set()}, {"felix-4t-web"})
    f.remove_endpoint("h2", "w9")
    assert sync(store, hp) == ({4: set()}, {"felix-4t-web"})
    assert hp.sets["felix-4t-web"].members == {"10.0.0.1"}


def test_selector_sets_follow_labels_including_profile_labels():
    store, f, hp = setup()
    rules, _ = groups.new_group("db")
    f.profile("db", rules=groups.add_export(rules, "db", "web", selector="tier == 'gold'",
                                            ports=[5432]), labels={"tier": "gold"})
    f.endpoint("h1", "d1", ep("calid1", "10.0.1.1", ["db"]))                  # inherits gold
    f.endpoint("h2", "d2", ep("calid2", "10.0.1.2", ["db"], labels={"tier": "tin"}))  # own wins
    sync(store, hp)
    sel = names.selector_set('tier == "gold"', 4)
    assert hp.sets[sel].members == {"10.0.1.1"}
    f.profile("db", labels={"tier": "tin"})
    chains, sets = sync(store, hp)
    assert sel in sets and hp.sets[sel].members == set()
    f.endpoint("h2", "d2", ep("calid2", "10.0.1.2", ["db"], labels={"tier": "gold"}))
    sync(store, hp)
    assert hp.sets[sel].members == {"10.0.1.2"}


def test_unused_chains_and_sets_are_removed():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"]))
    sync(store, hp)
    f.remove_endpoint("h1", "w1")
    chains, sets = sync(store, hp)
    for gone in ("felix-to-cali1", "felix-from-cali1", "felix-pi-web", "felix-po-web"):
        assert gone in chains[4] and gone not in hp.chains[4]
    assert sets == {"felix-4t-web"} and hp.sets == {}
    assert set(hp.chains[4]) == {names.INPUT, names.FORWARD, names.OUTPUT, names.WL_TO_HOST,
                                 names.FROM_DISPATCH, names.TO_DISPATCH}


def test_invalid_profile_rules_deny_its_members_and_nothing_else():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"]))
    f.endpoint("h1", "d1", ep("calid1", "10.0.1.1", ["db"]))
    sync(store, hp)
    f.profile("web", rules={"inbound_rules": [{"action": "allow", "protocol": "tcp",
                                               "dst_ports": [70000]}]})
    chains, _ = sync(store, hp)
    for chain in ("felix-pi-web", "felix-po-web"):
        assert len(hp.chains[4][chain]) == 1 and hp.chains[4][chain][0].endswith("-j DROP")
    assert "felix-pi-db" not in chains[4]
    assert "web" in hp.profile_problems and "out of range" in hp.profile_problems["web"]
    problems = hp.endpoint_problems
    assert list(problems) == [f.endpoint_id("h1", "w1")]
    assert problems[f.endpoint_id("h1", "w1")][0] == "error"
    # Fixed: back to normal.
    f.group("web")
    sync(store, hp)
    assert hp.chains[4]["felix-pi-web"][1].startswith("-m set --match-set felix-4t-web src")
    assert hp.profile_problems == {} and hp.endpoint_problems == {}


def test_unknown_tag_denies_that_direction_until_the_tag_exists():
    store, f, hp = setup()
    rules, _ = groups.new_group("web")
    f.profile("web", rules=groups.connect(rules, "web", "later"))
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"]))
    sync(store, hp)
    assert hp.chains[4]["felix-pi-web"][0].endswith("-j DROP")
    assert hp.chains[4]["felix-po-web"][-1] == "-j MARK --set-xmark 0x1000000/0x1000000"
    assert "tag 'later'" in hp.profile_problems["web"]
    f.group("later")
    chains, sets = sync(store, hp)
    assert "felix-pi-web" in chains[4] and "felix-4t-later" in sets
    assert any("felix-4t-later" in r for r in hp.chains[4]["felix-pi-web"])
    assert hp.profile_problems == {}


def test_interface_problems():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("tap1", "10.0.0.1", ["web"]))          # not our prefix
    f.endpoint("h1", "w2", ep("cali2", "10.0.0.2", ["web"]))
    f.endpoint("h1", "w3", ep("cali2", "10.0.0.3", ["web"]))          # same interface
    sync(store, hp)
    p = hp.endpoint_problems
    assert "does not start with an InterfacePrefix" in p[f.endpoint_id("h1", "w1")][1]
    assert "already used by endpoint h1/test/w2/eth0" in p[f.endpoint_id("h1", "w3")][1]
    assert f.endpoint_id("h1", "w2") not in p
    # The first owner goes: the second one takes the interface over.
    f.remove_endpoint("h1", "w2")
    sync(store, hp)
    assert "-s 10.0.0.3/32" in hp.chains[4]["felix-fromd"][0]
    assert f.endpoint_id("h1", "w3") not in hp.endpoint_problems


def test_inactive_endpoint_is_not_served():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web"], state="inactive"))
    sync(store, hp)
    assert "felix-to-cali1" not in hp.chains[4] and hp.sets == {}


def test_dispatch_tree_reaches_every_interface_in_few_hops():
    store, f, hp = setup()
    n = 700
    for i in range(n):
        f.endpoint("h1", f"w{i}", ep(f"cali{i:x}", f"10.1.{i // 250}.{i % 250 + 1}", ["web"]))
    sync(store, hp)
    c = hp.chains[4]
    for root, flag in ((names.FROM_DISPATCH, "-i"), (names.TO_DISPATCH, "-o")):
        seen, depth = {}, {}

        def walk(chain, d):
            depth[chain] = d
            assert len(chain) <= names.CHAIN_MAX
            rules = c[chain]
            assert rules[-1] == "-j DROP" and len(rules) <= DISPATCH_LEAF + 17
            for r in rules[:-1]:
                m = re.match(rf"{flag} (\S+) .*-g (\S+)$", r)
                iface, target = m.groups()
                if iface.endswith("+"):
                    walk(target, d + 1)
                else:
                    seen[iface] = seen.get(iface, 0) + 1
        walk(root, 0)
        assert sorted(seen) == sorted(f"cali{i:x}" for i in range(n))
        assert set(seen.values()) == {1} and max(depth.values()) <= 3
    # Removing most endpoints removes the sub-chains they needed.
    for i in range(10, n):
        f.remove_endpoint("h1", f"w{i}")
    sync(store, hp)
    assert not [ch for ch in hp.chains[4] if ch.startswith(names.FROM_DISPATCH + "-")]


def test_settings_shape_the_static_chains():
    s = Settings(interface_prefixes=("cali", "tap"), endpoint_to_host_action="RETURN",
                 failsafe_inbound=(("tcp", 22), ("udp", 68)), failsafe_outbound=(("tcp", 2379),),
                 families=(4, 6))
    hp = HostPolicy("h1", s)
    v4, v6 = hp.chains[4], hp.chains[6]
    assert v4[names.INPUT] == ("-i cali+ -g felix-wl-to-host", "-i tap+ -g felix-wl-to-host")
    assert "-i tap+ -j felix-fromd" in v4[names.FORWARD]
    assert v4[names.WL_TO_HOST][-1] == "-j RETURN"
    assert "-p udp -m udp --dport 68 -j ACCEPT" in v4[names.WL_TO_HOST]
    assert "-p udp -m udp --dport 53 -j ACCEPT" in v4[names.WL_TO_HOST]
    assert "-p udp -m udp --sport 68 --dport 67 -j ACCEPT" in v4[names.WL_TO_HOST]
    assert v4[names.OUTPUT] == ("-p tcp -m tcp --dport 2379 -j ACCEPT",)
    # DHCP and neighbour discovery come before the anti-spoofing dispatch in IPv6.
    to_host = v6[names.WL_TO_HOST]
    assert to_host.index("-p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT") < \
        to_host.index("-j felix-fromd")


def test_ipv6_endpoint_gets_ipv6_sets_and_dispatch():
    store, f, hp = setup(Settings(families=(4, 6)))
    f.endpoint("h1", "w1", {"name": "cali1", "ipv4_nets": ["10.0.0.1/32"],
                            "ipv6_nets": ["fd00::1/128"], "profile_ids": ["web"]})
    f.endpoint("h1", "w2", {"name": "cali2", "ipv6_nets": ["fd00::2/128"], "profile_ids": ["web"]})
    sync(store, hp)
    assert hp.sets["felix-6t-web"].members == {"fd00::1", "fd00::2"}
    assert hp.sets["felix-4t-web"].members == {"10.0.0.1"}
    assert "-i cali2 -s fd00::2/128 -g felix-from-cali2" in hp.chains[6]["felix-fromd"]
    # No IPv4 address: no IPv4 chains, and the dispatch drops its IPv4 traffic both ways.
    assert not any("cali2" in r for r in hp.chains[4]["felix-fromd"] + hp.chains[4]["felix-tod"])
    assert "felix-to-cali2" not in hp.chains[4] and "felix-to-cali2" in hp.chains[6]
    assert hp.chains[6]["felix-to-cali2"] == (
        "-j felix-pi-web", "-m mark ! --mark 0x1000000/0x1000000 -m comment --comment "
        '"no profile allowed" -j DROP')


def test_names_fit_the_kernel_limits():
    long_id = "p" * 60
    assert len(names.profile_chain(long_id, "inbound")) <= names.CHAIN_MAX
    assert names.profile_chain(long_id, "inbound") != names.profile_chain(long_id + "x", "inbound")
    assert names.profile_chain("web", "outbound") == "felix-po-web"
    assert len(names.tag_set("t" * 200, 6)) <= names.SET_MAX
    assert names.tag_set("web", 4) == "felix-4t-web"
    assert len(names.selector_set("a == 'b'", 4)) <= names.SET_MAX
    assert len(names.from_endpoint("x" * 15)) <= names.CHAIN_MAX
    assert len(names.dispatch_child(names.FROM_DISPATCH, "x" * 15)) <= names.CHAIN_MAX


def test_broken_rules_deny_even_when_another_part_of_the_profile_is_broken_too():
    store, f, hp = setup()
    f.endpoint("h1", "w1", ep("cali1", "10.0.0.1", ["web", "db"]))
    f.profile("web", rules='{"inbound_rules": [{"src_net": "nope"}]}', labels='["not", "a dict"]')
    sync(store, hp)
    assert hp.chains[4]["felix-pi-web"] == (hp.chains[4]["felix-pi-web"][0],)
    assert hp.chains[4]["felix-pi-web"][0].endswith("-j DROP")
