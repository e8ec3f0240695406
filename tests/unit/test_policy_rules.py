"""Compilation of v1 rules to iptables rule bodies: every key, every negation, bad input."""

import pytest

from felix_py import model
from policy import names
from policy.rules import CLEAR_ACCEPT, RETURN_IF_ACCEPTED, SET_ACCEPT, compile_rules

TAGS = {"web", "db"}
SEL_AX = names.selector_set('a == "x"', 4)
SEL_IN = names.selector_set('a in {"x", "y"}', 4)


def body(rule: dict, family=4, action_suffix=True):
    """The single match text compiled for ``rule`` (an allow rule), without its target."""
    c = compile_rules("p", "inbound", [model.Rule(**rule)], family, TAGS.__contains__)
    assert c.error is None, c.error
    assert c.rules[0] == CLEAR_ACCEPT
    matches = [r[: -len(SET_ACCEPT)].strip() for r in c.rules[1:]]
    return matches[0] if len(matches) == 1 else matches


@pytest.mark.parametrize("rule, expected", [
    ({}, ""),
    ({"protocol": "tcp"}, "-p tcp"),
    ({"protocol": 6}, "-p tcp"),
    ({"protocol": "udplite"}, "-p udplite"),
    ({"protocol": 47}, "-p 47"),
    ({"!protocol": "udp"}, "! -p udp"),
    ({"src_net": "10.1.0.0/16"}, "-s 10.1.0.0/16"),
    ({"!src_net": "10.1.0.0/16"}, "! -s 10.1.0.0/16"),
    ({"dst_net": "10.2.0.0/24"}, "-d 10.2.0.0/24"),
    ({"!dst_net": "10.2.0.0/24"}, "! -d 10.2.0.0/24"),
    ({"src_net": "10.0.0.0/8", "!src_net": "10.1.0.0/16"},
     "-s 10.0.0.0/8 -m iprange ! --src-range 10.1.0.0-10.1.255.255"),
    ({"dst_net": "10.0.0.0/8", "!dst_net": "10.9.9.9/32"},
     "-d 10.0.0.0/8 -m iprange ! --dst-range 10.9.9.9-10.9.9.9"),
    ({"src_tag": "web"}, f"-m set --match-set {names.tag_set('web', 4)} src"),
    ({"!src_tag": "web"}, f"-m set ! --match-set {names.tag_set('web', 4)} src"),
    ({"dst_tag": "db"}, f"-m set --match-set {names.tag_set('db', 4)} dst"),
    ({"!dst_tag": "db"}, f"-m set ! --match-set {names.tag_set('db', 4)} dst"),
    ({"src_selector": "a == 'x'"},
     f"-m set --match-set {SEL_AX} src"),
    ({"!src_selector": "has(a)"}, f"-m set ! --match-set {names.selector_set('has(a)', 4)} src"),
    ({"dst_selector": "a in {'x','y'}"},
     f"-m set --match-set {SEL_IN} dst"),
    ({"!dst_selector": "!has(b)"},
     f"-m set ! --match-set {names.selector_set('!has(b)', 4)} dst"),
    ({"protocol": "tcp", "src_ports": [1, "10:20"]}, "-p tcp -m multiport --sports 1,10:20"),
    ({"protocol": "udp", "!src_ports": [53]}, "-p udp -m multiport ! --sports 53"),
    ({"protocol": "tcp", "dst_ports": [80, 443]}, "-p tcp -m multiport --dports 80,443"),
    ({"protocol": "sctp", "!dst_ports": ["1:1024"]}, "-p sctp -m multiport ! --dports 1:1024"),
    ({"protocol": "icmp", "icmp_type": 8}, "-p icmp -m icmp --icmp-type 8"),
    ({"protocol": "icmp", "icmp_type": 3, "icmp_code": 4}, "-p icmp -m icmp --icmp-type 3/4"),
    ({"protocol": "icmp", "!icmp_type": 8}, "-p icmp -m icmp ! --icmp-type 8"),
    ({"protocol": "icmp", "!icmp_type": 3, "!icmp_code": 1}, "-p icmp -m icmp ! --icmp-type 3/1"),
])
def test_every_key_and_negation(rule, expected):
    assert body(rule) == expected


def test_ipv6_forms():
    assert body({"protocol": "icmpv6", "icmp_type": 128}, family=6) == \
        "-p ipv6-icmp -m icmp6 --icmpv6-type 128"
    assert body({"protocol": "icmpv6", "!icmp_type": 1, "!icmp_code": 3}, family=6) == \
        "-p ipv6-icmp -m icmp6 ! --icmpv6-type 1/3"
    assert body({"src_tag": "web"}, family=6) == \
        f"-m set --match-set {names.tag_set('web', 6)} src"
    assert body({"dst_net": "fd00::/64", "!dst_net": "fd00::1/128"}, family=6) == \
        "-d fd00::/64 -m iprange ! --dst-range fd00::1-fd00::1"


def test_rules_of_the_other_family_are_left_out():
    rules = [model.Rule(src_net="10.0.0.0/8"), model.Rule(protocol="icmpv6"),
             model.Rule(ip_version=6, protocol="tcp"), model.Rule(ip_version=4)]
    v4 = compile_rules("p", "inbound", rules, 4, TAGS.__contains__)
    v6 = compile_rules("p", "inbound", rules, 6, TAGS.__contains__)
    assert v4.rules == (CLEAR_ACCEPT, f"-s 10.0.0.0/8 {SET_ACCEPT}", SET_ACCEPT)
    assert v6.rules == (CLEAR_ACCEPT, f"-p ipv6-icmp {SET_ACCEPT}", f"-p tcp {SET_ACCEPT}")


def test_many_ports_split_into_multiport_sized_alternatives():
    ports = list(range(1, 21)) + ["100:200"]          # 20 single ports + one range (2 slots)
    got = body({"protocol": "tcp", "dst_ports": ports})
    assert got == ["-p tcp -m multiport --dports " + ",".join(map(str, range(1, 16))),
                   "-p tcp -m multiport --dports 16,17,18,19,20,100:200"]
    # Negated lists are ANDed in one rule: not in the first chunk and not in the second.
    got = body({"protocol": "tcp", "!dst_ports": ports})
    assert got.count("-m multiport ! --dports") == 2


def test_both_port_lists_give_their_product():
    got = body({"protocol": "udp", "src_ports": list(range(1, 17)), "dst_ports": [53]})
    assert len(got) == 2 and all(g.endswith("--dports 53") for g in got)


def test_protocol_and_negated_protocol():
    assert body({"protocol": "tcp", "!protocol": "udp"}) == "-p tcp"
    c = compile_rules("p", "inbound", [model.Rule(protocol="tcp", **{"!protocol": 6})], 4,
                      TAGS.__contains__)
    assert c.rules == (CLEAR_ACCEPT,)        # can never match


def test_actions_and_first_match_order():
    rules = [model.Rule(action="log", protocol="udp"), model.Rule(src_tag="web"),
             model.Rule(dst_tag="db"), model.Rule(action="deny", protocol="tcp"),
             model.Rule(action="allow")]
    c = compile_rules("web", "outbound", rules, 4, TAGS.__contains__)
    assert c.rules == (
        CLEAR_ACCEPT,
        '-p udp -j LOG --log-prefix "felix-po-web: "',
        f"-m set --match-set felix-4t-web src {SET_ACCEPT}",
        f"-m set --match-set felix-4t-db dst {SET_ACCEPT}",
        RETURN_IF_ACCEPTED,                 # an allow already matched wins over the deny
        "-p tcp -j DROP",
        SET_ACCEPT)                         # falling off the end returns, mark set
    assert c.tags == {"web", "db"}


def test_log_prefix_fits_the_kernel_limit():
    c = compile_rules("a-very-long-profile-name-indeed", "inbound",
                      [model.Rule(action="log")], 4, TAGS.__contains__)
    prefix = c.rules[1].split('"')[1]
    assert len(prefix) <= 29 and prefix.startswith("felix-pi-a-very")


def test_unknown_tag_denies_the_direction():
    c = compile_rules("p", "inbound", [model.Rule(), model.Rule(src_tag="nobody")], 4,
                      TAGS.__contains__)
    assert "tag 'nobody' is not carried by any profile" in c.error
    assert "inbound rule 1" in c.error
    assert len(c.rules) == 1 and c.rules[0].endswith("-j DROP")


def test_negated_icmp_code_alone_is_an_error():
    c = compile_rules("p", "outbound", [model.Rule(protocol="icmp", icmp_type=8,
                                                   **{"!icmp_code": 0})], 4, TAGS.__contains__)
    assert "!icmp_code needs !icmp_type" in c.error and c.rules[0].endswith("-j DROP")
