"""felixctl endpoint, profile, pool and config against a real etcd: what each command
writes, what it prints, and that every refused command leaves the datastore unchanged."""

import json

import pytest


EP1 = "v1/host/h1/workload/cli/wl1/endpoint/eth0"
EP2 = "v1/host/h1/workload/k8s/wl2/endpoint/eth0"


@pytest.fixture
def two_endpoints(ctl):
    ctl("profile", "add", "web")
    ctl("profile", "add", "db", "--tag", "backend", "--label", "tier=db")
    ctl("endpoint", "add", "wl1", "--host", "h1", "--ip", "10.65.0.1", "--profile", "web",
        "--label", "app=web", "--interface", "cali1")
    ctl("endpoint", "add", "h1/k8s/wl2/eth0", "--ip", "10.65.0.2", "--ip", "fd00::2",
        "--profile", "db", "--mac", "02:00:00:00:00:02")
    return ctl


def test_endpoint_add_writes_the_endpoint(two_endpoints):
    ctl = two_endpoints
    assert ctl.value(EP1) == {"state": "active", "name": "cali1", "profile_ids": ["web"],
                              "ipv4_nets": ["10.65.0.1/32"], "ipv6_nets": [],
                              "labels": {"app": "web"}}
    ep2 = ctl.value(EP2)
    assert ep2["ipv6_nets"] == ["fd00::2/128"] and ep2["mac"] == "02:00:00:00:00:02"
    assert ep2["name"].startswith("cali") and len(ep2["name"]) == 15


def test_endpoint_list_filters_and_shows_status(two_endpoints, client, prefix):
    ctl = two_endpoints
    client.put(f"{prefix}/felix/v1/host/h1/workload/cli/wl1/endpoint/eth0",
               json.dumps({"status": "up"}))
    out = ctl("endpoint", "list")
    assert out.splitlines()[0].split() == ["HOST", "ORCHESTRATOR", "WORKLOAD", "ENDPOINT",
                                           "INTERFACE", "IPS", "PROFILES", "STATE", "STATUS"]
    row = next(line for line in out.splitlines() if " wl1 " in line).split()
    assert row == ["h1", "cli", "wl1", "eth0", "cali1", "10.65.0.1/32", "web", "active", "up"]
    assert "wl2" in out
    assert "wl2" not in ctl("endpoint", "list", "--profile", "web")
    assert ctl("endpoint", "list", "--host", "h2").strip().count("\n") == 1   # header only
    docs = ctl.json("endpoint", "list", "--profile", "db")
    assert [d["metadata"]["workload"] for d in docs] == ["wl2"]
    assert ctl.json("endpoint", "list", "--profile", "web")[0]["status"] == {"status": "up"}


def test_endpoint_show_and_update(two_endpoints):
    ctl = two_endpoints
    out = ctl("endpoint", "show", "wl2")
    assert "fd00::2/128" in out and "02:00:00:00:00:02" in out
    ctl("endpoint", "update", "wl1", "--add-profile", "db", "--label", "tier=web",
        "--remove-label", "app", "--ip", "10.65.0.9", "--state", "inactive")
    ep = ctl.value(EP1)
    assert ep["profile_ids"] == ["web", "db"] and ep["labels"] == {"tier": "web"}
    assert ep["ipv4_nets"] == ["10.65.0.9/32"] and ep["state"] == "inactive"
    ctl("endpoint", "update", "h1/cli/wl1/eth0", "--remove-profile", "web")
    assert ctl.value(EP1)["profile_ids"] == ["db"]
    assert ctl.yaml("endpoint", "show", "wl1")["spec"]["profile_ids"] == ["db"]


def test_endpoint_remove(two_endpoints, client, prefix):
    ctl = two_endpoints
    client.put(f"{prefix}/felix/v1/host/h1/workload/cli/wl1/endpoint/eth0", '{"status": "up"}')
    assert "Removed endpoint h1/cli/wl1/eth0" in ctl("endpoint", "remove", "wl1")
    assert ctl.value(EP1) is None
    assert ctl.value("felix/v1/host/h1/workload/cli/wl1/endpoint/eth0") is None


@pytest.mark.parametrize("args, message", [
    (["--ip", "10.65.0.3", "--profile", "nosuch"], "unknown profile 'nosuch'"),
    (["--ip", "10.65.0.3", "--mac", "02:00:zz"], "field 'mac'"),
    (["--ip", "10.65.0.300"], "'10.65.0.300' is not an IP address"),
    (["--ip", "10.65.0.0/24"], "single address"),
    (["--ip", "10.65.0.1"], "already used by endpoint h1/cli/wl1/eth0"),
    (["--ip", "10.65.0.3", "--label", "novalue"], "is not KEY=VALUE"),
    (["--ip", "10.65.0.3", "--interface", "much-too-long-interface"], "field 'name'"),
])
def test_endpoint_add_bad_input(two_endpoints, args, message):
    err = two_endpoints.fails("endpoint", "add", "wl3", "--host", "h1", *args)
    assert message in err


def test_endpoint_bad_updates_and_lookups(two_endpoints):
    ctl = two_endpoints
    assert "already exists" in ctl.fails("endpoint", "add", "wl1", "--host", "h1",
                                         "--ip", "10.65.0.7")
    assert "unknown profile 'nosuch'" in ctl.fails("endpoint", "update", "wl1",
                                                  "--add-profile", "nosuch")
    assert "field 'mac'" in ctl.fails("endpoint", "update", "wl1", "--mac", "nope")
    assert "does not have profile 'db'" in ctl.fails("endpoint", "update", "wl1",
                                                    "--remove-profile", "db")
    assert "no workload 'ghost'" in ctl.fails("endpoint", "remove", "ghost")
    assert "does not exist" in ctl.fails("endpoint", "show", "h9/cli/ghost/eth0")
    ctl("endpoint", "add", "wl1", "--host", "h2", "--ip", "10.65.0.8")
    assert "ambiguous" in ctl.fails("endpoint", "remove", "wl1")
    ctl("endpoint", "remove", "wl1", "--host", "h2")


def test_profiles(two_endpoints):
    ctl = two_endpoints
    assert ctl.value("v1/policy/profile/db/tags") == ["db", "backend"]
    assert ctl.value("v1/policy/profile/db/labels") == {"tier": "db"}
    assert ctl.value("v1/policy/profile/web/rules") == {
        "inbound_rules": [{"action": "allow", "src_tag": "web"}],
        "outbound_rules": [{"action": "allow"}]}
    rows = {line.split()[0]: line.split() for line in ctl("profile", "list").splitlines()[2:]}
    assert rows["db"] == ["db", "db,backend", "tier=db", "1", "1", "1"]
    ctl("profile", "add", "empty", "--no-default-rules")
    assert ctl.value("v1/policy/profile/empty/rules") == {"inbound_rules": [],
                                                          "outbound_rules": []}
    assert "already exists" in ctl.fails("profile", "add", "web")
    assert "is used by 1 endpoint" in ctl.fails("profile", "remove", "web")
    assert "unknown profile 'ghost'" in ctl.fails("profile", "remove", "ghost")
    assert "unknown profile 'ghost'" in ctl.fails("profile", "show", "ghost")
    ctl("profile", "remove", "empty")
    assert ctl.value("v1/policy/profile/empty/rules") is None
    assert "and from 1 endpoint" in ctl("profile", "remove", "web", "--force")
    assert ctl.value("v1/policy/profile/web/rules") is None
    assert ctl.value(EP1)["profile_ids"] == []


def test_profile_rules(two_endpoints):
    ctl = two_endpoints
    ctl("profile", "rule", "add", "db", "--direction", "inbound", "--protocol", "tcp",
        "--src-tag", "web", "--dst-ports", "5432,6000:6010")
    ctl("profile", "rule", "add", "db", "--direction", "inbound", "--action", "deny",
        "--protocol", "icmp", "--icmp-type", "8", "--at", "1")
    ctl("profile", "rule", "add", "db", "--direction", "outbound", "--action", "deny",
        "--dst-net", "10.0.0.0/8", "--not-dst-net", "10.65.0.0/16", "--at", "1")
    ctl("profile", "rule", "add", "db", "--direction", "inbound", "--src-selector",
        "app == 'web'", "--ip-version", "4")
    rules = ctl.value("v1/policy/profile/db/rules")
    assert rules["inbound_rules"] == [
        {"action": "deny", "protocol": "icmp", "icmp_type": 8},
        {"action": "allow", "src_tag": "db"},
        {"action": "allow", "protocol": "tcp", "src_tag": "web",
         "dst_ports": [5432, "6000:6010"]},
        {"action": "allow", "ip_version": 4, "src_selector": 'app == "web"'}]
    assert rules["outbound_rules"][0] == {"action": "deny", "dst_net": "10.0.0.0/8",
                                          "!dst_net": "10.65.0.0/16"}
    shown = ctl("profile", "show", "db")
    assert "protocol=tcp src_tag=web dst_ports=5432,6000:6010" in shown
    ctl("profile", "rule", "remove", "db", "--direction", "inbound", "--protocol", "tcp",
        "--src-tag", "web", "--dst-ports", "5432,6000:6010")
    ctl("profile", "rule", "remove", "db", "--direction", "inbound", "--at", "1")
    ctl("profile", "rule", "remove", "db", "--direction", "outbound", "--at", "1")
    rules = ctl.value("v1/policy/profile/db/rules")
    assert rules["inbound_rules"] == [{"action": "allow", "src_tag": "db"},
                                      {"action": "allow", "ip_version": 4,
                                       "src_selector": 'app == "web"'}]
    assert rules["outbound_rules"] == [{"action": "allow"}]


@pytest.mark.parametrize("args, message", [
    (["--protocol", "tcp", "--dst-ports", "70000"], "--dst-ports: port 70000 is out of range"),
    (["--dst-ports", "80"], "ports need protocol"),
    (["--protocol", "tcp", "--dst-ports", "http"], "'http' is not a port"),
    (["--src-net", "10.0.0.1/8"], "--src-net"),
    (["--protocol", "bogus"], "unknown protocol"),
    (["--src-selector", "app ==="], "--src-selector"),
    (["--src-net", "10.0.0.0/8", "--dst-net", "fd00::/64"], "mixes IPv4 and IPv6"),
    (["--icmp-type", "300", "--protocol", "icmp"], "--icmp-type"),
    (["--at", "9"], "has only 1 inbound rule"),
])
def test_profile_rule_bad_input(two_endpoints, args, message):
    err = two_endpoints.fails("profile", "rule", "add", "db", "--direction", "inbound", *args)
    assert message in err


def test_profile_rule_bad_removes(two_endpoints):
    ctl = two_endpoints
    assert "unknown profile 'ghost'" in ctl.fails("profile", "rule", "add", "ghost",
                                                  "--direction", "inbound")
    assert "no such inbound rule" in ctl.fails("profile", "rule", "remove", "db",
                                               "--direction", "inbound", "--protocol", "udp")
    assert "has only 1 outbound rule" in ctl.fails("profile", "rule", "remove", "db",
                                                  "--direction", "outbound", "--at", "5")
    assert "either --at N or" in ctl.fails("profile", "rule", "remove", "db",
                                           "--direction", "outbound")


def test_pools(ctl):
    ctl("pool", "add", "10.65.0.0/16", "--masquerade")
    ctl("pool", "add", "fd00:65::/48", "--disabled", "--block-size", "122")
    assert ctl.value("v1/ipam/v4/pool/10.65.0.0-16") == {"cidr": "10.65.0.0/16",
                                                         "masquerade": True, "disabled": False}
    assert ctl.value("v1/ipam/v6/pool/fd00:65::-48")["block_size"] == 122
    rows = [line.split() for line in ctl("pool", "list").splitlines()[2:]]
    assert ["10.65.0.0/16", "yes", "no", "-", "ok"] in rows
    assert ctl.json("pool", "list")[1]["spec"] == {"masquerade": False, "disabled": True,
                                                   "block_size": 122}
    assert "overlaps the existing pool 10.65.0.0/16" in ctl.fails("pool", "add", "10.65.8.0/24")
    assert "invalid pool CIDR '10.66.0.1/16'" in ctl.fails("pool", "add", "10.66.0.1/16")
    assert "invalid pool CIDR 'nonsense'" in ctl.fails("pool", "add", "nonsense")
    assert "block_size" in ctl.fails("pool", "add", "10.67.0.0/16", "--block-size", "8")
    assert "does not exist" in ctl.fails("pool", "remove", "10.99.0.0/16")
    ctl("pool", "remove", "10.65.0.0/16")
    assert ctl.value("v1/ipam/v4/pool/10.65.0.0-16") is None


def test_config(ctl):
    ctl("config", "set", "LogLevel", "DEBUG")
    ctl("config", "set", "ReportingTtlSecs", "30", "--host", "h1")
    assert ctl.client.get(f"{ctl.prefix}/v1/config/LogLevel") == b"DEBUG"
    assert ctl.client.get(f"{ctl.prefix}/v1/host/h1/config/ReportingTtlSecs") == b"30"
    assert ctl("config", "get", "LogLevel").strip() == "DEBUG"
    assert ctl("config", "get", "ReportingTtlSecs").strip() == "20"
    assert ctl.json("config", "get", "ReportingTtlSecs", "--host", "h1") == {
        "name": "ReportingTtlSecs", "value": "30", "source": "host", "host": "h1"}
    rows = {line.split()[0]: line.split() for line in
            ctl("config", "list", "--host", "h1").splitlines()[2:]}
    assert rows["LogLevel"][1:3] == ["DEBUG", "global"]
    assert rows["ReportingTtlSecs"][1:3] == ["30", "host"]
    assert rows["FailsafeInboundHostPorts"][1:3] == ["tcp:22", "default"]
    assert "EtcdEndpoints" not in rows
    assert "is not one of" in ctl.fails("config", "set", "LogLevel", "LOUD")
    assert "unknown setting 'Bogus'" in ctl.fails("config", "set", "Bogus", "1")
    assert "local to each host" in ctl.fails("config", "set", "EtcdEndpoints", "http://x")
    assert "out of range" in ctl.fails("config", "set", "HealthPort", "70000", "--host", "h1")
    assert "is not set" in ctl.fails("config", "unset", "HealthPort")
    ctl("config", "unset", "ReportingTtlSecs", "--host", "h1")
    assert ctl.client.get(f"{ctl.prefix}/v1/host/h1/config/ReportingTtlSecs") is None


def test_update_of_a_calico_single_profile_endpoint(ctl):
    ctl("profile", "add", "web")
    ctl("profile", "add", "db")
    ctl.client.put(f"{ctl.prefix}/{EP1}", json.dumps({"name": "cali1", "profile_id": "web",
                                                      "ipv4_nets": ["10.65.0.1/32"]}))
    ctl("endpoint", "update", "wl1", "--add-profile", "db")
    ep = ctl.value(EP1)
    assert ep["profile_ids"] == ["web", "db"] and "profile_id" not in ep


def test_invalid_stored_values_are_listed_not_fatal(two_endpoints, client, prefix):
    ctl = two_endpoints
    client.put(f"{prefix}/v1/host/h3/workload/cli/bad/endpoint/eth0", '{"name": "x", "mac": 5}')
    client.put(f"{prefix}/v1/ipam/v4/pool/10.99.0.0-16", "not json")
    row = next(line for line in ctl("endpoint", "list").splitlines() if " bad " in line)
    assert "invalid" in row and "mac" in row
    assert "wl1" in ctl("endpoint", "list")
    assert ["10.99.0.0/16", "no", "no", "-", "invalid"] in \
        [line.split() for line in ctl("pool", "list").splitlines()[2:]]
    got = {line.split()[1]: line for line in ctl("get").splitlines()[2:]}
    assert "INVALID" in got["h3/cli/bad/eth0"] and "INVALID" in got["10.99.0.0/16"]
