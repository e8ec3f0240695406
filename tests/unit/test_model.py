"""Every record kind, valid and invalid: the error names the key and the field."""

import json

import pytest

from felix_py import model
from felix_py.datastore.keys import EndpointId, Kind, KeyLayout

L = KeyLayout()
EP_KEY = L.endpoint(EndpointId("h1", "k8s", "wl", "eth0"))
RULES_KEY = L.profile(Kind.PROFILE_RULES, "web")


def dec(key, value):
    raw = value if isinstance(value, bytes) else (
        value if isinstance(value, str) else json.dumps(value)).encode()
    return model.decode(L.parse(key), raw)


def bad(key, value):
    with pytest.raises(model.ModelError) as exc:
        dec(key, value)
    assert exc.value.key == key
    return exc.value


GOOD_EP = {"state": "active", "name": "cali1234", "mac": "EE:EE:EE:EE:EE:01",
           "profile_ids": ["web"], "ipv4_nets": ["10.65.0.5/32"], "ipv6_nets": ["fd00::5/128"],
           "ipv4_gateway": "10.65.0.1", "labels": {"app": "web", "example.com/tier": "front"}}


def test_endpoint_valid():
    ep = dec(EP_KEY, GOOD_EP)
    assert ep.mac == "ee:ee:ee:ee:ee:01"
    assert ep.addresses == ["10.65.0.5", "fd00::5"]
    assert dec(EP_KEY, {"name": "cali1", "profile_id": "legacy"}).profile_ids == ["legacy"]
    assert dec(EP_KEY, {"name": "cali1"}).state == "active"


@pytest.mark.parametrize("change,field,words", [
    ({"ipv4_nets": ["10.65.0.0/24"]}, "ipv4_nets.0", "/32"),
    ({"ipv4_nets": ["10.65.0.300/32"]}, "ipv4_nets.0", "not a valid CIDR"),
    ({"ipv4_nets": ["fd00::1/128"]}, "ipv4_nets.0", "not an IPv4"),
    ({"ipv4_nets": "10.65.0.5/32"}, "ipv4_nets", "array"),
    ({"ipv6_nets": ["fd00::/64"]}, "ipv6_nets.0", "/128"),
    ({"ipv6_nets": ["10.0.0.1/32"]}, "ipv6_nets.0", "not an IPv6"),
    ({"mac": "zz:zz:zz:zz:zz:zz"}, "mac", "MAC"),
    ({"mac": "ee:ee:ee:ee:ee"}, "mac", "MAC"),
    ({"name": ""}, "name", "interface name"),
    ({"name": "a-name-longer-than-15"}, "name", "interface name"),
    ({"name": "bad/name"}, "name", "interface name"),
    ({"state": "running"}, "state", "active"),
    ({"profile_ids": ["ok", "no spaces"]}, "profile_ids.1", "name"),
    ({"ipv4_gateway": "10.0.0.256"}, "ipv4_gateway", "IP address"),
    ({"ipv6_gateway": "10.0.0.1"}, "ipv6_gateway", "IPv6"),
    ({"labels": {"bad key!": "x"}}, "labels", "label key"),
    ({"labels": {"app": "has space"}}, "labels", "invalid value"),
    ({"labels": ["app"]}, "labels", "object"),
    ({"unknown_field": 1}, "unknown_field", "unknown field"),
])
def test_endpoint_invalid(change, field, words):
    err = bad(EP_KEY, GOOD_EP | change)
    assert err.field == field, err
    assert words in err.message, err


def test_endpoint_missing_name():
    err = bad(EP_KEY, {"ipv4_nets": ["10.0.0.1/32"]})
    assert err.field == "name"


CANONICAL_EP = {"state": "inactive", "name": "cali1234", "mac": "ee:ee:ee:ee:ee:01",
                "profile_ids": ["web", "db"], "ipv4_nets": ["10.65.0.5/32", "10.65.0.6/32"],
                "ipv4_gateway": "10.65.0.1", "labels": {"app": "web", "example.com/t": ""}}


@pytest.mark.parametrize("value", [
    CANONICAL_EP, {"name": "cali1"}, {"name": "c", "ipv4_nets": [], "labels": {}},
    {"name": "c", "mac": None, "ipv4_gateway": None, "ipv6_gateway": None, "ipv6_nets": []},
    {"name": "c", "ipv4_nets": ["0.0.0.0/32", "255.255.255.255/32", "1.20.199.250/32"]},
])
def test_endpoint_fast_path_equals_full_model(value):
    raw = json.dumps(value).encode()
    fast = model._CANONICAL_ENDPOINT.validate_json(raw)
    full = model.Endpoint.model_validate_json(raw)
    assert type(fast) is model.Endpoint
    assert fast == full and fast.to_json() == full.to_json()
    assert list(fast.__dict__) == list(full.__dict__) and repr(fast) == repr(full)
    assert fast.model_fields_set == full.model_fields_set
    assert fast.model_copy(update={"name": "x"}).name == "x"
    assert dec(EP_KEY, value) == full


@pytest.mark.parametrize("change", [
    {"mac": "EE:EE:EE:EE:EE:01"}, {"mac": "ee-ee-ee-ee-ee-01"},   # normalised by the model
    {"ipv6_nets": ["fd00:0::5/128"]}, {"ipv6_gateway": "fd00::1"},
    {"profile_id": "legacy", "profile_ids": None},
    {"ipv4_nets": ["010.0.0.1/32"]}, {"ipv4_nets": ["1.2.3.4/32\n"]},
    {"ipv4_nets": ["1.2.3.\u0664/32"]}, {"name": "eth0\n"}, {"name": ""},
    {"labels": {"app": 5}}, {"state": 1}, {"extra": 1},
])
def test_endpoint_fast_path_leaves_the_rest_to_the_model(change):
    value = {k: v for k, v in (CANONICAL_EP | change).items() if v is not None}
    raw = json.dumps(value).encode()
    with pytest.raises(ValueError):      # so the fast path is not the full model's validator
        model._CANONICAL_ENDPOINT.validate_json(raw)
    try:
        expected = model.Endpoint.model_validate_json(raw)
    except ValueError:
        bad(EP_KEY, raw)
    else:
        assert dec(EP_KEY, raw) == expected


@pytest.mark.parametrize("raw,words", [
    (b"{not json", "malformed JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe\xfd", "not UTF-8"),
    (b'{"name": "' + b"x" * (600 * 1024) + b'"}', "larger than"),
    (b"", "malformed JSON"),
])
def test_malformed_values(raw, words):
    err = bad(EP_KEY, raw)
    assert err.field is None and words in err.message, err


def test_rules_valid_with_every_key_and_negation():
    rule = {"action": "deny", "ip_version": 4, "protocol": "TCP", "src_net": "10.0.0.0/8",
            "src_tag": "db", "src_selector": "app == 'web'", "src_ports": [80, "1000:2000"],
            "dst_net": "10.1.0.0/16", "dst_tag": "web", "dst_selector": "has(tier)",
            "dst_ports": [443], "!protocol": "udp", "!src_net": "10.9.0.0/16",
            "!src_tag": "x", "!src_selector": "a in {'b','c'}", "!src_ports": [22],
            "!dst_net": "10.2.0.0/16", "!dst_tag": "y", "!dst_selector": "!has(z)",
            "!dst_ports": ["8000:8080"]}
    rules = dec(RULES_KEY, {"inbound_rules": [rule], "outbound_rules": [{"action": "log"}]})
    r = rules.inbound_rules[0]
    assert r.protocol == "tcp" and r.not_protocol == "udp"
    assert r.src_selector == 'app == "web"' and r.not_dst_selector == "!has(z)"
    assert r.version == 4
    icmp = dec(RULES_KEY, {"inbound_rules": [{"protocol": "icmp", "icmp_type": 8,
                                              "icmp_code": 0, "!icmp_type": 3}]})
    assert icmp.inbound_rules[0].icmp_type == 8
    assert dec(RULES_KEY, {"inbound_rules": [{"protocol": 58, "icmp_type": 128}]}) \
        .inbound_rules[0].version == 6


@pytest.mark.parametrize("rule,field,words", [
    ({"action": "accept"}, "inbound_rules.0.action", "allow"),
    ({"bogus": 1}, "inbound_rules.0.bogus", "unknown field"),
    ({"!bogus": 1}, "inbound_rules.0.!bogus", "unknown field"),
    ({"protocol": "tcp", "dst_ports": [70000]}, "inbound_rules.0.dst_ports.0", "out of range"),
    ({"protocol": "tcp", "dst_ports": ["2000:1000"]}, "inbound_rules.0.dst_ports.0", "a:b"),
    ({"protocol": "tcp", "src_ports": ["http"]}, "inbound_rules.0.src_ports.0", "port"),
    ({"dst_ports": [80]}, "inbound_rules.0", "ports need protocol"),
    ({"protocol": "icmp", "dst_ports": [80]}, "inbound_rules.0", "ports need protocol"),
    ({"protocol": "gre"}, "inbound_rules.0.protocol", "unknown protocol"),
    ({"protocol": 300}, "inbound_rules.0.protocol", "out of range"),
    ({"src_net": "10.0.0.0/33"}, "inbound_rules.0.src_net", "valid CIDR"),
    ({"dst_net": "10.0.0.1/8"}, "inbound_rules.0.dst_net", "valid CIDR"),
    ({"!src_net": "nonsense"}, "inbound_rules.0.!src_net", "valid CIDR"),
    ({"src_selector": "app == "}, "inbound_rules.0.src_selector", "selector"),
    ({"dst_selector": "a === 'b'"}, "inbound_rules.0.dst_selector", "selector"),
    ({"src_tag": "bad tag"}, "inbound_rules.0.src_tag", "name"),
    ({"protocol": "tcp", "icmp_type": 8}, "inbound_rules.0", "icmp"),
    ({"protocol": "icmp", "icmp_code": 0}, "inbound_rules.0", "icmp_code needs icmp_type"),
    ({"protocol": "icmp", "icmp_type": 300}, "inbound_rules.0.icmp_type", "less than"),
    ({"ip_version": 5}, "inbound_rules.0.ip_version", "4"),
    ({"ip_version": 6, "src_net": "10.0.0.0/8"}, "inbound_rules.0", "mixes IPv4 and IPv6"),
    ({"protocol": "icmpv6", "dst_net": "10.0.0.0/8"}, "inbound_rules.0", "mixes"),
])
def test_rules_invalid(rule, field, words):
    err = bad(RULES_KEY, {"inbound_rules": [{"action": "allow"}, rule][1:]})
    assert err.field == field, err
    assert words in err.message, err


def test_rules_top_level():
    assert bad(RULES_KEY, {"inbound": []}).field == "inbound"
    assert bad(RULES_KEY, {"inbound_rules": {}}).field == "inbound_rules"


def test_tags_and_labels():
    assert dec(L.profile(Kind.PROFILE_TAGS, "web"), ["web", "prod"]) == ("web", "prod")
    assert "tag" in bad(L.profile(Kind.PROFILE_TAGS, "web"), ["ok", "not ok"]).message
    assert "list" in bad(L.profile(Kind.PROFILE_TAGS, "web"), {"a": 1}).message
    assert dec(L.profile(Kind.PROFILE_LABELS, "web"), {"a": "b"}) == {"a": "b"}
    assert "label" in bad(L.profile(Kind.PROFILE_LABELS, "web"), {"a": 5}).message


def test_pools():
    key = L.build(Kind.POOL, version=4, cidr="10.65.0.0/16")
    pool = dec(key, {"cidr": "10.65.0.0/16", "masquerade": True})
    assert pool.masquerade and not pool.disabled
    assert bad(key, {"cidr": "10.66.0.0/16"}).field == "cidr"              # key disagrees
    assert bad(key, {"cidr": "10.65.0.1/16"}).field == "cidr"              # host bits
    assert bad(key, {"cidr": "10.65.0.0/16", "masquerade": "yes"}).field == "masquerade"
    assert "block_size" in bad(key, {"cidr": "10.65.0.0/16", "block_size": 8}).message
    v6 = L.build(Kind.POOL, version=6, cidr="fd00::/48")
    assert dec(v6, {"cidr": "fd00::/48"}).cidr == "fd00::/48"
    assert "IPv6" in bad(v6.replace("fd00::-48", "10.65.0.0-16"), {"cidr": "10.65.0.0/16"}).message


def test_bgp_values_bare_and_json():
    as_key = L.build(Kind.BGP_AS_NUM)
    assert dec(as_key, "64512") == 64512
    assert dec(as_key, '"64512"') == 64512
    assert dec(as_key, "1.10") == 65546                       # asdot
    assert "out of range" in bad(as_key, "4294967296").message
    assert "out of range" in bad(as_key, "0").message
    assert "not an AS number" in bad(as_key, "sixty").message
    ip_key = L.build(Kind.BGP_HOST_IP, host="h1", version=4)
    assert dec(ip_key, "10.0.0.1") == "10.0.0.1"
    assert dec(ip_key, '"10.0.0.1"') == "10.0.0.1"
    assert dec(ip_key, "") is None
    assert "not an IPv4" in bad(ip_key, "fd00::1").message
    mode_key = L.build(Kind.BGP_MODE, host="h1")
    assert dec(mode_key, "route-reflector") == "route-reflector"
    assert dec(mode_key, '"node-mesh"') == "node-mesh"
    assert "unknown BGP mode" in bad(mode_key, "full-mesh").message
    assert dec(L.build(Kind.BGP_NODE_MESH), {"enabled": False}).enabled is False
    assert bad(L.build(Kind.BGP_NODE_MESH), {"enabled": "maybe"}).field == "enabled"


def test_bgp_peers():
    key = L.build(Kind.BGP_PEER, host="h1", version=4, ip="10.0.0.1")
    peer = dec(key, {"ip": "10.0.0.1", "as_num": "65101", "password": "s3cret", "port": 1179})
    assert peer.as_num == 65101 and peer.port == 1179
    assert bad(key, {"ip": "10.0.0.2", "as_num": 65101}).field == "ip"
    assert bad(key, {"ip": "10.0.0.1", "as_num": 70000000000}).field == "as_num"
    assert bad(key, {"ip": "10.0.0.1", "as_num": 65101, "password": "a\nb"}).field == "password"
    assert bad(key, {"ip": "10.0.0.1", "as_num": 65101, "port": 0}).field == "port"
    assert bad(key, {"ip": "10.0.0.1"}).field == "as_num"
    assert "not an IP" in bad(key.replace("10.0.0.1", "10.0.0.999"),
                              {"ip": "10.0.0.1", "as_num": 1}).message
    rr_key = L.build(Kind.BGP_ROUTE_REFLECTOR, version=4, ip="10.0.0.9")
    assert dec(rr_key, {"ip": "10.0.0.9", "cluster_id": "1.0.0.1"}).cluster_id == "1.0.0.1"
    assert bad(rr_key, {"ip": "10.0.0.9", "cluster_id": "blue"}).field == "cluster_id"


def test_status_and_ready():
    st = dec(L.endpoint_status(EndpointId("h1", "k8s", "wl", "eth0")),
             {"status": "error", "reason": "boom"})
    assert st.status == "error"
    assert bad(L.endpoint_status(EndpointId("h1", "k8s", "wl", "eth0")),
               {"status": "sideways"}).field == "status"
    assert dec(L.ready(), "true") is True
    assert "true or false" in bad(L.ready(), "yes please").message


def test_encode_round_trip():
    ep = dec(EP_KEY, GOOD_EP)
    assert dec(EP_KEY, model.encode(ep)) == ep
