"""bgp.fabric: BIRD configurations from the datastore, checked by BIRD's own parser."""

import shutil

import pytest
from birdtext import bird_parses, block, sessions

from bgp import fabric
from felix_py import model
from felix_py.calc.store import BgpSettings

pytestmark = pytest.mark.skipif(shutil.which("bird") is None, reason="needs BIRD 2 (bird2)")


def peer(ip, as_num, password=None):
    return model.BgpPeer(ip=ip, as_num=as_num, password=password)


def settings():
    b = BgpSettings(as_num=64512)
    b.host_ip_v4 = {"h1": "10.1.0.11", "h-2.x": "10.1.0.12", "h3": "10.2.0.13"}
    b.host_peers = {"h1": {"10.1.0.1": peer("10.1.0.1", 65101, "pass word#1")},
                    "h-2.x": {"10.1.0.1": peer("10.1.0.1", 65101)},
                    "h3": {"10.1.0.1": peer("10.1.0.1", 65101),
                           "10.2.0.1": peer("10.2.0.1", 65102)},
                    "h9": {"10.9.0.1": peer("10.9.0.1", 65109)}}
    b.route_reflectors = {"10.3.0.1": model.RouteReflector(ip="10.3.0.1", cluster_id="1.0.0.1"),
                          "10.3.0.2": model.RouteReflector(ip="10.3.0.2", cluster_id="1.0.0.1")}
    b.rr_cluster_id = {"h1": "1.0.0.1", "h3": "1.0.0.1", "h-2.x": "2.0.0.2"}
    return b


def test_tor_peers_with_its_rack_and_sends_only_the_default(tmp_path):
    text = fabric.render_tor(settings(), ["10.65.0.0/16", "fd00::/64"], name="tor1",
                             router_id="10.1.0.1", local_as=65101, addresses=["10.1.0.1/24"],
                             uplinks=[("10.0.1.1", 65000)])
    bird_parses(tmp_path, text)
    assert "protocol bgp host_h1 from rack_host" in text and 'password "pass word#1";' in text
    assert "protocol bgp host_h_2_x from rack_host" in text      # a BIRD-safe name
    # h3 peers from its rack-2 address: accepted dynamically from the link's prefix.
    assert "neighbor range 10.1.0.0/24 as 64512;" in text
    assert "h9" not in text                                       # another ToR's host
    assert "define WORKLOAD_NETS = [ 10.65.0.0/16+ ];" in text
    assert "if net = 0.0.0.0/0 then accept;" in text
    assert "protocol bgp uplink_10_0_1_1" in text and "neighbor 10.0.1.1 as 65000;" in text


def test_core_and_route_reflector(tmp_path):
    core = fabric.render_core(name="core", router_id="10.0.0.1", local_as=65000,
                              tors=[("10.0.1.2", 65101), ("10.0.2.2", 65102, "pw")])
    bird_parses(tmp_path, core)
    assert "route 0.0.0.0/0 blackhole;" in core and "protocol bgp tor_10_0_2_2" in core
    rr = fabric.render_route_reflector(settings(), rr_ip="10.3.0.1")
    bird_parses(tmp_path, rr)
    assert "rr cluster id 1.0.0.1;" in rr
    assert "neighbor 10.1.0.11 as 64512;" in rr and "neighbor 10.2.0.13 as 64512;" in rr
    assert "10.1.0.12" not in rr                                  # another cluster
    assert "protocol bgp rr_10_3_0_2 {" in rr                     # the other reflector


def test_settings_bird_would_refuse_are_errors_naming_what_to_fix():
    b = settings()
    with pytest.raises(fabric.RenderError, match="peer_v4/10.1.0.1"):
        fabric.render_tor(b, [], name="t", router_id="10.1.0.1", local_as=65999,
                          addresses=["10.1.0.1/24"])
    with pytest.raises(fabric.RenderError, match="prefix length"):
        fabric.render_tor(b, [], name="t", router_id="10.1.0.1", local_as=65101,
                          addresses=["10.1.0.1"])
    with pytest.raises(fabric.RenderError, match="rr_v4/10.3.0.9"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.9")
    with pytest.raises(fabric.RenderError, match="out of range"):
        fabric.render_core(name="c", router_id="10.0.0.1", local_as=0, tors=[])
    b.host_as_num["h3"] = 65003
    with pytest.raises(fabric.RenderError, match="one AS"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.1")


# -- IPv6 --------------------------------------------------------------------------------

def settings6():
    """settings() with IPv6 peers: h1 has its ip_addr_v6 on the ToR's IPv6 link (a session
    of its own), h-2.x none and h3 one on another link (both dynamic), h9 another ToR's."""
    b = settings()
    b.host_ip_v6 = {"h1": "fd10:1::11", "h3": "fd10:2::13", "h9": "fd10:9::19"}
    b.host_peers["h1"]["fd10:1::1"] = peer("fd10:1::1", 65101, "six")
    b.host_peers["h-2.x"]["fd10:1::1"] = peer("fd10:1::1", 65101)
    b.host_peers["h3"]["fd10:1::1"] = peer("fd10:1::1", 65101)
    b.host_peers["h9"]["fd10:9::1"] = peer("fd10:9::1", 65109)
    b.route_reflectors["fd00:3::1"] = model.RouteReflector(ip="fd00:3::1", cluster_id="1.0.0.1")
    b.route_reflectors["fd00:3::2"] = model.RouteReflector(ip="fd00:3::2", cluster_id="1.0.0.1")
    return b


POOLS = ["10.65.0.0/16", "fd00:10:66::/56", "fd00:10:65::/48"]
TOR1 = dict(name="tor1", router_id="10.1.0.1", local_as=65101)


def test_dual_stack_tor_peers_over_ipv6_per_session_and_sends_only_the_ipv6_default(tmp_path):
    text = fabric.render_tor(settings6(), POOLS, **TOR1,
                             addresses=["10.1.0.1/24", "fd10:1::1/64"],
                             uplinks=[("fd00:0:1::1", 65000, "up6"), ("10.0.1.1", 65000)])
    bird_parses(tmp_path, text)
    # One session per address and family, as the hosts' ExaBGP peers: each BGP protocol
    # has one channel, the one of its neighbour's address.
    assert list(sessions(text)) == ["host_h_2_x", "host_h1", "rack_10_1_0_0_24",
                                     "uplink_10_0_1_1", "host6_h1", "rack6_fd10_1___64",
                                     "uplink_fd00_0_1__1"]
    for p, (_, channels) in sessions(text).items():
        assert channels == (["ipv6"] if "6_" in p or "fd00" in p else ["ipv4"]), p
    # h1 has its ip_addr_v6 on the link: a session of its own, with its peer_v6 password.
    assert block(text, "protocol bgp host6_h1 from rack_host6") == \
        '    neighbor fd10:1::11 as 64512;\n    password "six";\n'
    # h-2.x (no ip_addr_v6) and h3 (ip_addr_v6 on another link): the link's range.
    rng = block(text, "protocol bgp rack6_fd10_1___64 from rack_host6")
    assert "neighbor range fd10:1::/64 as 64512;" in rng and "password" not in rng
    assert "# hosts of h-2.x, h3 that peer" in text
    assert "fd10:9" not in text                                 # another ToR's host
    # From the hosts: only prefixes of the IPv6 pools (any length: /128s, IPAM blocks);
    # to them: only ::/0.  Up: their workload routes; from the uplinks: only ::/0.
    assert "define WORKLOAD_NETS6 = [ fd00:10:65::/48+, fd00:10:66::/56+ ];" in text
    assert "define WORKLOAD_NETS = [ 10.65.0.0/16+ ];" in text
    tmpl = block(text, "template bgp rack_host6")
    assert "import filter from_hosts6;" in tmpl and "export filter to_hosts6;" in tmpl
    assert "next hop self;" in tmpl and "local as 65101;" in tmpl
    assert block(text, "filter from_hosts6") == \
        "    if net ~ WORKLOAD_NETS6 then accept;\n    reject;\n"
    assert block(text, "filter to_hosts6") == "    if net = ::/0 then accept;\n    reject;\n"
    assert block(text, "filter from_uplinks6") == block(text, "filter to_hosts6")
    assert block(text, "filter to_uplinks6") == \
        "    if source = RTS_BGP && net ~ WORKLOAD_NETS6 then accept;\n    reject;\n"
    up = block(text, "protocol bgp uplink_fd00_0_1__1")
    assert "neighbor fd00:0:1::1 as 65000;" in up and 'password "up6";' in up
    assert "import filter from_uplinks6;" in up and "export filter to_uplinks6;" in up
    # What it learns goes into its kernel, in both families.
    assert "ipv6 {\n        import none;\n        export all;" in \
        block(text, "protocol kernel kernel6")
    assert "default_route6" not in text                         # the core sends ::/0


def test_adding_ipv6_leaves_the_ipv4_configuration_as_it_was(tmp_path):
    """The IPv4 half of a dual-stack file is the IPv4-only file, to the byte; IPv6 settings
    in the datastore change nothing on a switch without IPv6 addresses."""
    v4 = fabric.render_tor(settings(), POOLS, **TOR1, addresses=["10.1.0.1/24"],
                           uplinks=[("10.0.1.1", 65000)], originate_default=True)
    assert fabric.render_tor(settings6(), POOLS, **TOR1, addresses=["10.1.0.1/24"],
                             uplinks=[("10.0.1.1", 65000)], originate_default=True) == v4
    assert "ipv6" not in v4 and "::" not in v4
    dual = fabric.render_tor(settings6(), POOLS, **TOR1,
                             addresses=["10.1.0.1/24", "fd10:1::1/64"],
                             uplinks=[("fd00:0:1::1", 65000), ("10.0.1.1", 65000)],
                             originate_default=True)
    assert dual.startswith(v4) and "# ---- IPv6" in dual[len(v4):]
    core = dict(name="core", router_id="10.0.0.1", local_as=65000)
    core4 = fabric.render_core(**core, tors=[("10.0.1.2", 65101)])
    assert "ipv6" not in core4
    assert fabric.render_core(**core, tors=[("fd00:0:1::2", 65101), ("10.0.1.2", 65101)]) \
        .startswith(core4)
    rr4 = fabric.render_route_reflector(settings(), rr_ip="10.3.0.1")
    assert fabric.render_route_reflector(settings6(), rr_ip="10.3.0.1") == rr4
    assert fabric.render_route_reflector(settings6(), rr_ip="10.3.0.1",
                                         rr_ip_v6="fd00:3::1").startswith(rr4)


def test_ipv6_only_tor_without_ipv6_pools(tmp_path):
    b = settings6()
    b.host_ip_v4 = {}
    # IPv4 pools only: no IPv6 workload prefix could be accepted; refused, naming the fix.
    with pytest.raises(fabric.RenderError, match="IPv6 sessions .* add an IPv6 pool"):
        fabric.render_tor(b, ["10.65.0.0/16"], **TOR1, addresses=["fd10:1::1/64"])
    text = fabric.render_tor(b, [], **TOR1, addresses=["fd10:1::1/64"],
                             originate_default=True)
    bird_parses(tmp_path, text)
    assert "ipv4" not in text and "0.0.0.0" not in text and "WORKLOAD_NETS " not in text
    # No pool at all: any IPv6 prefix but the default, as the IPv4 side does without pools.
    assert "define WORKLOAD_NETS6 = [ ::/0{1,128} ];" in text
    assert "protocol static default_route6 {\n    ipv6;\n    route ::/0 blackhole;\n}" in text
    assert list(sessions(text)) == ["host6_h1", "rack6_fd10_1___64"]
    assert text.count("Forwarding follows BGP") == 1


def test_core_originates_and_sends_the_ipv6_default_to_ipv6_tors(tmp_path):
    core = fabric.render_core(name="core", router_id="10.0.0.1", local_as=65000,
                              tors=[("10.0.1.2", 65101), ("fd00:0:2::2", 65102, "pw"),
                                    ("FD00:0:1:0::2", 65101)])
    bird_parses(tmp_path, core)
    assert list(sessions(core)) == ["tor_10_0_1_2", "tor_fd00_0_2__2", "tor_fd00_0_1__2"]
    assert [ch for _, ch in sessions(core).values()] == [["ipv4"], ["ipv6"], ["ipv6"]]
    assert "protocol static default_route6 {\n    ipv6;\n    route ::/0 blackhole;\n}" in core
    assert block(core, "filter from_tors6") == "    if net = ::/0 then reject;\n    accept;\n"
    assert block(core, "filter to_tors6") == "    if net = ::/0 then accept;\n    reject;\n"
    t = block(core, "protocol bgp tor_fd00_0_2__2")
    assert "neighbor fd00:0:2::2 as 65102;" in t and 'password "pw";' in t
    assert "import filter from_tors6;" in t and "export filter to_tors6;" in t
    assert "neighbor fd00:0:1::2 as 65101;" in core               # written canonically
    only6 = fabric.render_core(name="core", router_id="10.0.0.1", local_as=65000,
                               tors=[("fd00:0:1::2", 65101)], originate_default=False)
    bird_parses(tmp_path, only6)
    assert "ipv4" not in only6 and "blackhole" not in only6


def test_route_reflector_reflects_ipv6_for_its_clients(tmp_path):
    b = settings6()
    b.host_ip_v6.pop("h3")          # h3 peers with the reflector over IPv4 only
    rr = fabric.render_route_reflector(b, rr_ip="10.3.0.1", rr_ip_v6="fd00:3::1")
    bird_parses(tmp_path, rr)
    assert list(sessions(rr)) == ["host_h1", "host_h3", "rr_10_3_0_2", "host6_h1",
                                   "rr_fd00_3__2"]
    assert [ch for _, ch in sessions(rr).values()] == [["ipv4"]] * 3 + [["ipv6"]] * 2
    tmpl = block(rr, "template bgp cluster_client6")
    assert "rr client;" in tmpl and "rr cluster id 1.0.0.1;" in tmpl
    assert "local as 64512;" in tmpl and "export where source = RTS_BGP;" in tmpl
    assert block(rr, "protocol bgp host6_h1 from cluster_client6") == \
        "    neighbor fd10:1::11 as 64512;\n"
    assert "without ip_addr_v6, so without an IPv6 session here:\n# h3\n" in rr
    assert "neighbor fd00:3::2 as 64512;" in block(rr, "protocol bgp rr_fd00_3__2")
    assert "protocol direct direct6 {\n    ipv6;\n}" in rr
    assert "router id 10.3.0.1;" in rr
    # An IPv6-only reflector: IPv6 sessions only, with the router id it is given.
    only6 = fabric.render_route_reflector(b, rr_ip="fd00:3::2", router_id="10.3.0.2")
    bird_parses(tmp_path, only6)
    assert list(sessions(only6)) == ["host6_h1", "rr_fd00_3__1"]
    assert "ipv4" not in only6 and "router id 10.3.0.2;" in only6
    assert "BIRD 2 configuration of rr fd00:3::2," in only6


def test_invalid_ipv6_settings_are_errors_naming_what_to_fix():
    b = settings6()

    def tor(bgp=b, pools=(), **kw):
        args = dict(TOR1, addresses=["10.1.0.1/24", "fd10:1::1/64"])
        return fabric.render_tor(bgp, list(pools), **{**args, **kw})

    with pytest.raises(fabric.RenderError, match="fd10:1::1.*prefix length"):
        tor(addresses=["fd10:1::1"])
    with pytest.raises(fabric.RenderError, match="ToR address fe80::1/64.*link-local"):
        tor(addresses=["fe80::1/64"])
    with pytest.raises(fabric.RenderError, match="uplink fe80::9.*link-local"):
        tor(uplinks=[("fe80::9", 65000)])
    with pytest.raises(fabric.RenderError, match=r"uplink fd00::9%eth0.*names an interface"):
        tor(uplinks=[("fd00::9%eth0", 65000)])
    with pytest.raises(fabric.RenderError, match="uplink fd00::zz.*not an IP address"):
        tor(uplinks=[("fd00::zz", 65000)])
    with pytest.raises(fabric.RenderError, match="uplink fd00::1: AS 0 is out of range"):
        tor(uplinks=[("fd00::1", 0)])
    with pytest.raises(fabric.RenderError, match="router id 'fd10:1::1' is not an IPv4 address"):
        tor(router_id="fd10:1::1")
    with pytest.raises(fabric.RenderError, match=r"pool 'fd00:10:65::/480'"):
        tor(pools=["fd00:10:65::/480"])
    wrong_as = settings6()
    wrong_as.host_peers["h1"]["fd10:1::1"] = peer("fd10:1::1", 65999)
    with pytest.raises(fabric.RenderError, match="/calico/bgp/v1/host/h1/peer_v6/fd10:1::1"):
        tor(wrong_as)
    not_v6 = settings6()
    not_v6.host_ip_v6["h1"] = "10.1.0.11"
    with pytest.raises(fabric.RenderError, match="/calico/bgp/v1/host/h1/ip_addr_v6"):
        tor(not_v6)
    mixed = settings6()
    mixed.host_peers["h3"]["fd10:1::1"] = peer("fd10:1::1", 65101, "other")
    with pytest.raises(fabric.RenderError, match="h-2.x, h3 .*fd10:1::/64.*ip_addr_v6"):
        tor(mixed)
    with pytest.raises(fabric.RenderError, match="tor ff02::1: ff02::1 cannot be a BGP"):
        fabric.render_core(name="c", router_id="10.0.0.1", local_as=65000,
                           tors=[("ff02::1", 65101)])
    with pytest.raises(fabric.RenderError, match="rr_v6/fd00:3::9"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.1", rr_ip_v6="fd00:3::9")
    with pytest.raises(fabric.RenderError, match="IPv6 route reflector: 10.3.0.2 is not IPv6"):
        fabric.render_route_reflector(b, rr_ip="10.3.0.1", rr_ip_v6="10.3.0.2")
    with pytest.raises(fabric.RenderError, match="router id: .*needs an IPv4 router id"):
        fabric.render_route_reflector(b, rr_ip="fd00:3::1")
    b.host_as_num["h1"] = 65001
    with pytest.raises(fabric.RenderError, match="one AS"):
        fabric.render_route_reflector(b, rr_ip="fd00:3::1", router_id="10.3.0.1")


def test_a_template_of_your_own_that_fails_is_an_error_naming_it(tmp_path):
    # Written for the variables of before IPv6 (a "tors" list at the top level).
    (tmp_path / "core.conf.j2").write_text("{% for t in tors %}{{ t }}{% endfor %}\n")
    with pytest.raises(fabric.RenderError, match=r"core\.conf\.j2: 'tors' is undefined.*"
                                                 r"templates get: .*families"):
        fabric.render_core(name="core", router_id="10.0.0.1", local_as=65000,
                           tors=[("10.0.1.2", 65101)], template_dir=tmp_path)
