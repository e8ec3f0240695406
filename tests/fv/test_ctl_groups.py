"""felixctl group and connect/disconnect against a real etcd: the profiles and endpoint
memberships they write, what they print, and refusals that write nothing."""

import pytest
from ctlkit import Ctl

RULES = "v1/policy/profile/{}/rules"
WEB = "v1/host/h1/workload/cli/web1/endpoint/eth0"
DB = "v1/host/h2/workload/cli/db1/endpoint/eth0"


@pytest.fixture
def ctl(client, etcd, prefix):
    c = Ctl(client, etcd.endpoint, prefix)
    c("group", "create", "frontend")
    c("group", "create", "backend")
    c("endpoint", "add", "web1", "--host", "h1", "--ip", "10.65.0.1")
    c("endpoint", "add", "web2", "--host", "h1", "--ip", "10.65.0.2")
    c("endpoint", "add", "db1", "--host", "h2", "--ip", "10.65.1.1", "--ip", "fd00::1",
      "--label", "role=primary")
    yield c
    client.delete_prefix(prefix + "/")


def test_create_writes_a_group_profile(ctl):
    assert ctl.value(RULES.format("backend")) == {
        "inbound_rules": [{"action": "allow", "src_tag": "backend"}],
        "outbound_rules": [{"action": "allow"}]}
    assert ctl.value("v1/policy/profile/backend/tags") == ["backend"]
    assert "already exists" in ctl.fails("group", "create", "backend")
    assert "not a valid group name" in ctl.fails("group", "create", "bad/name")


def test_membership(ctl):
    out = ctl("group", "add", "frontend", "web1", "web2")
    assert "Added 2 endpoint(s) to group frontend" in out
    ctl("group", "add", "backend", "h2/cli/db1/eth0")
    assert ctl.value(WEB)["profile_ids"] == ["frontend"]
    assert ctl.value(DB)["profile_ids"] == ["backend"]
    assert "all were members" in ctl("group", "add", "frontend", "web1")
    assert ctl.value(WEB)["profile_ids"] == ["frontend"]
    shown = ctl("group", "show", "frontend")
    assert "h1/cli/web1/eth0" in shown and "h1/cli/web2/eth0" in shown
    ctl("group", "remove", "frontend", "web2")
    assert ctl.value("v1/host/h1/workload/cli/web2/endpoint/eth0")["profile_ids"] == []
    # One unknown workload among good ones: nobody is added.
    assert "no workload 'ghost'" in ctl.fails("group", "add", "backend", "web1", "ghost")
    assert "unknown group 'nosuch'" in ctl.fails("group", "add", "nosuch", "web1")
    assert "unknown group 'nosuch'" in ctl.fails("group", "show", "nosuch")


def test_exports_and_connections(ctl):
    ctl("group", "export", "backend", "--to", "frontend", "--protocol", "tcp", "--port",
        "5432", "--selector", "role == 'primary'")
    assert ctl.value(RULES.format("backend"))["inbound_rules"][1] == {
        "action": "allow", "protocol": "tcp", "src_tag": "frontend",
        "dst_selector": 'role == "primary"', "dst_ports": [5432]}
    ctl("group", "create", "ops")
    ctl("group", "connect", "ops", "backend")
    assert {"action": "allow", "src_tag": "ops"} in \
        ctl.value(RULES.format("backend"))["inbound_rules"]
    assert {"action": "allow", "src_tag": "backend"} in \
        ctl.value(RULES.format("ops"))["inbound_rules"]
    desc = ctl.json("group", "show", "backend")
    assert desc["exports"] == [{"to": "frontend", "selector": 'role == "primary"',
                                "protocol": "tcp", "ports": [5432]}]
    assert desc["connections"] == ["ops"]
    rows = {line.split()[0]: line.split() for line in ctl("group", "list").splitlines()[2:]}
    assert rows["backend"] == ["backend", "0", "frontend:tcp/5432", "ops"]

    assert "port 70000 is out of range" in ctl.fails("group", "export", "backend", "--to",
                                                     "frontend", "--port", "70000")
    assert "unknown group 'nosuch'" in ctl.fails("group", "export", "backend", "--to",
                                                 "nosuch", "--port", "80")
    assert "cannot be connected to itself" in ctl.fails("group", "connect", "ops", "ops")
    assert "no export" in ctl.fails("group", "unexport", "backend", "--to", "ops")

    ctl("group", "unexport", "backend", "--to", "frontend")
    ctl("group", "disconnect", "ops", "backend")
    assert ctl.value(RULES.format("backend"))["inbound_rules"] == [
        {"action": "allow", "src_tag": "backend"}]
    assert "is not connected" in ctl.fails("group", "disconnect", "ops", "backend")


def test_delete(ctl):
    ctl("group", "add", "backend", "db1")
    ctl("group", "connect", "frontend", "backend")
    assert "group 'backend' is used by 1 endpoint" in ctl.fails("group", "delete", "backend")
    out = ctl("group", "delete", "backend", "--force")
    assert "Deleted group backend (and from 1 member(s))" in out
    assert ctl.value(RULES.format("backend")) is None
    assert ctl.value("v1/policy/profile/backend/tags") is None
    assert ctl.value(DB)["profile_ids"] == []
    # frontend no longer lets the deleted group in
    assert ctl.value(RULES.format("frontend"))["inbound_rules"] == [
        {"action": "allow", "src_tag": "frontend"}]
    assert "unknown group 'backend'" in ctl.fails("group", "delete", "backend")


def test_profile_that_is_not_a_group(ctl):
    ctl("profile", "add", "plain", "--no-default-rules")
    ctl.client.put(f"{ctl.prefix}/v1/policy/profile/plain/tags", "[]")
    assert "is not a group" in ctl.fails("group", "add", "plain", "web1")
    assert "plain" not in ctl("group", "list")


def test_connect_two_workloads(ctl):
    out = ctl("connect", "web1", "db1")
    assert "Connected h1/cli/web1/eth0 and h2/cli/db1/eth0" in out
    pid = ctl.value(WEB)["profile_ids"][-1]
    assert pid.startswith("pair-") and ctl.value(DB)["profile_ids"] == [pid]
    rules = ctl.value(RULES.format(pid))
    assert {"action": "allow", "src_net": "10.65.0.1/32", "dst_net": "10.65.1.1/32"} in \
        rules["inbound_rules"]
    assert {"action": "allow", "src_net": "10.65.1.1/32", "dst_net": "10.65.0.1/32"} in \
        rules["inbound_rules"]
    ctl("connect", "db1", "web1")      # again, the other way round: nothing new
    assert ctl.value(WEB)["profile_ids"] == [pid]
    ctl("disconnect", "web1", "db1")
    assert ctl.value(WEB)["profile_ids"] == [] and ctl.value(DB)["profile_ids"] == []
    assert ctl.value(RULES.format(pid)) is None
    assert "are not connected" in ctl.fails("disconnect", "web1", "db1")
    assert "with itself" in ctl.fails("connect", "web1", "web1")
    assert "no workload 'ghost'" in ctl.fails("connect", "web1", "ghost")
