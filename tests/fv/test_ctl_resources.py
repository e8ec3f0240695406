"""felixctl apply|create|delete|get -f against a real etcd: a file is written entirely or
not at all, and what get prints, apply takes back unchanged."""

import json

import pytest
import yaml

CLUSTER = """\
apiVersion: felix-py/v1
kind: profile
metadata: {name: web}
spec:
  inbound_rules:
  - {action: allow, src_tag: web}
  - {action: allow, protocol: tcp, dst_ports: [80, "8000:8080"]}
  outbound_rules: [{action: allow}]
  tags: [web]
  labels: {tier: frontend}
---
kind: group
metadata: {name: db}
spec:
  exports:
  - {to: web, protocol: tcp, ports: [5432], selector: "role == 'primary'"}
  connections: [ops]
---
kind: group
metadata: {name: ops}
spec:
  connections: [db]
---
kind: endpoint
metadata: {host: h1, workload: wl1}
spec: {name: cali1, ipv4_nets: [10.65.0.1/32], profile_ids: [web, db]}
---
kind: pool
metadata: {cidr: 10.65.0.0/16}
spec: {masquerade: true}
---
kind: bgpPeer
metadata: {ip: 10.0.0.254, host: h1}
spec: {as_num: 65101}
---
kind: bgpPeer
metadata: {ip: 10.0.1.254}
spec: {as_num: "65102", password: s3cret}
---
kind: routeReflector
metadata: {ip: 10.0.0.100}
spec: {cluster_id: 1.0.0.1}
---
kind: bgpConfig
spec: {as_num: 64512, mode: downward-default, node_mesh: false}
---
kind: bgpConfig
metadata: {host: h1}
spec: {ip_addr_v4: 10.0.0.1, rr_cluster_id: 1.0.0.1, as_num: 64513}
---
kind: config
spec: {LogLevel: DEBUG, FailsafeInboundHostPorts: ["tcp:22", "udp:68"]}
---
kind: config
metadata: {host: h1}
spec: {ReportingTtlSecs: 30}
"""


@pytest.fixture
def cluster(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER)
    return str(path)


def test_apply_writes_every_kind(ctl, cluster):
    out = ctl("apply", "-f", cluster)
    assert "Applied 12 resource(s)." in out and "group db: applied" in out
    d = ctl.dump()
    p = ctl.prefix
    assert json.loads(d[f"{p}/v1/policy/profile/web/rules"])["inbound_rules"][1] == {
        "action": "allow", "protocol": "tcp", "dst_ports": [80, "8000:8080"]}
    assert json.loads(d[f"{p}/v1/policy/profile/web/labels"]) == {"tier": "frontend"}
    db_rules = json.loads(d[f"{p}/v1/policy/profile/db/rules"])["inbound_rules"]
    assert db_rules == [{"action": "allow", "src_tag": "db"},
                        {"action": "allow", "protocol": "tcp", "src_tag": "web",
                         "dst_selector": 'role == "primary"', "dst_ports": [5432]},
                        {"action": "allow", "src_tag": "ops"}]
    assert json.loads(d[f"{p}/v1/policy/profile/db/tags"]) == ["db"]
    assert json.loads(d[f"{p}/v1/host/h1/workload/cli/wl1/endpoint/eth0"])["profile_ids"] == \
        ["web", "db"]
    assert json.loads(d[f"{p}/v1/ipam/v4/pool/10.65.0.0-16"])["masquerade"] is True
    assert json.loads(d[f"{p}/bgp/v1/host/h1/peer_v4/10.0.0.254"]) == {"ip": "10.0.0.254",
                                                                       "as_num": 65101}
    assert json.loads(d[f"{p}/bgp/v1/global/peer_v4/10.0.1.254"])["password"] == "s3cret"
    assert json.loads(d[f"{p}/bgp/v1/rr_v4/10.0.0.100"]) == {"ip": "10.0.0.100",
                                                             "cluster_id": "1.0.0.1"}
    assert d[f"{p}/bgp/v1/global/as_num"] == "64512"
    assert d[f"{p}/bgp/v1/global/mode"] == "downward-default"
    assert json.loads(d[f"{p}/bgp/v1/global/node_mesh"]) == {"enabled": False}
    assert d[f"{p}/bgp/v1/host/h1/ip_addr_v4"] == "10.0.0.1"
    assert d[f"{p}/bgp/v1/host/h1/rr_cluster_id"] == "1.0.0.1"
    assert d[f"{p}/bgp/v1/host/h1/as_num"] == "64513"
    assert d[f"{p}/v1/config/FailsafeInboundHostPorts"] == "tcp:22,udp:68"
    assert d[f"{p}/v1/host/h1/config/ReportingTtlSecs"] == "30"
    assert len(d) == 21
    # Applying again changes nothing.
    ctl("apply", "-f", cluster)
    assert ctl.dump() == d


def test_get_round_trips_through_apply(ctl, cluster, tmp_path):
    ctl("apply", "-f", cluster)
    before = ctl.dump()
    exported = tmp_path / "export.yaml"
    exported.write_text(ctl("get", "-o", "yaml"))
    docs = yaml.safe_load(exported.read_text())
    assert sorted(d["kind"] for d in docs) == sorted(
        ["profile", "group", "group", "endpoint", "pool", "bgpPeer", "bgpPeer",
         "routeReflector", "bgpConfig", "bgpConfig", "config", "config"])
    as_json = tmp_path / "export.json"
    as_json.write_text(ctl("get", "-o", "json"))
    ctl("delete", "-f", str(exported))
    assert ctl.dump() == {}
    ctl("create", "-f", str(as_json))
    assert ctl.dump() == before


def test_get_by_kind_name_and_file(ctl, cluster):
    ctl("apply", "-f", cluster)
    out = ctl("get", "groups")
    assert [line.split()[:2] for line in out.splitlines()[2:]] == [["group", "db"],
                                                                  ["group", "ops"]]
    assert ctl.yaml("get", "endpoint", "h1/cli/wl1/eth0")[0]["spec"]["name"] == "cali1"
    assert ctl.yaml("get", "bgpConfig", "h1")[0]["spec"] == {
        "as_num": 64513, "rr_cluster_id": "1.0.0.1", "ip_addr_v4": "10.0.0.1"}
    got = ctl.yaml("get", "-f", cluster)
    assert [d["kind"] for d in got][:3] == ["profile", "group", "group"]
    assert got[0]["spec"]["labels"] == {"tier": "frontend"}
    assert "no pool '10.9.0.0/16'" in ctl.fails("get", "pool", "10.9.0.0/16")
    assert "unknown kind 'widget'" in ctl.fails("get", "widget")


BAD_DOCS = [
    ("kind: profile\nmetadata: {name: x}\nspec:\n  inbound_rules:\n"
     "  - {action: allow, protocol: tcp, dst_ports: [70000]}\n",
     "document 2 (profile x): field 'spec.inbound_rules.0.dst_ports.0': port 70000 is out "
     "of range"),
    ("kind: endpoint\nmetadata: {host: h1, workload: w}\n"
     "spec: {name: cali9, ipv4_nets: [10.65.0.9/32], mac: nonsense}\n",
     "document 2 (endpoint h1/cli/w/eth0): field 'spec.mac'"),
    ("kind: endpoint\nmetadata: {host: h1, workload: w}\n"
     "spec: {name: cali9, ipv4_nets: [10.65.0.9/32], profile_ids: [nosuch]}\n",
     "field 'spec.profile_ids.0': unknown profile 'nosuch'"),
    ("kind: pool\nmetadata: {cidr: 10.65.0.0/33}\nspec: {}\n",
     "document 2 (pool 10.65.0.0/33): field 'metadata.cidr'"),
    ("kind: pool\nmetadata: {cidr: 10.65.0.0/24}\nspec: {}\n",
     "field 'metadata.cidr': 10.65.0.0/24 overlaps the pool 10.65.0.0/16"),
    ("kind: group\nmetadata: {name: g}\nspec: {exports: [{to: nosuch, ports: [80]}]}\n",
     "field 'spec.exports.0.to': unknown group 'nosuch'"),
    ("kind: bgpPeer\nmetadata: {ip: 10.0.0.9}\nspec: {as_num: 99999999999}\n",
     "field 'spec.as_num'"),
    ("kind: bgpConfig\nspec: {rr_cluster_id: 1.0.0.1}\n",
     "field 'spec.rr_cluster_id': is a per host (metadata.host) setting"),
    ("kind: config\nspec: {LogLevel: LOUD}\n", "field 'spec.LogLevel'"),
    ("kind: widget\nmetadata: {name: x}\n", "document 2: field 'kind': unknown kind 'widget'"),
    ("kind: profile\nmetadata: {name: x}\nspec: {inbound_rules: [], color: red}\n",
     "field 'spec.color': unknown field"),
    ("kind: profile\nmetadata: {name: web}\nspec: {}\n",
     "writes the same key as document 1 (profile web)"),
]


@pytest.mark.parametrize("bad, message", BAD_DOCS)
def test_one_bad_document_writes_nothing(ctl, tmp_path, bad, message):
    ctl("pool", "add", "10.65.0.0/16")
    good = ("kind: profile\nmetadata: {name: web}\nspec: {tags: [web]}\n---\n"
            "kind: pool\nmetadata: {cidr: 10.66.0.0/16}\nspec: {}\n")
    path = tmp_path / "mixed.yaml"
    path.write_text(good.split("---\n")[0] + "---\n" + bad + "---\n" + good.split("---\n")[1])
    for verb in ("apply", "create"):
        err = ctl.fails(verb, "-f", str(path))
        assert message in err and err.endswith("nothing was written"), err


def test_bad_files(ctl, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: profile\nmetadata: {name: [x\n")
    assert "is not valid YAML: line" in ctl.fails("apply", "-f", str(broken))
    broken.write_text('[{"kind": "profile",}]')
    assert "is not valid JSON: line 1" in ctl.fails("apply", "-f", str(broken))
    assert "cannot read" in ctl.fails("apply", "-f", str(tmp_path / "missing.yaml"))
    broken.write_text("---\n")
    assert "holds no document" in ctl.fails("apply", "-f", str(broken))


def test_create_and_delete_refuse_as_a_whole(ctl, cluster, tmp_path):
    ctl("pool", "add", "10.65.0.0/16", "--masquerade")
    assert "document 5 (pool 10.65.0.0/16) already exists" in ctl.fails("create", "-f",
                                                                        cluster)
    ctl("apply", "-f", cluster)
    extra = tmp_path / "extra.yaml"
    extra.write_text("kind: profile\nmetadata: {name: web}\n---\n"
                     "kind: profile\nmetadata: {name: ghost}\n")
    assert "document 2 (profile ghost) does not exist" in ctl.fails("delete", "-f", str(extra))
    out = ctl("delete", "-f", str(extra), "--skip-missing")
    assert "Deleted 1 resource(s)." in out
    assert ctl.value("v1/policy/profile/web/rules") is None


def test_apply_from_stdin_as_json(ctl):
    doc = {"kind": "pool", "metadata": {"cidr": "10.70.0.0/16"}, "spec": {"disabled": True}}
    ctl("apply", "-f", "-", input=json.dumps([doc]))
    assert ctl.value("v1/ipam/v4/pool/10.70.0.0-16")["disabled"] is True


def test_apply_replaces_and_settings_merge(ctl, cluster, tmp_path):
    ctl("apply", "-f", cluster)
    change = tmp_path / "change.yaml"
    change.write_text("kind: profile\nmetadata: {name: web}\nspec: {inbound_rules: []}\n---\n"
                      "kind: config\nspec: {LogLevel: null, HealthPort: 9100}\n")
    ctl("apply", "-f", str(change))
    assert ctl.value("v1/policy/profile/web/rules") == {"inbound_rules": [],
                                                        "outbound_rules": []}
    assert ctl.value("v1/policy/profile/web/tags") is None       # replaced: no tags given
    assert ctl.client.get(f"{ctl.prefix}/v1/config/LogLevel") is None
    assert ctl.client.get(f"{ctl.prefix}/v1/config/HealthPort") == b"9100"
    assert ctl.client.get(f"{ctl.prefix}/v1/config/FailsafeInboundHostPorts") == \
        b"tcp:22,udp:68"
