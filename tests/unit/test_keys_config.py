"""The key layout both ways, and the configuration precedence."""

import pytest

from felix_py import config
from felix_py.datastore import keys
from felix_py.datastore.keys import EndpointId, Kind, KeyLayout, KeyLayoutError


@pytest.mark.parametrize("kind,parts", [
    (Kind.READY, {}),
    (Kind.CONFIG, {"name": "LogLevel"}),
    (Kind.CONFIG, {"name": "LogLevel", "host": "h1"}),
    (Kind.ENDPOINT, {"host": "h1", "orchestrator": "k8s", "workload": "w", "endpoint": "e"}),
    (Kind.PROFILE_RULES, {"profile": "web"}),
    (Kind.PROFILE_TAGS, {"profile": "web"}),
    (Kind.PROFILE_LABELS, {"profile": "web"}),
    (Kind.POOL, {"version": 4, "cidr": "10.65.0.0/16"}),
    (Kind.POOL, {"version": 6, "cidr": "fd00::/48"}),
    (Kind.HOST_STATUS, {"host": "h1"}),
    (Kind.ENDPOINT_STATUS, {"host": "h1", "orchestrator": "k8s", "workload": "w", "endpoint": "e"}),
    (Kind.BGP_PEER_STATUS, {"host": "h1", "ip": "10.0.0.1"}),
    (Kind.BGP_AS_NUM, {}),
    (Kind.BGP_AS_NUM, {"host": "h1"}),
    (Kind.BGP_MODE, {"host": "h1"}),
    (Kind.BGP_NODE_MESH, {}),
    (Kind.BGP_PEER, {"version": 4, "ip": "10.0.0.1"}),
    (Kind.BGP_PEER, {"version": 4, "ip": "10.0.0.1", "host": "h1"}),
    (Kind.BGP_HOST_IP, {"version": 4, "host": "h1"}),
    (Kind.BGP_RR_CLUSTER_ID, {"host": "h1"}),
    (Kind.BGP_ROUTE_REFLECTOR, {"version": 4, "ip": "10.0.0.9"}),
    (Kind.IPAM_BLOCK, {"version": 4, "cidr": "10.65.0.0/26"}),
    (Kind.IPAM_AFFINITY, {"version": 4, "cidr": "10.65.0.0/26", "host": "h1"}),
    (Kind.IPAM_HANDLE, {"handle": "abc"}),
    (Kind.IPAM_CONFIG, {}),
])
def test_build_then_parse(kind, parts):
    layout = KeyLayout("/custom/prefix/")
    key = layout.build(kind, **parts)
    assert key.startswith("/custom/prefix/")
    pk = layout.parse(key)
    assert pk.kind is kind
    assert pk.parts == parts


def test_known_calico_keys():
    L = KeyLayout()
    assert L.endpoint(EndpointId("h", "docker", "c1", "e1")) == \
        "/calico/v1/host/h/workload/docker/c1/endpoint/e1"
    assert L.build(Kind.POOL, version=4, cidr="10.65.0.0/16") == "/calico/v1/ipam/v4/pool/10.65.0.0-16"
    assert L.build(Kind.BGP_PEER, host="h", version=4, ip="10.0.0.1") == \
        "/calico/bgp/v1/host/h/peer_v4/10.0.0.1"
    assert L.build(Kind.IPAM_BLOCK, version=4, cidr="10.65.0.0/26") == \
        "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-26"


@pytest.mark.parametrize("key", [
    "/calico/v1/host/h1/workload/k8s/w1",               # too few segments
    "/calico/v1/host/h1/workload/k8s/w1/endpoint",
    "/calico/v1/host//workload/k8s/w1/endpoint/e",      # empty segment
    "/calico/v1/nonsense",
    "/other/v1/Ready",                                    # outside the prefix
    "/calico/v1/ipam/v5/pool/10.0.0.0-8",
    "/calico/v1/ipam/v4/pool/10.0.0.0",                   # CIDR without length
    b"/calico/v1/\xff",
])
def test_bad_keys(key):
    with pytest.raises(KeyLayoutError):
        KeyLayout().parse(key)


def test_config_precedence():
    env = {"FELIX_LOG_LEVEL": "debug"}
    cfg = config.load(env, file_values={"LogLevel": "ERROR", "HealthPort": "9100"},
                      host_values={"HealthPort": "9200", "RouteProtocol": "77"},
                      global_values={"RouteProtocol": "78", "DefaultEndpointToHostAction": "return"})
    assert cfg.log_level == "DEBUG" and cfg.sources["LogLevel"] == "environment"
    assert cfg.health_port == 9100 and cfg.sources["HealthPort"] == "config file"
    assert cfg.route_protocol == 77 and cfg.sources["RouteProtocol"] == "host key"
    assert cfg.default_endpoint_to_host_action == "RETURN"
    assert cfg.failsafe_inbound_host_ports == (("tcp", 22),)
    assert cfg["EtcdPrefix"] == "/calico" and cfg.sources["EtcdPrefix"] == "default"


def test_config_bad_values_fall_through():
    cfg = config.load({"FELIX_HEALTH_PORT": "99999"}, file_values={"HealthPort": "nope"},
                      host_values={"HealthPort": "9300"})
    assert cfg.health_port == 9300
    # Bootstrap settings never come from etcd.
    cfg = config.load({}, host_values={"EtcdEndpoints": "http://evil:2379"})
    assert cfg.etcd_endpoints == ""


def test_config_ports_and_env_names():
    assert config.BY_NAME["EtcdEndpoints"].env == "FELIX_ETCD_ENDPOINTS"
    assert config.BY_NAME["DefaultEndpointToHostAction"].env == \
        "FELIX_DEFAULT_ENDPOINT_TO_HOST_ACTION"
    assert config.parse_value("FailsafeOutboundHostPorts", "tcp:2379, udp:53") == \
        (("tcp", 2379), ("udp", 53))
    with pytest.raises(config.ConfigError, match="FailsafeInboundHostPorts"):
        config.parse_value("FailsafeInboundHostPorts", "tcp:99999")
    with pytest.raises(config.ConfigError, match="unknown setting"):
        config.parse_value("NoSuchThing", "1")


def test_config_file(tmp_path):
    f = tmp_path / "felix.yaml"
    f.write_text("LogLevel: WARNING\nFailsafeInboundHostPorts: [tcp:22, tcp:179]\n")
    values = config.read_file(str(f))
    assert config.load({}, values).failsafe_inbound_host_ports == (("tcp", 22), ("tcp", 179))
    f.write_text("Bogus: 1\n")
    with pytest.raises(config.ConfigError, match="unknown setting"):
        config.read_file(str(f))
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.read_file(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("rest", [
    "v1/host/h1/workload/k8s/w1/endpoint/eth0",
    "v1/host/h 1/workload/o\n/w:1/endpoint/é",            # anything but "/" is a segment
    "v1/host/h1/workload/k8s/w1/endpoint/",                # empty last segment
    "v1/host/h1/workload/k8s//endpoint/e",
    "v1/host/h1/workloads/k8s/w1/endpoint/e",              # a literal segment differs
    "v1/host/h1/workload/k8s/w1/endpoints/e",
    "v2/host/h1/workload/k8s/w1/endpoint/e",
])
def test_endpoint_key_fast_path_agrees_with_the_template(rest):
    """parse() reads endpoint keys by hand; the endpoint template's regex is the reference."""
    regex = next(r for kind, r in keys._BY_LEN[8] if kind is Kind.ENDPOINT)
    m = regex.match(rest)
    try:
        got = KeyLayout().parse("/calico/" + rest)
    except KeyLayoutError:
        assert m is None
    else:
        assert m is not None and got.kind is Kind.ENDPOINT and got.parts == m.groupdict()
