"""bgp.config: this host's BGP plan from the datastore's settings, per mode."""

from bgp.config import (ALL_BUT_OWN, DEFAULT_ONLY, GLOBAL, NODE_MESH, ROUTE_REFLECTOR, TOR,
                        resolve)
from felix_py import model
from felix_py.calc.store import BgpSettings


def peer(ip, as_num, **kw):
    return model.BgpPeer(ip=ip, as_num=as_num, **kw)


def settings(**kw):
    b = BgpSettings(as_num=64512)
    b.host_ip_v4 = {"h1": "10.1.0.11", "h2": "10.1.0.12", "h3": "10.2.0.13"}
    for k, v in kw.items():
        setattr(b, k, v)
    return b


def test_no_bgp_address_means_no_bgp_and_says_what_to_set():
    plan = resolve(settings(), "nohost")
    assert not plan.enabled
    assert "/calico/bgp/v1/host/nohost/ip_addr_v4" in plan.problems[0]


def test_downward_default_tor_and_global_peers():
    b = settings(peers={"10.0.0.9": peer("10.0.0.9", 65009), "10.1.0.1": peer("10.1.0.1", 1)},
                 host_peers={"h1": {"10.1.0.1": peer("10.1.0.1", 65101, password="pw")}})
    plan = resolve(b, "h1")
    assert plan.enabled and plan.mode == "downward-default"
    assert plan.import_policy == DEFAULT_ONLY
    assert plan.local_as == 64512 and plan.router_id == "10.1.0.11"
    # The per-host peer replaces the global one with the same address.
    assert [(p.ip, p.as_num, p.peer_type, p.password) for p in plan.peers] == [
        ("10.0.0.9", 65009, GLOBAL, None), ("10.1.0.1", 65101, TOR, "pw")]
    assert plan.problems == ()


def test_host_overrides_as_and_mode():
    b = settings(host_as_num={"h1": 65530}, mode="node-mesh", host_mode={"h1": "downward-default"},
                 host_peers={"h1": {"10.1.0.1": peer("10.1.0.1", 65101)}})
    plan = resolve(b, "h1")
    assert plan.local_as == 65530 and plan.mode == "downward-default"


def test_peer_on_own_address_is_skipped_and_reported():
    b = settings(host_peers={"h1": {"10.1.0.11": peer("10.1.0.11", 65101)}})
    plan = resolve(b, "h1")
    assert plan.peers == ()
    assert "own address" in plan.problems[0]


def test_route_reflector_mode_uses_the_reflectors_of_its_cluster():
    rrs = {"10.9.0.1": model.RouteReflector(ip="10.9.0.1", cluster_id="1.0.0.1"),
           "10.9.0.2": model.RouteReflector(ip="10.9.0.2", cluster_id="2.0.0.2")}
    b = settings(mode="route-reflector", route_reflectors=rrs, rr_cluster_id={"h1": "1.0.0.1"})
    plan = resolve(b, "h1")
    assert plan.import_policy == ALL_BUT_OWN
    assert [(p.ip, p.as_num, p.peer_type) for p in plan.peers] == \
        [("10.9.0.1", 64512, ROUTE_REFLECTOR)]
    # No cluster id: no reflector, and the status says which key to set.
    plan = resolve(b, "h2")
    assert plan.peers == () and "rr_cluster_id" in plan.problems[0]


def test_node_mesh_peers_with_every_other_host():
    b = settings(mode="node-mesh", host_as_num={"h3": 65003})
    plan = resolve(b, "h1")
    assert [(p.ip, p.as_num, p.peer_type) for p in plan.peers] == [
        ("10.1.0.12", 64512, NODE_MESH), ("10.2.0.13", 65003, NODE_MESH)]


def test_node_mesh_key_alone_selects_the_mesh_and_contradictions_are_reported():
    assert resolve(settings(node_mesh=model.NodeMesh(enabled=True)), "h1").mode == "node-mesh"
    plan = resolve(settings(mode="node-mesh", node_mesh=model.NodeMesh(enabled=False)), "h1")
    assert plan.peers == () and "enabled=false" in plan.problems[0]
    plan = resolve(settings(mode="downward-default", node_mesh=model.NodeMesh(enabled=True)),
                   "h1")
    assert plan.mode == "downward-default" and "not used" in plan.problems[0]


def test_an_ipv6_reflector_without_the_hosts_ip_addr_v6_is_reported_and_still_tried():
    """A reflector reaches its IPv6 clients at their ip_addr_v6 (bgp.fabric): without one
    the host's IPv6 session never comes up, and the plan says which key to set."""
    rrs = {"10.9.0.1": model.RouteReflector(ip="10.9.0.1", cluster_id="1.0.0.1"),
           "fd00:9::1": model.RouteReflector(ip="fd00:9::1", cluster_id="1.0.0.1"),
           "fd00:9::2": model.RouteReflector(ip="fd00:9::2", cluster_id="1.0.0.1"),
           "fd00:9::3": model.RouteReflector(ip="fd00:9::3", cluster_id="3.0.0.3"),
           "10.9.0.2": model.RouteReflector(ip="10.9.0.2", cluster_id="2.0.0.2")}
    clusters = {"h1": "1.0.0.1", "h2": "1.0.0.1", "h3": "2.0.0.2"}
    b = settings(mode="route-reflector", route_reflectors=rrs, rr_cluster_id=clusters,
                 host_ip_v6={"h2": "fd10:1::12"})
    plan = resolve(b, "h1")
    [problem] = plan.problems
    assert "host h1 has no ip_addr_v6" in problem
    assert "fd00:9::1, fd00:9::2" in problem and "1.0.0.1" in problem
    assert "fd00:9::3" not in problem and "10.9.0.1" not in problem
    assert "/calico/bgp/v1/host/h1/ip_addr_v6" in problem
    # Reported, not dropped: a reflector configured by hand may accept the session.
    assert [(p.ip, p.peer_type) for p in plan.peers] == [
        ("10.9.0.1", ROUTE_REFLECTOR), ("fd00:9::1", ROUTE_REFLECTOR),
        ("fd00:9::2", ROUTE_REFLECTOR)]
    # With an ip_addr_v6, or with IPv4 reflectors only (an IPv6 one of another cluster
    # does not count), there is nothing to report.
    assert resolve(b, "h2").problems == () and len(resolve(b, "h2").peers) == 3
    assert resolve(b, "h3").problems == ()
    # Another mode uses no reflector: nothing to report either.
    b.host_mode = {"h1": "downward-default"}
    b.host_peers = {"h1": {"10.1.0.1": peer("10.1.0.1", 65101)}}
    assert resolve(b, "h1").problems == ()
