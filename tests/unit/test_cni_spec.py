"""The CNI protocol side of felix-cni: environment, network configuration, per-container
settings, results and errors, and the plugin's answers that need neither etcd nor kernel."""

import io
import json
import pathlib

import pytest

from felix_py.cni import run, spec
from felix_py.cni.link import host_ifname
from felix_py.cni.spec import CniError
from felix_py.datastore.keys import EndpointId

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "felix-cni"}


def code_of(fn, *args):
    with pytest.raises(CniError) as e:
        fn(*args)
    return e.value.code, e.value.msg


# -- environment -----------------------------------------------------------------------------

def test_env_parsed_with_cni_args():
    env = spec.parse_env({**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.5"})
    assert (env.command, env.container_id, env.netns, env.ifname) == \
        ("ADD", "abc123", "/var/run/netns/x", "eth0")
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.0.0.5"}


@pytest.mark.parametrize("change, words", [
    ({"CNI_COMMAND": None}, "CNI_COMMAND is not set"),
    ({"CNI_COMMAND": "ATTACH"}, "expected one of ADD"),
    ({"CNI_CONTAINERID": None}, "CNI_CONTAINERID"),
    ({"CNI_CONTAINERID": "-bad"}, "CNI_CONTAINERID"),
    ({"CNI_IFNAME": "a-name-longer-than-15"}, "CNI_IFNAME"),
    ({"CNI_IFNAME": "eth/0"}, "CNI_IFNAME"),
    ({"CNI_NETNS": None}, "CNI_NETNS is not set"),
    ({"CNI_ARGS": "novalue"}, "not KEY=VALUE"),
])
def test_bad_environment_is_code_4_naming_the_variable(change, words):
    env = {k: v for k, v in {**ENV, **change}.items() if v is not None}
    code, msg = code_of(spec.parse_env, env)
    assert code == spec.INVALID_ENVIRONMENT and words in msg


def test_del_needs_no_netns_and_version_needs_nothing():
    env = {k: v for k, v in ENV.items() if k != "CNI_NETNS"}
    assert spec.parse_env({**env, "CNI_COMMAND": "DEL"}).netns == ""
    assert spec.parse_env({"CNI_COMMAND": "VERSION"}).command == "VERSION"


# -- network configuration -------------------------------------------------------------------

def test_netconf_defaults():
    c = spec.parse_netconf(json.dumps(CONF))
    assert c.etcd_prefix == "/calico" and c.interface_prefix == "cali" and c.mtu == 1500
    assert c.ipam.assign_ipv4 and not c.ipam.assign_ipv6 and c.orchestrator == "cni"


def test_netconf_accepts_calico_style_ipam_strings_and_unknown_runtime_fields():
    c = spec.parse_netconf(json.dumps({**CONF, "capabilities": {"ips": True},
                                       "ipam": {"type": "calico-ipam", "assign_ipv4": "true",
                                                "assign_ipv6": "true",
                                                "ipv4_pools": ["10.65.0.0/16"]}}))
    assert c.ipam.assign_ipv6 and c.ipam.ipv4_pools == ["10.65.0.0/16"]


@pytest.mark.parametrize("data, code, words", [
    ("not json", spec.DECODE_FAILURE, "not JSON"),
    ("[1]", spec.DECODE_FAILURE, "not a JSON object"),
    (json.dumps({**CONF, "cniVersion": "9.9.9"}), spec.INCOMPATIBLE_VERSION, "9.9.9"),
    (json.dumps({"cniVersion": "1.0.0", "type": "felix-cni"}), spec.INVALID_CONFIG, "'name'"),
    (json.dumps({**CONF, "name": "bad name"}), spec.INVALID_CONFIG, "network name"),
    (json.dumps({**CONF, "ipam": {"type": "host-local"}}), spec.INVALID_CONFIG,
     "host-local"),
    (json.dumps({**CONF, "ipam": {"subnet": "10.0.0.0/8"}}), spec.INVALID_CONFIG,
     "ipam.subnet"),
    (json.dumps({**CONF, "interface_prefix": "averylongprefix"}), spec.INVALID_CONFIG,
     "interface_prefix"),
    (json.dumps({**CONF, "mtu": 10}), spec.INVALID_CONFIG, "mtu"),
])
def test_bad_netconf_gets_the_specs_code_and_names_the_field(data, code, words):
    got, msg = code_of(spec.parse_netconf, data)
    assert got == code and words in msg


# -- per-container settings ------------------------------------------------------------------

def test_labels_profiles_and_ips_from_every_source_in_precedence_order():
    conf = spec.parse_netconf(json.dumps({
        **CONF, "labels": {"tier": "web", "env": "prod"}, "profiles": ["base"],
        "args": {"cni": {"labels": [{"key": "app", "value": "shop"}], "ips": ["10.0.0.9"]}},
        "runtimeConfig": {"labels": {"env": "staging"}, "ips": ["10.0.0.7/24"],
                          "mac": "02:00:00:00:00:01"}}))
    env = spec.parse_env({**ENV, "CNI_ARGS": "FELIX_LABELS=team=a,tier=db;FELIX_PROFILES=p1,p2"})
    req = spec.container_request(conf, env)
    assert req.labels == {"tier": "db", "env": "staging", "app": "shop", "team": "a"}
    assert req.profiles == ["p1", "p2"]
    assert req.ips == ["10.0.0.7"]
    assert req.mac == "02:00:00:00:00:01"


def test_no_profiles_anywhere_means_the_network_default():
    req = spec.container_request(spec.parse_netconf(json.dumps(CONF)), spec.parse_env(ENV))
    assert req.profiles is None and req.labels == {} and req.ips == []


def test_static_ip_from_cni_args_and_bad_ones_refused():
    conf = spec.parse_netconf(json.dumps(CONF))
    req = spec.container_request(conf, spec.parse_env({**ENV, "CNI_ARGS": "IP=10.0.0.5"}))
    assert req.ips == ["10.0.0.5"]
    code, msg = code_of(spec.container_request, conf,
                        spec.parse_env({**ENV, "CNI_ARGS": "IP=10.0.0.500"}))
    assert code == spec.INVALID_CONFIG and "10.0.0.500" in msg
    code, msg = code_of(spec.container_request, conf,
                        spec.parse_env({**ENV, "CNI_ARGS": "MAC=02:00:00:00:00"}))
    assert code == spec.INVALID_CONFIG and "MAC" in msg


# -- results ---------------------------------------------------------------------------------

IFACES = [{"name": "cali0123", "mac": "ee:ee:ee:ee:ee:ee"},
          {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/var/run/netns/x"}]
IPS = [{"address": "10.65.0.5/32", "interface": 1}, {"address": "fd00::5/128", "interface": 1}]


def test_result_1_0_has_no_ip_version_and_0_4_has_it():
    r = spec.result("1.0.0", IFACES, IPS, [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], None)
    assert r["cniVersion"] == "1.0.0" and all("version" not in ip for ip in r["ips"])
    old = spec.result("0.4.0", IFACES, IPS, [], {"nameservers": ["10.0.0.53"]})
    assert [ip["version"] for ip in old["ips"]] == ["4", "6"]
    assert old["dns"] == {"nameservers": ["10.0.0.53"]}


def test_check_expectations_come_from_prev_result():
    prev = spec.result("1.0.0", IFACES, IPS, [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}], None)
    e = spec.expected_from(prev, "eth0", "/var/run/netns/x")
    assert e.host_ifname == "cali0123" and e.container_mac == "02:00:00:00:00:01"
    assert e.addresses == ["10.65.0.5/32", "fd00::5/128"]
    assert e.routes == [("0.0.0.0/0", "169.254.1.1")]
    assert code_of(spec.expected_from, None, "eth0", "x")[0] == spec.INVALID_CONFIG
    assert code_of(spec.expected_from, prev, "eth1", "x")[0] == spec.CHECK_FAILED


def test_host_interface_name_is_prefix_plus_hash_in_15_characters():
    eid = EndpointId("h1", "cni", "abc123", "eth0")
    name = host_ifname(eid)
    assert name.startswith("cali") and len(name) == 15
    assert host_ifname(eid) == name and host_ifname(eid._replace(workload="x")) != name
    assert len(host_ifname(eid, "felixveth")) == 15


# -- the executable's answers ----------------------------------------------------------------

def invoke(environ, stdin):
    out = io.StringIO()
    code = run(environ, stdin.encode() if isinstance(stdin, str) else stdin, out)
    return code, json.loads(out.getvalue()) if out.getvalue() else None


def test_version_lists_supported_versions_in_the_requested_version():
    code, out = invoke({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": "0.4.0"}))
    assert code == 0 and out["cniVersion"] == "0.4.0"
    assert out["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)


def test_errors_are_the_specs_json_on_stdout_with_nonzero_status():
    code, out = invoke({**ENV, "CNI_COMMAND": ""}, json.dumps(CONF))
    assert code == 1 and out["code"] == spec.INVALID_ENVIRONMENT and out["msg"]
    code, out = invoke(ENV, "{")
    assert code == 1 and out == {"cniVersion": "1.0.0", "code": spec.DECODE_FAILURE,
                                 "msg": out["msg"]}


def test_commands_newer_than_the_configured_version_are_refused():
    code, out = invoke({**ENV, "CNI_COMMAND": "CHECK"}, json.dumps({**CONF,
                                                                   "cniVersion": "0.3.1"}))
    assert code == 1 and out["code"] == spec.INCOMPATIBLE_VERSION and "0.4.0" in out["msg"]
    code, out = invoke({"CNI_COMMAND": "STATUS"}, json.dumps(CONF))
    assert code == 1 and out["code"] == spec.INCOMPATIBLE_VERSION and "1.1.0" in out["msg"]


def test_the_example_configuration_list_is_valid():
    """contrib/cni/10-felix.conflist, as a runtime hands its plugin entry to the plugin."""
    path = pathlib.Path(__file__).resolve().parents[2] / "contrib" / "cni" / "10-felix.conflist"
    conflist = json.loads(path.read_text())
    entry = {**conflist["plugins"][0], "name": conflist["name"],
             "cniVersion": conflist["cniVersion"]}
    conf = spec.parse_netconf(json.dumps(entry))
    assert conf.type == "felix-cni" and conf.ipam.ipv4_pools == ["10.65.0.0/16"]


def test_unusable_etcd_settings_are_a_configuration_error():
    # STATUS: the one command that goes to etcd without touching any interface.
    code, out = invoke({"CNI_COMMAND": "STATUS"},
                       json.dumps({**CONF, "cniVersion": "1.1.0",
                                   "etcd_endpoints": "ftp://10.0.0.1:2379"}))
    assert code == 1 and out["code"] == spec.INVALID_CONFIG and "ftp://" in out["msg"]
