"""The agent for real: routes, interfaces, status and health, in throwaway namespaces."""

import ipaddress
import json
import signal
import time

import pytest
from agentkit import http_get, metric, route_events_during

from felix_py import __version__
from felix_py.datastore.client import EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.lab.netns import mac_of, wait_for
from felix_py.lab.processes import AgentProcess

H = "host-a"


def eid(name, host=H):
    return EndpointId(host, "k8s", name, "eth0")


def ep(iface, ip, **kw):
    """An endpoint in the allow-all profile: these tests are about routing, not policy."""
    return {"name": iface, "ipv4_nets": [f"{ip}/32"], "profile_ids": ["open"], **kw}


@pytest.fixture(autouse=True)
def _open(request):
    if "registry" in request.fixturenames:
        request.getfixturevalue("open_profile")


def route_lines(host):
    return [r for r in host.routes("proto", "98")]


def has_route(host, ip, dev):
    return any(r.startswith(f"{ip} dev {dev} ") for r in route_lines(host))


def status(registry, e):
    st = registry.endpoint_status(e)
    return st and (st.status, st.reason)


@pytest.fixture
def host(host_factory):
    return host_factory("ha")


def test_endpoint_route_ping_and_removal(host, registry, agent_factory, workload_factory):
    w1 = workload_factory(host, "w1", "cali1", "10.65.0.1")
    w2 = workload_factory(host, "w2", "cali2", "10.65.0.2")
    registry.register_endpoint(eid("w1"), ep("cali1", "10.65.0.1", mac=mac_of(w1, "eth0")))
    agent = agent_factory(host, H)
    agent.wait_ready(registry)
    registry.register_endpoint(eid("w2"), ep("cali2", "10.65.0.2"))
    wait_for(lambda: has_route(host, "10.65.0.2", "cali2"), what="route to w2")
    assert has_route(host, "10.65.0.1", "cali1")
    # The interface is configured as a Calico host-side veth.
    assert host.run("sysctl -n net.ipv4.conf.cali2.proxy_arp").stdout.strip() == "1"
    assert host.run("sysctl -n net.ipv4.conf.cali2.rp_filter").stdout.strip() == "1"
    assert host.run("sysctl -n net.ipv4.neigh.cali2.proxy_delay").stdout.strip() == "0"
    assert host.run("sysctl -n net.ipv4.ip_forward").stdout.strip() == "1"
    # A permanent neighbour entry for the MAC given.
    assert "PERMANENT" in host.run("ip neigh show 10.65.0.1 dev cali1").stdout
    assert w1.ping("10.65.0.2") and w2.ping("10.65.0.1")
    wait_for(lambda: status(registry, eid("w2")) == ("up", None), what="w2 status up")

    registry.remove_endpoint(eid("w2"))
    wait_for(lambda: not has_route(host, "10.65.0.2", "cali2"), what="route to w2 gone")
    assert not w1.ping("10.65.0.2")
    assert has_route(host, "10.65.0.1", "cali1")
    wait_for(lambda: registry.endpoint_status(eid("w2")) is None, what="w2 status removed")

    # Inactive: the route goes, the status says why.
    registry.update_endpoint(eid("w1"), state="inactive")
    wait_for(lambda: not has_route(host, "10.65.0.1", "cali1"), what="inactive route gone")
    wait_for(lambda: status(registry, eid("w1")) == ("down", "endpoint is inactive"))


def test_interface_created_after_key_and_removed(host, registry, agent_factory,
                                                 workload_factory):
    agent = agent_factory(host, H)
    agent.wait_ready(registry)
    registry.register_endpoint(eid("late"), ep("calilate", "10.65.0.9"))
    wait_for(lambda: status(registry, eid("late")) ==
             ("down", "interface calilate does not exist"), what="status down")
    assert not has_route(host, "10.65.0.9", "calilate")
    w = workload_factory(host, "late", "calilate", "10.65.0.9")
    wait_for(lambda: has_route(host, "10.65.0.9", "calilate"), what="route once link exists")
    wait_for(lambda: status(registry, eid("late")) == ("up", None), what="status up")
    assert host.ping("10.65.0.9")
    w.delete()          # the veth goes with the container's namespace
    wait_for(lambda: not has_route(host, "10.65.0.9", "calilate"), what="route gone with link")
    wait_for(lambda: status(registry, eid("late")) ==
             ("down", "interface calilate does not exist"), what="status down again")


def test_interface_set_down_gets_its_route_back(host, registry, agent_factory,
                                                workload_factory):
    workload_factory(host, "fl", "califl", "10.65.0.11")
    registry.register_endpoint(eid("fl"), ep("califl", "10.65.0.11"))
    agent_factory(host, H).wait_ready(registry)
    wait_for(lambda: has_route(host, "10.65.0.11", "califl"), what="route to fl")
    # Setting the host end down makes the kernel drop its routes; the agent sets it up again
    # and puts the route back.
    host.run("ip link set califl down")
    wait_for(lambda: host.run("ip -o link show califl up").stdout, what="califl up again")
    wait_for(lambda: has_route(host, "10.65.0.11", "califl"), what="route to fl back")
    assert host.ping("10.65.0.11")
    wait_for(lambda: status(registry, eid("fl")) == ("up", None), what="fl up")


def test_endpoint_moves_between_hosts(host_factory, registry, agent_factory, workload_factory):
    a, b = host_factory("hma"), host_factory("hmb")
    workload_factory(a, "mv", "calimv", "10.65.1.7")
    workload_factory(b, "mv2", "calimv", "10.65.1.7")    # the container re-created on B
    registry.register_endpoint(eid("mv", "A"), ep("calimv", "10.65.1.7"))
    agent_a, agent_b = agent_factory(a, "A"), agent_factory(b, "B")
    agent_a.wait_ready(registry)
    agent_b.wait_ready(registry)
    wait_for(lambda: has_route(a, "10.65.1.7", "calimv"), what="route on A")
    assert not has_route(b, "10.65.1.7", "calimv")
    registry.move_endpoint(eid("mv", "A"), "B")
    wait_for(lambda: has_route(b, "10.65.1.7", "calimv"), what="route on B")
    wait_for(lambda: not has_route(a, "10.65.1.7", "calimv"), what="route withdrawn from A")
    wait_for(lambda: status(registry, eid("mv", "B")) == ("up", None), what="status on B")
    assert registry.endpoint_status(eid("mv", "A")) is None


def first_apply_orders(agent) -> list[list[str]]:
    """The managers of each start's first apply, in the order they ran, from the log."""
    out = []
    for line in agent.log().splitlines():
        if "first apply done" in line:
            took = line.rsplit("(", 1)[1].rstrip(")")
            out.append([part.split()[0] for part in took.split(", ")])
    return out


def test_restart_flaps_no_route(host, registry, agent_factory, workload_factory):
    for i in range(20):
        workload_factory(host, f"r{i}", f"calir{i}", f"10.65.2.{i + 1}")
    registry.register_endpoints([(eid(f"r{i}"), ep(f"calir{i}", f"10.65.2.{i + 1}"))
                                 for i in range(20)])
    # A stale route of ours (its endpoint is gone) and a route that is not ours.
    host.run("ip route add 10.65.9.9/32 dev calir0 proto 98 scope link")
    host.run("ip route add 10.65.8.8/32 dev calir0 proto static scope link")
    agent = agent_factory(host, H)
    agent.wait_ready(registry)
    wait_for(lambda: len(route_lines(host)) == 20, what="20 routes")
    assert not any(r.startswith("10.65.9.9") for r in route_lines(host)), "stale route kept"
    assert any(r.startswith("10.65.8.8") for r in host.routes()), "foreign route removed"

    def restart():
        agent.stop()
        assert len(route_lines(host)) == 20, "a stopped agent must leave its routes"
        agent_factory(host, H).wait_ready(registry)
    lines = route_events_during(host, restart)
    deleted = [ln for ln in lines if ln.startswith("Deleted") and "10.65.2." in ln]
    assert deleted == [], f"routes deleted during restart: {deleted}"
    assert len(route_lines(host)) == 20
    # A fresh host routes and announces before its policy chains are written; a restarted
    # one, whose chains police the running workloads, writes policy first.
    assert first_apply_orders(agent) == [
        ["bgp", "policy-guard", "routes", "bgp-announce", "interfaces", "policy"],
        ["bgp", "policy-guard", "interfaces", "policy", "routes", "bgp-announce"]]


def test_bad_endpoints_are_reported_and_the_rest_served(host, registry, client, layout,
                                                        agent_factory, workload_factory):
    workload_factory(host, "good", "caligood", "10.65.3.1")
    workload_factory(host, "dup", "calidup", "10.65.3.1")
    registry.register_endpoint(eid("good"), ep("caligood", "10.65.3.1"))
    registry.register_endpoint(eid("zdup"), ep("calidup", "10.65.3.1"))
    # Written behind the API's back, as a buggy orchestrator would.
    client.put(layout.endpoint(eid("wide")), json.dumps(ep("caliwide", "10.65.4.0")
                                                        | {"ipv4_nets": ["10.65.4.0/24"]}))
    client.put(layout.endpoint(eid("junk")), "{not json")
    client.put(layout.endpoint(eid("binary")), b"\xff\xfe\x00")
    client.put(layout.dir("v1/host", H) + "workload/too/short", "{}")
    agent = agent_factory(host, H)
    agent.wait_ready(registry)
    wait_for(lambda: has_route(host, "10.65.3.1", "caligood"), what="good route")
    st = wait_for(lambda: registry.endpoint_status(eid("wide")), what="wide status")
    assert st.status == "error" and "ipv4_nets" in st.reason and "/32" in st.reason
    st = wait_for(lambda: registry.endpoint_status(eid("junk")), what="junk status")
    assert st.status == "error" and "malformed JSON" in st.reason
    assert registry.endpoint_status(eid("binary")).status == "error"
    st = wait_for(lambda: registry.endpoint_status(eid("zdup")), what="dup status")
    assert st.status == "error" and "10.65.3.1/32" in st.reason and "good" in st.reason
    routes_to_dup = [r for r in route_lines(host) if r.startswith("10.65.3.1 ")]
    assert len(routes_to_dup) == 1 and " dev caligood " in routes_to_dup[0]
    assert "is not part of the felix-py key layout" in agent.log()
    # Fixing the bad value brings the endpoint up.
    workload_factory(host, "wide", "caliwide", "10.65.4.1")
    registry.register_endpoint(eid("wide"), ep("caliwide", "10.65.4.1"))
    wait_for(lambda: has_route(host, "10.65.4.1", "caliwide"), what="fixed endpoint routed")
    assert agent.alive()


def status_json(ns, port):
    """/status, parsed."""
    code, _, body = http_get(ns, port, "/status").partition("\n")
    assert code == "200", code
    return json.loads(body)


def test_health_and_metrics(host, registry, agent_factory, workload_factory):
    workload_factory(host, "hm", "calihm", "10.65.5.1")
    registry.register_endpoint(eid("hm"), ep("calihm", "10.65.5.1"))
    registry.register_endpoint(eid("gone"), ep("caligone", "10.65.5.2"))    # no interface
    # A ToR peer that does not answer: the host's BGP is configured, its session is not up.
    here, tor = host_and_uplink_peer(host)
    registry.set_host_bgp_address(H, here)
    registry.add_bgp_peer(tor, 65101, host=H)
    agent = agent_factory(host, H, FELIX_HEALTH_PORT="9099")
    agent.wait_ready(registry)

    assert http_get(host, 9099, "/livez").startswith("200")
    assert http_get(host, 9099, "/readyz").startswith("200")
    metrics = http_get(host, 9099, "/metrics")
    assert 'felix_local_endpoints{status="up"} 1.0' in metrics
    assert 'felix_local_endpoints{status="down"} 1.0' in metrics
    assert "felix_apply_seconds_count" in metrics
    assert metric(host, 9099, "felix_routes") == 1
    assert metric(host, 9099, "felix_route_conflicts") == 0
    hb = registry.host_status(H)
    assert hb.first_update and hb.uptime >= 0

    # /status: the agent's summary and each manager's, as an operator reads it.
    def exabgp_running():
        st = status_json(host, 9099)
        return st["managers"]["bgp"]["exabgp_state"] == "running" and st
    st = wait_for(exabgp_running, timeout=30, what="ExaBGP running in /status")
    assert (st["host"], st["version"], st["in_sync"], st["ready"]) == (H, __version__, True, True)
    assert st["endpoints"] == {"up": 1, "down": 1, "error": 0}      # as the metrics count them
    assert st["last_apply_ok"] is True and st["last_apply_secs"] > 0
    assert st["uptime_secs"] >= 0 and st["snapshot_age_secs"] >= 0
    bgp, policy = st["managers"]["bgp"], st["managers"]["policy"]
    assert set(st["managers"]) == {"bgp", "policy"}                # those with a status()
    assert bgp["bgp_mode"] == "downward-default" and bgp["bgp_problems"] == []
    assert sum(bgp["bgp_peers"].values()) == 1 and "established" not in bgp["bgp_peers"]
    assert bgp["bgp_learned_routes"] == 0 and bgp["exabgp_restarts"] == 0
    assert policy["chains"] > 0 and policy["applies"] >= 1 and policy["profile_errors"] == {}
    # ExaBGP takes the announcement in its own time: the workload that is up, not the other.
    wait_for(lambda: status_json(host, 9099)["managers"]["bgp"]["bgp_announced"] == 1,
             what="one announcement in /status")
    # The missing interface appears: a later snapshot counts the endpoint up, announced.
    workload_factory(host, "gone", "caligone", "10.65.5.2")
    wait_for(lambda: status_json(host, 9099)["endpoints"] == {"up": 2, "down": 0, "error": 0},
             what="both endpoints up in /status")
    wait_for(lambda: status_json(host, 9099)["managers"]["bgp"]["bgp_announced"] == 2,
             what="both announced in /status")
    assert http_get(host, 9099, "/nope").startswith("404")


def host_and_uplink_peer(host):
    """The host's address on its uplink and the stand-in ToR's on the other end (a /30)."""
    addr = host.run("ip -4 -o addr show dev uplink").stdout.split()[3]
    iface = ipaddress.ip_interface(addr)
    peer = next(str(a) for a in iface.network.hosts() if a != iface.ip)
    return str(iface.ip), peer


def test_heartbeat_vanishes_when_agent_dies(host, registry, agent_factory):
    agent = agent_factory(host, H)
    agent.wait_ready(registry)
    agent.stop(signal.SIGKILL)
    # The lease (TTL 5 s in tests) expires: no one keeps the heartbeat alive.
    wait_for(lambda: registry.host_status(H) is None, timeout=15, what="heartbeat expiry")


def test_etcd_outage_keeps_dataplane(host_factory, workload_factory, tmp_path, prefix):

    server = EmbeddedEtcd(data_dir=str(tmp_path / "etcd")).start()
    host = host_factory("ho")
    agent = None
    try:
        client = EtcdClient(server.endpoint)
        reg = Registry(client, KeyLayout(prefix))
        reg.set_profile("open", {"inbound_rules": [{"action": "allow"}],
                                 "outbound_rules": [{"action": "allow"}]})
        w1 = workload_factory(host, "o1", "calio1", "10.65.6.1")
        workload_factory(host, "o2", "calio2", "10.65.6.2")
        workload_factory(host, "o3", "calio3", "10.65.6.3")
        reg.register_endpoint(eid("o1"), ep("calio1", "10.65.6.1"))
        reg.register_endpoint(eid("o2"), ep("calio2", "10.65.6.2"))
        agent = AgentProcess(host, H, server.unix_endpoint, prefix, str(tmp_path / "agent.log")).start()
        agent.wait_ready(reg)
        assert w1.ping("10.65.6.2")
        server.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert w1.ping("10.65.6.2"), "ping failed while etcd was down"
            time.sleep(1)
        assert agent.alive()
        server.start()
        reg.register_endpoint(eid("o3"), ep("calio3", "10.65.6.3"))
        wait_for(lambda: has_route(host, "10.65.6.3", "calio3"), timeout=30,
                 what="change after etcd returned")
        assert w1.ping("10.65.6.3")
        assert "resync at revision" in agent.log()
        client.close()
    finally:
        if agent:
            agent.stop()
        server.destroy()
