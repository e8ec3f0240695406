"""IPv6 workloads through the real agent, in throwaway namespaces: /128 routes, the IPv6
gateway, ping -6, policy in ip6tables over inet6 ipsets, anti-spoofing, removal, restart.

Most workloads are plugged in by felix-cni's own kernel code (``felix_py.cni.link``, run
inside the host namespace as the plugin is): the host end carries ee:ee:ee:ee:ee:ee, so
its link-local address is the workloads' IPv6 gateway fe80::ecee:eeff:feee:eeee.  One
test plugs a workload in as other orchestrators do (``workload_factory``: any MAC on the
host end); the host then answers for the gateway by proxy NDP.
"""

import re
import sys
import time

import pytest
from agentkit import listen, ping6, plug, route_events_during, wait_link_local

from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.interfaces import GATEWAY_V6
from felix_py.lab import netns as nsmod
from felix_py.lab.netns import wait_for

H = "host-6"

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_INET6)
s.settimeout(1.0)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("open")
except OSError as e:
    print(type(e).__name__)
"""


def eid(name):
    return EndpointId(H, "k8s", name, "eth0")


def v6(n):
    return f"fd00:10:65::{n:x}"


def register(registry, name, mac, ipv4, ipv6, profiles, **kw):
    registry.register_endpoint(eid(name), {
        "name": f"cali{name}", "mac": mac, "profile_ids": profiles,
        "ipv4_nets": [f"{ip}/32" for ip in ipv4], "ipv6_nets": [f"{ip}/128" for ip in ipv6],
        **kw})


def routes6(host):
    return host.run("ip -6 route show").stdout.splitlines()


def has_route6(host, ip, dev):
    """The host routes ip/128 to dev with our protocol number."""
    return any(r.startswith(f"{ip} dev {dev} proto 98 ") for r in routes6(host))


def proxies(host, dev):
    return host.run(f"ip -6 neigh show proxy dev {dev}").stdout.split()


def connect6(ns, dst, port):
    """'open', or the error a client sees (TimeoutError when policy drops the SYN)."""
    return ns.run([sys.executable, "-c", CONNECT, dst, str(port)], timeout=15).stdout.strip()


def save6(host):
    """The IPv6 filter table as ip6tables-legacy-save shows it, without our hash comments."""
    out = host.run("ip6tables-legacy-save -t filter").stdout
    return re.sub(r' -m comment --comment "felix:[0-9a-f]+"', "", out)


def fromd_drops6(host) -> int:
    """Packets dropped by the last rule of the IPv6 from-workload dispatch chain."""
    out = host.run("ip6tables-legacy -L felix-fromd -v -x -n").stdout.splitlines()
    return int([ln for ln in out if ln.split()[2:3] == ["DROP"]][-1].split()[0])


@pytest.fixture
def host(host_factory):
    return host_factory("h6")


def test_dual_stack_routes_ping_restart_spoofing_and_removal(host, netns_factory, registry,
                                                             open_profile, agent_factory):
    w1, mac1 = plug(host, netns_factory, "d1", ["10.65.6.1"], [v6(1)])
    w2, mac2 = plug(host, netns_factory, "d2", ["10.65.6.2"], [v6(2)])
    register(registry, "d1", mac1, ["10.65.6.1"], [v6(1)], [open_profile])
    register(registry, "d2", mac2, ["10.65.6.2"], [v6(2)], [open_profile])
    agent = agent_factory(host, H)
    agent.wait_ready(registry)

    # Both families routed to the veth with our protocol number, the MAC pinned.
    wait_for(lambda: has_route6(host, v6(1), "calid1") and has_route6(host, v6(2), "calid2"),
             what="/128 routes")
    assert "10.65.6.1 dev calid1 proto 98 scope link" in host.routes()
    assert f"lladdr {mac1} PERMANENT" in host.run(f"ip -6 neigh show {v6(1)} dev calid1").stdout
    assert host.run("sysctl -n net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    # The workload's default route points at the host end's own link-local address.
    assert w1.run("ip -6 route show default").stdout.startswith(
        f"default via {GATEWAY_V6} dev eth0")
    assert f"inet6 {GATEWAY_V6}/64 scope link" in host.run("ip -6 addr show dev calid1").stdout

    assert wait_for(lambda: ping6(w1, v6(2)), what="d1 -> d2 over IPv6")
    assert ping6(w2, v6(1)) and w1.ping("10.65.6.2")
    wait_for(lambda: (st := registry.endpoint_status(eid("d1"))) and st.status == "up",
             what="d1 up")

    # A restart leaves the IPv6 routes alone, as it does the IPv4 ones.
    def restart():
        agent.stop()
        agent_factory(host, H).wait_ready(registry)
    assert [e for e in route_events_during(host, restart, "-6") if "fd00:10:65::" in e] == []
    assert has_route6(host, v6(1), "calid1") and ping6(w1, v6(2))

    # A source the workload does not own is dropped, although the host would route the
    # reply back to it: only the anti-spoofing rules stand in the way.
    spoofed = v6(0x99)
    w1.run(f"ip -6 addr add {spoofed}/128 dev eth0 nodad")
    host.run(f"ip -6 route add {spoofed}/128 dev calid1")
    before = fromd_drops6(host)
    assert not ping6(w1, v6(2), src=spoofed)
    assert fromd_drops6(host) > before
    assert ping6(w1, v6(2))

    # Removing the endpoint removes its routes and its ip6tables chains.
    assert ":felix-to-calid2 " in save6(host) and ":felix-from-calid2 " in save6(host)
    registry.remove_endpoint(eid("d2"))
    wait_for(lambda: not has_route6(host, v6(2), "calid2"), what="/128 route to d2 gone")
    wait_for(lambda: "calid2" not in save6(host), what="d2's ip6tables chains gone")
    assert not any(r.startswith("10.65.6.2 ") for r in host.routes())
    assert not ping6(w1, v6(2))
    assert has_route6(host, v6(1), "calid1") and ":felix-to-calid1 " in save6(host)


def test_gateway_answered_by_proxy_ndp_whatever_the_host_end_mac(
        host, netns_factory, workload_factory, registry, open_profile, agent_factory):
    # Plugged in by an orchestrator that leaves the host end's MAC random: the host does
    # not own the workload's gateway address, it has to answer for it.
    w = workload_factory(host, "o1", "calio1", "10.65.7.1")
    w.run(f"ip -6 addr add {v6(0x21)}/128 dev eth0 nodad")
    w.run(f"ip -6 route add default via {GATEWAY_V6} dev eth0")
    _, peer_mac = plug(host, netns_factory, "d2", ["10.65.6.2"], [v6(2)])
    register(registry, "o1", None, ["10.65.7.1"], [v6(0x21)], [open_profile])
    register(registry, "d2", peer_mac, ["10.65.6.2"], [v6(2)], [open_profile])
    # Left by an endpoint removed while no agent ran: the agent's start removes it.
    host.run("ip -6 neigh add proxy fe80::dead dev calio1")
    agent_factory(host, H).wait_ready(registry)

    wait_for(lambda: proxies(host, "calio1") == [GATEWAY_V6, "proxy"], what="proxy NDP entry")
    for name, value in (("conf.calio1.proxy_ndp", "1"), ("conf.calio1.forwarding", "1"),
                        ("neigh.calio1.proxy_delay", "0")):
        assert host.run(f"sysctl -n net.ipv6.{name}").stdout.strip() == value, name
    assert wait_for(lambda: ping6(w, v6(2)), what="o1 -> d2 through the proxied gateway")

    # The gateway the endpoint names is the one answered for.
    w.run("ip -6 route replace default via fe80::1 dev eth0")
    registry.update_endpoint(eid("o1"), ipv6_gateway="fe80::1")
    wait_for(lambda: proxies(host, "calio1")[:1] == ["fe80::1"], what="proxy entry moved")
    assert GATEWAY_V6 not in proxies(host, "calio1")
    assert wait_for(lambda: ping6(w, v6(2)), what="o1 -> d2 through fe80::1")

    # An endpoint that goes takes its proxy entry with it, though its veth stays.
    registry.remove_endpoint(eid("o1"))
    wait_for(lambda: proxies(host, "calio1") == [], what="proxy entry removed")


def test_policy_over_ipv6(host, netns_factory, registry, agent_factory):
    registry.set_profile("svc", {"inbound_rules": [{"action": "allow", "protocol": "tcp",
                                                     "src_tag": "clients",
                                                     "dst_ports": [8080]}],
                                 "outbound_rules": [{"action": "allow"}]})
    registry.set_profile("clients", {"outbound_rules": [{"action": "allow"}]}, tags=["clients"])
    registry.set_profile("others", {"outbound_rules": [{"action": "allow"}]}, tags=["others"])
    wls, macs = {}, {}
    for n, (name, profile) in enumerate((("srv", "svc"), ("cli", "clients"),
                                         ("oth", "others")), start=0x10):
        wl, mac = plug(host, netns_factory, name, [], [v6(n)])
        register(registry, name, mac, [], [v6(n)], [profile])
        wls[name], macs[name] = wl, mac
    srv, cli, oth = v6(0x10), v6(0x11), v6(0x12)
    listen(wls["srv"], [8080, 9090], 6)
    agent_factory(host, H).wait_ready(registry)

    assert wait_for(lambda: connect6(wls["cli"], srv, 8080) == "open",
                    what="client -> server tcp/8080 over IPv6")
    assert connect6(wls["cli"], srv, 9090) == "TimeoutError"
    assert connect6(wls["oth"], srv, 8080) == "TimeoutError"

    # What a user sees in the kernel: the workloads' chains, the tag's inet6 set.
    rules = save6(host)
    for chain in ("felix-to-calisrv", "felix-from-calisrv", "felix-pi-svc"):
        assert f":{chain} " in rules, chain
    assert (f"-A felix-fromd -s {cli}/128 -i calicli -m mac --mac-source {macs['cli']} "
            "-g felix-from-calicli") in rules
    assert ("-A felix-pi-svc -p tcp -m set --match-set felix-6t-clients src "
            "-m multiport --dports 8080 -j MARK --set-xmark 0x1000000/0x1000000") in rules
    sets = host.run("ipset list felix-6t-clients").stdout
    assert "family inet6" in sets and cli in sets and oth not in sets


def test_downward_default_over_an_ipv6_session(host, netns_factory, registry, open_profile,
                                                agent_factory, birds):
    """A ToR (BIRD) peering with the host over IPv6: the host announces its workload's /128
    with itself as next hop and installs ::/0 from the ToR, and nothing else it is sent."""
    tor = netns_factory("t6")
    nsmod.veth(tor, "rack6", host, "up6")
    tor.run("ip -6 addr add fd10:7::1/64 dev rack6 nodad")
    host.run("ip -6 addr add fd10:7::2/64 dev up6 nodad")
    tor.addr("rack6", "10.7.0.1/24")
    host.addr("up6", "10.7.0.2/24")
    # Once the ToR's link-local address is usable, BIRD sends it as a second next hop.
    wait_link_local(tor, "rack6")
    bird = birds(tor, "tor6", """router id 10.7.0.1;
protocol device {}
protocol static fabric6 { ipv6; route ::/0 blackhole; route fd99::/64 blackhole; }
protocol bgp host6 {
    local as 65010;
    neighbor fd10:7::2 as 64512;
    hold time 3;
    connect delay time 1;
    ipv6 { import all; export all; next hop self; };
}
""")
    registry.set_host_bgp_address(H, "10.7.0.2")
    registry.add_bgp_peer("fd10:7::1", 65010, host=H)
    _, mac = plug(host, netns_factory, "b1", [], [v6(0x91)])
    register(registry, "b1", mac, [], [v6(0x91)], [open_profile])
    agent_factory(host, H).wait_ready(registry)

    wait_for(lambda: bird.routes("master6").get(f"{v6(0x91)}/128") == {"fd10:7::2"}, 30,
             what="the ToR holds the workload's /128 via the host")
    # The next hop that comes through is the ToR's link-local address: a route through it
    # is only valid on its link (without the interface the kernel refused it: EINVAL).
    wait_for(lambda: any(re.match(r"default via fe80::\S+ dev up6 proto 98 ", r)
                         for r in routes6(host)), 30, what="the host's IPv6 default from BGP")
    time.sleep(1)                # fd99::/64 came in the same UPDATEs: it stays out
    learned = [r for r in routes6(host) if " proto 98 " in r and " dev calib1 " not in r]
    assert len(learned) == 1 and learned[0].startswith("default via fe80::")
    assert has_route6(host, v6(0x91), "calib1")
    assert not any(r.startswith("fd99::") for r in routes6(host))
    wait_for(lambda: (s := registry.bgp_peer_statuses(H).get("fd10:7::1"))
             and (s.state, s.sent, s.accepted) == ("established", 1, 1), 10,
             what="the host's BGP status for the ToR")
