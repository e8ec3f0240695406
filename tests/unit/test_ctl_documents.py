"""felixctl's resource documents without etcd: validation names the document and field,
references are checked across the file, and the datastore's keys read back as documents."""

import pytest

from felix_py import model
from felix_py.ctl import documents
from felix_py.ctl.documents import DocError, check_references, from_snapshot, translate
from felix_py.datastore.keys import KeyLayout

L = KeyLayout("/calico")


def snapshot(resources):
    """What etcd would hold after writing the resources, as Ctx.snapshot() returns it."""
    items = []
    for res in resources:
        for key, text in res.puts:
            pk = L.parse(key)
            items.append((pk, model.decode(pk, text.encode()), text.encode()))
    return items


def test_endpoint_keys_and_canonical_value():
    res = translate(1, {"kind": "endpoint", "metadata": {"host": "h1", "workload": "w"},
                        "spec": {"name": "cali1", "ipv4_nets": ["10.0.0.1/32"],
                                 "mac": "02-00-00-00-00-0A", "profile_ids": ["web"]}}, L)
    key, text = res.puts[0]
    assert key == "/calico/v1/host/h1/workload/cli/w/endpoint/eth0"
    assert '"mac":"02:00:00:00:00:0a"' in text.replace(" ", "")
    assert res.profiles_named == [("spec.profile_ids.0", "web")]
    assert res.what == "endpoint h1/cli/w/eth0"


@pytest.mark.parametrize("doc, field, message", [
    ([], None, "a document is a mapping"),
    ({"kind": "profile", "metadata": {"name": "p"}, "spec": {}, "extra": 1}, "extra",
     "unknown field"),
    ({"apiVersion": "v2", "kind": "pool"}, "apiVersion", "is not felix-py/v1"),
    ({"kind": "Profile"}, "kind", "unknown kind 'Profile'"),
    ({"kind": "profile", "metadata": {}}, "metadata.name", "missing"),
    ({"kind": "profile", "metadata": {"name": "p", "ns": "x"}}, "metadata.ns", "unknown field"),
    ({"kind": "profile", "metadata": {"name": "p"}}, "spec", "missing"),
    ({"kind": "profile", "metadata": {"name": "a/b"}, "spec": {}}, "metadata",
     "cannot be a key segment"),
    ({"kind": "profile", "metadata": {"name": "p"},
      "spec": {"outbound_rules": [{"action": "allow", "protocol": "tcp",
                                   "dst_ports": [70000]}]}},
     "spec.outbound_rules.0.dst_ports.0", "port 70000 is out of range"),
    ({"kind": "profile", "metadata": {"name": "p"}, "spec": {"tags": ["a b"]}}, "spec.tags",
     "is not a valid name"),
    ({"kind": "endpoint", "metadata": {"host": "h", "workload": "w"},
      "spec": {"name": "cali1", "ipv4_nets": ["10.0.0.0/24"]}}, "spec.ipv4_nets.0",
     "single address"),
    ({"kind": "pool", "metadata": {"cidr": "10.0.0.1/8"}, "spec": {}}, "metadata.cidr",
     "host bits set"),
    ({"kind": "pool", "metadata": {"cidr": "10.0.0.0/8"}, "spec": {"cidr": "10.0.0.0/8"}},
     "spec.cidr", "goes in metadata.cidr"),
    ({"kind": "pool", "metadata": {"cidr": "10.0.0.0/8"}, "spec": {"block_size": 4}},
     "spec", "block_size"),
    ({"kind": "bgpPeer", "metadata": {"ip": "nope"}, "spec": {"as_num": 1}}, "metadata.ip",
     "not an IP address"),
    ({"kind": "bgpPeer", "metadata": {"ip": "10.0.0.1"}, "spec": {"as_num": "x"}},
     "spec.as_num", "is not an AS number"),
    ({"kind": "bgpConfig", "metadata": {"host": "h1"}, "spec": {"node_mesh": True}},
     "spec.node_mesh", "is a global setting"),
    ({"kind": "bgpConfig", "spec": {"node_mesh": "yes"}}, "spec.node_mesh",
     "must be true or false"),
    ({"kind": "bgpConfig", "spec": {"mode": "ring"}}, "spec.mode", "unknown BGP mode"),
    ({"kind": "config", "spec": {"EtcdEndpoints": "http://x"}}, "spec.EtcdEndpoints",
     "local to each host"),
    ({"kind": "config", "spec": {"Nope": 1}}, "spec.Nope", "unknown setting"),
    ({"kind": "group", "metadata": {"name": "g"}, "spec": {"exports": [{"to": "g"}]}},
     "spec.exports.0", "already reaches itself"),
    ({"kind": "group", "metadata": {"name": "g"}, "spec": {"exports": [{"port": 80}]}},
     "spec.exports.0", "an export is a mapping"),
    ({"kind": "group", "metadata": {"name": "g"},
      "spec": {"exports": [{"to": "h", "ports": [99999]}]}}, "spec.exports.0.ports.0",
     "out of range"),
])
def test_bad_documents_name_index_and_field(doc, field, message):
    with pytest.raises(DocError) as e:
        translate(7, doc, L)
    assert e.value.index == 7 and e.value.field == field
    assert message in e.value.message
    assert str(e.value).startswith("document 7")


def test_delete_needs_only_metadata():
    res = translate(1, {"kind": "profile", "metadata": {"name": "p"}}, L, need_spec=False)
    assert res.owned == ["/calico/v1/policy/profile/p/rules", "/calico/v1/policy/profile/p/tags",
                         "/calico/v1/policy/profile/p/labels"]
    res = translate(1, {"kind": "bgpConfig"}, L, need_spec=False)
    assert "/calico/bgp/v1/global/node_mesh" in res.owned
    assert "/calico/bgp/v1/host/h/rr_cluster_id" in \
        translate(1, {"kind": "bgpConfig", "metadata": {"host": "h"}}, L, need_spec=False).owned


def test_references_across_documents():
    web = translate(1, {"kind": "group", "metadata": {"name": "web"}, "spec": {}}, L)
    ep = translate(2, {"kind": "endpoint", "metadata": {"host": "h", "workload": "w"},
                       "spec": {"name": "c1", "profile_ids": ["web", "db"]}}, L)
    check_references([web, ep], profiles=["db"], pools=[])
    with pytest.raises(DocError, match="document 2 .*'spec.profile_ids.1': unknown profile"):
        check_references([web, ep], profiles=[], pools=[])
    db = translate(3, {"kind": "group", "metadata": {"name": "db"},
                       "spec": {"exports": [{"to": "ops", "ports": [5432]}]}}, L)
    with pytest.raises(DocError, match="'spec.exports.0.to': unknown group 'ops'"):
        check_references([web, db], profiles=[], pools=[])


def test_pools_may_not_overlap():
    a = translate(1, {"kind": "pool", "metadata": {"cidr": "10.0.0.0/16"}, "spec": {}}, L)
    b = translate(2, {"kind": "pool", "metadata": {"cidr": "10.0.1.0/24"}, "spec": {}}, L)
    check_references([a], pools=["10.0.0.0/16", "10.1.0.0/16"], profiles=[])  # itself: fine
    with pytest.raises(DocError, match="document 2 .*overlaps the pool 10.0.0.0/16"):
        check_references([a, b], pools=[], profiles=[])
    with pytest.raises(DocError, match="document 2 .*overlaps the pool 10.0.0.0/8"):
        check_references([b], pools=["10.0.0.0/8"], profiles=[])


def test_the_same_key_twice_is_refused():
    a = translate(1, {"kind": "profile", "metadata": {"name": "x"}, "spec": {}}, L)
    b = translate(2, {"kind": "group", "metadata": {"name": "x"}, "spec": {}}, L)
    with pytest.raises(DocError, match="document 2 .*same key as document 1"):
        check_references([a, b], profiles=[], pools=[])


DOCS = [
    {"kind": "config", "metadata": {"host": "h1"}, "spec": {"LogLevel": "DEBUG"}},
    {"kind": "bgpConfig", "spec": {"as_num": 65000, "node_mesh": False}},
    {"kind": "bgpConfig", "metadata": {"host": "h1"},
     "spec": {"ip_addr_v4": "10.0.0.1", "mode": "route-reflector", "rr_cluster_id": "1.1.1.1"}},
    {"kind": "bgpPeer", "metadata": {"ip": "10.0.0.254", "host": "h1"}, "spec": {"as_num": 65101}},
    {"kind": "routeReflector", "metadata": {"ip": "10.0.0.9"}, "spec": {"cluster_id": "1.1.1.1"}},
    {"kind": "pool", "metadata": {"cidr": "10.65.0.0/16"},
     "spec": {"masquerade": True, "disabled": False}},
    {"kind": "profile", "metadata": {"name": "plain"},
     "spec": {"inbound_rules": [{"action": "deny", "!src_net": "10.0.0.0/8"}],
              "outbound_rules": [], "labels": {"a": "b"}}},
    {"kind": "group", "metadata": {"name": "db"},
     "spec": {"exports": [{"to": "web", "selector": 'x == "y"', "protocol": "udp",
                           "ports": [53]}],
              "connections": ["web"]}},
    {"kind": "group", "metadata": {"name": "web"}, "spec": {"connections": ["db"]}},
    {"kind": "endpoint", "metadata": {"host": "h1", "orchestrator": "k8s", "workload": "w",
                                      "endpoint": "eth0"},
     "spec": {"state": "active", "name": "cali1", "profile_ids": ["db"],
              "ipv4_nets": ["10.65.0.1/32"]}},
]


def test_snapshot_reads_back_as_the_same_documents():
    resources = [translate(i, d, L) for i, d in enumerate(DOCS, 1)]
    check_references(resources, profiles=[], pools=[])
    got = from_snapshot(snapshot(resources))
    want = [documents.document(d["kind"], d.get("metadata", {}), d["spec"]) for d in DOCS]
    assert got == want
    # and they translate to the very same bytes
    again = [translate(i, d, L) for i, d in enumerate(got, 1)]
    assert [r.puts for r in again] == [r.puts for r in resources]


def test_invalid_values_are_shown_not_hidden():
    key = "/calico/v1/ipam/v4/pool/10.0.0.0-8"
    pk = L.parse(key)
    raw = b'{"cidr": "10.0.0.0/8", "masquerade": "maybe"}'
    try:
        model.decode(pk, raw)
    except model.ModelError as e:
        err = e
    docs = from_snapshot([(pk, err, raw)], ["pool"])
    assert docs[0]["spec"] == {"cidr": "10.0.0.0/8", "masquerade": "maybe"}
    assert "masquerade" in docs[0]["status"]["errors"][0]
