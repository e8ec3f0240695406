"""BGP for real: agents with ExaBGP on hosts, BIRD as ToRs, core and route reflector.

Downward default: a core and two ToRs (BIRD, configured by bgp.fabric from the datastore),
two hosts per rack running the agent, one of them dual-homed to both ToRs.  Then the
route-reflector and node-mesh modes on a shared LAN.
"""

import os
import signal
import time

import pytest

from bgp import fabric
from felix_py.datastore.keys import EndpointId
from felix_py.lab import netns as nsmod
from felix_py.lab.netns import wait_for


def eid(host, name):
    return EndpointId(host, "k8s", name, "eth0")


def destinations(ns):
    """Every IPv4 route's destination in the host's main table."""
    return {line.split()[0] for line in ns.run("ip -4 route show").stdout.splitlines()
            if line and not line[0].isspace()}


def default_gateways(ns):
    out = ns.run("ip -4 route show default").stdout
    return sorted(w for line in out.splitlines() for i, w in enumerate(line.split())
                  if i > 0 and line.split()[i - 1] == "via")


def bridge(ns, name, cidr):
    ns.run(f"ip link add {name} type bridge")
    ns.run(f"ip link set {name} up")
    ns.addr(name, cidr)


def attach(switch, bridge_name, host, port, ifname, cidr):
    """A host's link into a switch's bridge."""
    nsmod.veth(switch, port, host, ifname)
    switch.run(f"ip link set {port} master {bridge_name}")
    host.addr(ifname, cidr)


def forwarding(*nss):
    for ns in nss:
        ns.sysctl("net.ipv4.ip_forward", 1)


def test_the_control_socket_client_prints_what_birdc_prints(netns_factory, birds):
    ns = netns_factory("bc")
    bird = birds(ns, "sw", "router id 10.9.0.1;\nprotocol device {}\n"
                           "protocol static st { ipv4; route 10.9.1.0/24 blackhole; "
                           "route 10.9.2.0/24 unreachable; }\n"
                           "protocol bgp peer1 { local as 65001; neighbor 10.9.9.1 as 65002; "
                           "ipv4 { import all; export all; }; }\n")
    for command in (["show", "route", "count"], ["show", "route", "all"],
                    ["show", "protocols"], ["configure"]):
        assert bird.birdc(*command) == ns.run(["birdc", "-s", bird.sock, *command]).stdout
    assert set(bird.routes()) == {"10.9.1.0/24", "10.9.2.0/24"}
    with pytest.raises(nsmod.NetnsError, match="Network not found"):
        bird.birdc("show", "route", "for", "10.7.0.0")     # birdc fails on it as well
    bird.stop()
    with pytest.raises(nsmod.NetnsError, match="BIRD sw"):
        bird.birdc("show", "status")


def test_downward_default_fabric(netns_factory, workload_factory, registry, client, layout,
                                 open_profile,
                                 agents, birds):
    core, tor1, tor2 = netns_factory("core"), netns_factory("tor1"), netns_factory("tor2")
    forwarding(core, tor1, tor2)
    nsmod.veth(core, "tor1", tor1, "core")
    nsmod.veth(core, "tor2", tor2, "core")
    core.addr("tor1", "10.0.1.1/30"), tor1.addr("core", "10.0.1.2/30")
    core.addr("tor2", "10.0.2.1/30"), tor2.addr("core", "10.0.2.2/30")
    bridge(tor1, "rack", "10.1.0.1/24")
    bridge(tor2, "rack", "10.2.0.1/24")
    hosts = {name: netns_factory(name) for name in ("h1", "h2", "h3", "h4")}
    attach(tor1, "rack", hosts["h1"], "h1", "tor1", "10.1.0.11/24")
    attach(tor1, "rack", hosts["h2"], "h2", "tor1", "10.1.0.12/24")
    attach(tor2, "rack", hosts["h2"], "h2", "tor2", "10.2.0.12/24")     # dual-homed
    attach(tor2, "rack", hosts["h3"], "h3", "tor2", "10.2.0.13/24")
    attach(tor2, "rack", hosts["h4"], "h4", "tor2", "10.2.0.14/24")

    registry.add_pool("10.65.0.0/16")
    registry.set_as_number(64512)
    for name, ip in (("h1", "10.1.0.11"), ("h2", "10.1.0.12"), ("h3", "10.2.0.13"),
                     ("h4", "10.2.0.14")):
        registry.set_host_bgp_address(name, ip)
    registry.add_bgp_peer("10.1.0.1", 65101, host="h1")
    registry.add_bgp_peer("10.1.0.1", 65101, host="h2")
    registry.add_bgp_peer("10.2.0.1", 65102, host="h2")
    registry.add_bgp_peer("10.2.0.1", 65102, host="h3")
    registry.add_bgp_peer("10.2.0.1", 65102, host="h4")

    # The switches' configurations come from the same datastore.
    bgp, pools = fabric.load(client, layout)
    timers = dict(hold_time=3, graceful_restart=120)
    bird_core = birds(core, "core", fabric.render_core(
        name="core", router_id="10.0.1.1", local_as=65000,
        tors=[("10.0.1.2", 65101), ("10.0.2.2", 65102)], **timers))
    bird_tor1 = birds(tor1, "tor1", fabric.render_tor(
        bgp, pools, name="tor1", router_id="10.0.1.2", local_as=65101,
        addresses=["10.1.0.1/24"], uplinks=[("10.0.1.1", 65000)], **timers))
    tor2_conf = fabric.render_tor(
        bgp, pools, name="tor2", router_id="10.0.2.2", local_as=65102,
        addresses=["10.2.0.1/24"], uplinks=[("10.0.2.1", 65000)], **timers)
    bird_tor2 = birds(tor2, "tor2", tor2_conf)

    wl = {"w1": ("h1", "10.65.1.1"), "w2": ("h2", "10.65.1.2"), "w3": ("h3", "10.65.2.3"),
          "w4": ("h4", "10.65.2.4")}
    wns = {}
    for name, (host, ip) in wl.items():
        wns[name] = workload_factory(hosts[host], name, f"cali{name}", ip)
        registry.register_endpoint(eid(host, name), {"name": f"cali{name}",
                                                     "ipv4_nets": [f"{ip}/32"],
                                                     "profile_ids": [open_profile]})
    running = {name: agents(ns, name) for name, ns in hosts.items()}
    for a in running.values():
        a.wait_ready(registry)

    every = {f"{ip}/32" for _, ip in wl.values()}
    wait_for(lambda: every <= set(bird_core.routes()), 20, what="core holds every workload")
    assert {"10.65.1.1/32", "10.65.1.2/32"} <= set(bird_tor1.routes())
    assert {"10.65.2.3/32", "10.65.2.4/32", "10.65.1.2/32"} <= set(bird_tor2.routes())
    # Next hop self, resolved per session (bgp.launcher's remove_self): the dual-homed host
    # announces its workload to each ToR with its own address on that ToR's link.
    assert bird_tor1.routes()["10.65.1.2/32"] == {"10.1.0.12"}
    assert bird_tor2.routes()["10.65.1.2/32"] == {"10.2.0.12"}
    assert bird_tor1.routes()["10.65.1.1/32"] == {"10.1.0.11"}
    # A ToR holds its rack's routes only (the core sends it nothing but the default).
    assert not {"10.65.2.3/32", "10.65.2.4/32"} & set(bird_tor1.routes())
    # Each host: its workloads, the default, its connected routes; nothing else.
    for name, ns in hosts.items():
        wait_for(lambda: default_gateways(ns), 10, what=f"default route on {name}")
    connected = {"h1": {"10.1.0.0/24"}, "h2": {"10.1.0.0/24", "10.2.0.0/24"},
                 "h3": {"10.2.0.0/24"}, "h4": {"10.2.0.0/24"}}
    for name, ns in hosts.items():
        local = {ip for w, (h, ip) in wl.items() if h == name}
        assert destinations(ns) == {"default"} | connected[name] | local, name
    wait_for(lambda: default_gateways(hosts["h2"]) == ["10.1.0.1", "10.2.0.1"], 10,
             what="ECMP default over both ToRs on the dual-homed host")
    assert "proto 98" in hosts["h1"].run("ip route show default").stdout
    assert wns["w1"].ping("10.65.2.3", count=2) and wns["w4"].ping("10.65.1.1", count=2)

    # BGP status per peer, for `felixctl node status`.
    st = wait_for(lambda: (s := registry.bgp_peer_statuses("h2").get("10.2.0.1"))
                  and s.state == "established" and s.sent == 1 and s, 10,
                  what="h2's status for tor2, converged")
    assert st.peer_type == "tor" and st.accepted == 1 and st.sent == 1 and st.since

    # A workload is announced only while its route is installed: registered before its
    # interface exists (or left registered after its container died), traffic for it would
    # reach h1, find no route and follow the default back up to the ToR.
    registry.register_endpoint(eid("h1", "w5"), {"name": "caliw5",
                                                 "ipv4_nets": ["10.65.1.5/32"],
                                                 "profile_ids": [open_profile]})
    wait_for(lambda: (s := registry.endpoint_status(eid("h1", "w5"))) and s.status == "down",
             10, what="h1's agent reports w5 without its interface")
    time.sleep(1)
    assert "10.65.1.5/32" not in bird_tor1.routes()
    assert "10.65.1.5/32" not in bird_core.routes()
    wns["w5"] = workload_factory(hosts["h1"], "w5", "caliw5", "10.65.1.5")
    wait_for(lambda: bird_core.routes().get("10.65.1.5/32") == {"10.0.1.2"}, 10,
             what="core routes w5 once its interface exists")
    assert wns["w4"].ping("10.65.1.5", count=2)
    wns.pop("w5").delete()                  # the container dies, still registered
    wait_for(lambda: "10.65.1.5/32" not in bird_core.routes(), 10,
             what="core drops w5 once its interface is gone")
    assert "10.65.1.5/32" not in bird_tor1.routes()

    # ExaBGP killed: it comes back, and the fabric never loses the host's routes.
    old = running["h1"].exabgp_pid()
    assert old
    os.kill(old, signal.SIGKILL)
    time.sleep(0.5)
    assert "10.65.1.1/32" in bird_core.routes()       # graceful restart: kept as stale
    wait_for(lambda: (p := running["h1"].exabgp_pid()) and p != old, 20,
             what="ExaBGP restarted")
    wait_for(lambda: bird_tor1.protocols().get("host_h1") == "Established", 20,
             what="h1's session back")
    time.sleep(1)
    assert "10.65.1.1/32" in bird_core.routes()
    assert default_gateways(hosts["h1"]) == ["10.1.0.1"]
    assert wns["w1"].ping("10.65.2.3")

    # An endpoint moves from rack 1 to rack 2 and keeps its address.
    wns["w1"].delete()
    wns["w1"] = workload_factory(hosts["h3"], "w1b", "caliw1", "10.65.1.1")
    registry.move_endpoint(eid("h1", "w1"), "h3")
    wait_for(lambda: bird_core.routes().get("10.65.1.1/32") == {"10.0.2.2"}, 20,
             what="core routes the moved endpoint to rack 2")
    wait_for(lambda: "10.65.1.1" not in destinations(hosts["h1"]), 10,
             what="old host drops the route")
    assert wns["w2"].ping("10.65.1.1", count=2)

    # A ToR goes down: the dual-homed host keeps its default over the other one.
    bird_tor2.stop()
    wait_for(lambda: default_gateways(hosts["h2"]) == ["10.1.0.1"], 15,
             what="h2's default over tor1 only")
    wait_for(lambda: not default_gateways(hosts["h4"]), 15,
             what="h4's default gone with its only ToR")


def _lan(netns_factory, n):
    lan = netns_factory("lan")
    bridge(lan, "lan", "10.3.0.1/24")
    hosts = {}
    for i in range(1, n + 1):
        h = netns_factory(f"m{i}")
        attach(lan, "lan", h, f"m{i}", "lan", f"10.3.0.{10 + i}/24")
        # A route for 169.254.1.1, so that proxy ARP answers the workloads.
        h.run("ip route add default via 10.3.0.1")
        hosts[f"m{i}"] = h
    return lan, hosts


def _workloads(hosts, registry, workload_factory, profile):
    wns = {}
    for i, (name, ns) in enumerate(sorted(hosts.items()), start=1):
        ip = f"10.66.{i}.1"
        wns[name] = workload_factory(ns, f"w{name}", f"caliw{name}", ip)
        registry.register_endpoint(eid(name, f"w{name}"),
                                   {"name": f"caliw{name}", "ipv4_nets": [f"{ip}/32"],
                                    "profile_ids": [profile]})
        registry.set_host_bgp_address(name, f"10.3.0.{10 + i}")
    return wns


def _assert_full_routes(hosts, wns):
    n = len(hosts)
    for i, (name, ns) in enumerate(sorted(hosts.items()), start=1):
        others = {f"10.66.{j}.1" for j in range(1, n + 1) if j != i}
        wait_for(lambda: others <= destinations(ns), 20, what=f"{name} holds the others' routes")
        line = ns.run(f"ip route show {sorted(others)[0]}").stdout
        assert "proto 98" in line and "via 10.3.0." in line, line
    assert wns["m1"].ping("10.66.2.1", count=2) and wns["m3"].ping("10.66.1.1", count=2)


def test_route_reflector_mode(netns_factory, workload_factory, registry, client, layout,
                              open_profile,
                              agents, birds):
    lan, hosts = _lan(netns_factory, 3)
    registry.set_bgp_mode("route-reflector")
    registry.add_route_reflector("10.3.0.1", "1.0.0.1")
    wns = _workloads(hosts, registry, workload_factory, open_profile)
    for name in hosts:
        registry.set_rr_cluster_id(name, "1.0.0.1")
    bgp, _ = fabric.load(client, layout)
    rr = birds(lan, "rr", fabric.render_route_reflector(bgp, rr_ip="10.3.0.1", hold_time=3))
    for name, ns in hosts.items():
        agents(ns, name).wait_ready(registry)
    wait_for(lambda: {"10.66.1.1/32", "10.66.2.1/32", "10.66.3.1/32"} <= set(rr.routes()), 20,
             what="reflector holds every host's routes")
    _assert_full_routes(hosts, wns)


def test_node_mesh_mode(netns_factory, workload_factory, registry, agents, open_profile):
    lan, hosts = _lan(netns_factory, 3)
    registry.set_bgp_mode("node-mesh")
    wns = _workloads(hosts, registry, workload_factory, open_profile)
    for name, ns in hosts.items():
        agents(ns, name).wait_ready(registry)
    _assert_full_routes(hosts, wns)
