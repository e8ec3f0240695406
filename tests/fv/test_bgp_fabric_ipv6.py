"""A dual-stack downward-default fabric for real: core and ToR run BIRD configured by
bgp.fabric from the datastore, a host runs the agent (ExaBGP) with a dual-stack workload.

The host peers with its ToR twice, once per address family (peer_v4 and peer_v6), as the
ToR's rendered configuration expects.  A second rack member, a BIRD standing in for a host
without ip_addr_v6 (so accepted from the link's range), announces an IPAM block and a
prefix outside every pool: the ToR must keep the first, refuse the second and send neither
down to the agent's host, which learns ::/0 and nothing else.
"""

import re

from agentkit import ping6, plug, wait_link_local

from bgp import fabric
from felix_py.datastore.keys import EndpointId
from felix_py.lab import netns as nsmod
from felix_py.lab.netns import wait_for

POOL6 = "fd00:10:65::/48"
W1_V4, W1_V6 = "10.65.1.1", "fd00:10:65::1"
H2_BLOCK = "fd00:10:65:2::/122"          # the stand-in host's IPAM block
H2_ADDR = "fd00:10:65:2::1"              # an address in it, on the stand-in's loopback
OUTSIDE = "fd99::/64"                    # in no pool: the ToR must refuse it

def addr6(ns, dev, cidr):
    ns.run(f"ip -6 addr add {cidr} dev {dev} nodad")


def learned(ns, family):
    """The routes the agent installed from BGP (protocol 98 with a gateway)."""
    return [r for r in ns.run(f"ip {family} route show").stdout.splitlines()
            if " proto 98 " in r and " via " in r]


def route_counts(bird, protocol):
    """(imported, exported) routes of a BIRD protocol's channel."""
    out = bird.birdc("show", "protocols", "all", protocol)
    m = re.search(r"Routes:\s+(\d+) imported, (?:\d+ filtered, )?(\d+) exported", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_dual_stack_downward_default_fabric(netns_factory, registry, client, layout,
                                            open_profile, agents, birds):
    core, tor, h1, h2 = (netns_factory(n) for n in ("core6", "tor6", "h1", "h2"))
    for ns in (core, tor):
        ns.sysctl("net.ipv4.ip_forward", 1)
        ns.sysctl("net.ipv6.conf.all.forwarding", 1)
    nsmod.veth(core, "tor", tor, "core")
    core.addr("tor", "10.0.1.1/30"), tor.addr("core", "10.0.1.2/30")
    addr6(core, "tor", "fd00:0:1::1/64"), addr6(tor, "core", "fd00:0:1::2/64")
    tor.run("ip link add rack type bridge")
    tor.run("ip link set rack up")
    tor.addr("rack", "10.1.0.1/24")
    addr6(tor, "rack", "fd10:1::1/64")
    for host, port in ((h1, "h1"), (h2, "h2")):
        nsmod.veth(tor, port, host, "tor1")
        tor.run(f"ip link set {port} master rack")
    h1.addr("tor1", "10.1.0.11/24")
    addr6(h1, "tor1", "fd10:1::11/64")
    addr6(h2, "tor1", "fd10:1::12/64")
    addr6(h2, "lo", f"{H2_ADDR}/128")
    for ns, dev in ((tor, "rack"), (tor, "core"), (core, "tor"), (h2, "tor1")):
        wait_link_local(ns, dev)

    registry.add_pool("10.65.0.0/16")
    registry.add_pool(POOL6)
    registry.set_as_number(64512)
    registry.set_host_bgp_address("h1", "10.1.0.11")
    registry.set_host_bgp_address("h1", "fd10:1::11", 6)
    registry.add_bgp_peer("10.1.0.1", 65101, host="h1")
    registry.add_bgp_peer("fd10:1::1", 65101, host="h1")
    registry.add_bgp_peer("fd10:1::1", 65101, host="h2")      # no ip_addr_v6: the range

    bgp, pools = fabric.load(client, layout)
    timers = dict(hold_time=3, graceful_restart=120)
    bird_core = birds(core, "core", fabric.render_core(
        name="core", router_id="10.0.1.1", local_as=65000,
        tors=[("10.0.1.2", 65101), ("fd00:0:1::2", 65101)], **timers))
    tor_conf = fabric.render_tor(
        bgp, pools, name="tor1", router_id="10.0.1.2", local_as=65101,
        addresses=["10.1.0.1/24", "fd10:1::1/64"],
        uplinks=[("10.0.1.1", 65000), ("fd00:0:1::1", 65000)], **timers)
    assert "protocol bgp host6_h1 from rack_host6" in tor_conf
    assert "neighbor range fd10:1::/64 as 64512;" in tor_conf
    bird_tor = birds(tor, "tor1", tor_conf)
    # The stand-in host: a BIRD that installs what it learns, and announces its block and a
    # prefix the ToR must refuse.
    bird_h2 = birds(h2, "h2", f"""router id 10.1.0.12;
protocol device {{}}
protocol kernel {{ ipv6 {{ import none; export where source = RTS_BGP; }}; }}
protocol static announced {{ ipv6; route {H2_BLOCK} blackhole; route {OUTSIDE} blackhole; }}
protocol bgp tor {{
    local as 64512;
    neighbor fd10:1::1 as 65101;
    hold time 3;
    connect delay time 1;
    ipv6 {{ import all; export where source = RTS_STATIC; next hop self; }};
}}
""")

    w1, mac = plug(h1, netns_factory, "w1", [W1_V4], [W1_V6])
    registry.register_endpoint(EndpointId("h1", "k8s", "w1", "eth0"), {
        "name": "caliw1", "mac": mac, "profile_ids": [open_profile],
        "ipv4_nets": [f"{W1_V4}/32"], "ipv6_nets": [f"{W1_V6}/128"]})
    agent = agents(h1, "h1")
    agent.wait_ready(registry)

    # The core holds the workload's /128 (and its /32), through the ToR.
    wait_for(lambda: bird_core.routes("master6").get(f"{W1_V6}/128") == {"fd00:0:1::2"}, 30,
             what="the core routes the workload's /128 to the ToR")
    wait_for(lambda: bird_core.routes().get(f"{W1_V4}/32") == {"10.0.1.2"}, 30,
             what="the core routes the workload's /32 to the ToR")
    # The ToR: the host's /128 via the host's own address (next hop self on its IPv6
    # session); the stand-in's block, accepted from the range; never the prefix outside
    # the pools, which therefore never reaches the core either.
    assert bird_tor.routes("master6").get(f"{W1_V6}/128") == {"fd10:1::11"}
    wait_for(lambda: bird_core.routes("master6").get(H2_BLOCK) == {"fd00:0:1::2"}, 30,
             what="the core routes the stand-in's block to the ToR")
    assert bird_tor.routes("master6").get(H2_BLOCK) == {"fd10:1::12"}
    assert OUTSIDE not in bird_tor.routes("master6")
    assert OUTSIDE not in bird_core.routes("master6")
    states = bird_tor.protocols()
    assert states["host_h1"] == states["host6_h1"] == "Established", states
    assert any(p.startswith("rack6_fd10_1___64_") and s == "Established"
               for p, s in states.items()), states

    # The host: ::/0 from the ToR in its kernel (through the ToR's link-local address, on
    # the link it is reached on, or its global one), 0.0.0.0/0 likewise, and nothing else.
    wait_for(lambda: any(re.match(r"default via (fe80::\S+|fd10:1::1) dev tor1 proto 98 ", r)
                         for r in learned(h1, "-6")), 30, what="::/0 on the host from BGP")
    wait_for(lambda: learned(h1, "-4"), 30, what="0.0.0.0/0 on the host from BGP")
    # One session per family: the IPv6 one carries the /128 up and ::/0 down, the IPv4 one
    # the /32 and 0.0.0.0/0; nothing else in either direction.
    wait_for(lambda: route_counts(bird_tor, "host6_h1") == (1, 1), 10,
             what="the ToR's IPv6 session with h1: one route each way")
    assert route_counts(bird_tor, "host_h1") == (1, 1)
    for peer in ("10.1.0.1", "fd10:1::1"):
        wait_for(lambda: (s := registry.bgp_peer_statuses("h1").get(peer))
                 and (s.peer_type, s.state, s.received, s.accepted, s.sent)
                 == ("tor", "established", 1, 1, 1), 10,
                 what=f"h1's status for {peer}: established, one route received and taken, "
                      "one sent (its family's)")
    [v6_default] = learned(h1, "-6")
    assert v6_default.startswith("default via ")
    [v4_default] = learned(h1, "-4")
    assert v4_default.startswith("default via 10.1.0.1 dev tor1 proto 98 ")
    routes6 = h1.run("ip -6 route show").stdout
    assert H2_BLOCK.split("/")[0] not in routes6 and "fd99:" not in routes6
    assert f"{W1_V6} dev caliw1 proto 98 " in routes6
    # The stand-in host got the default too, and not h1's /128.
    assert set(bird_h2.routes("master6")) == {"::/0", H2_BLOCK, OUTSIDE}

    # Traffic follows: the workload reaches the core (whose reply takes the /128 the core
    # learned) and the other rack member (whose reply climbs its own ::/0).
    assert wait_for(lambda: ping6(w1, "fd00:0:1::1"), 20, what="w1 -> the core over IPv6")
    assert wait_for(lambda: ping6(w1, H2_ADDR), 20, what="w1 -> the stand-in's block")
    assert wait_for(lambda: w1.ping("10.0.1.1"), 20, what="w1 -> the core over IPv4")

    # The endpoint goes: its /128 leaves the fabric.
    registry.remove_endpoint(EndpointId("h1", "k8s", "w1", "eth0"))
    wait_for(lambda: f"{W1_V6}/128" not in bird_core.routes("master6"), 20,
             what="the core drops the removed workload's /128")
    assert f"{W1_V6}/128" not in bird_tor.routes("master6")

    # The ToR goes down: the host's IPv6 default goes with its session (hold time 3 s).
    bird_tor.stop()
    wait_for(lambda: not learned(h1, "-6"), 15, what="::/0 gone from the host with its ToR")
    assert agent.alive()
