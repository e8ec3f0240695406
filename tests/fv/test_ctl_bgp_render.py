"""felixctl bgp render with IPv6 neighbours and reflectors, against a real etcd.

A dual-stack ToR, core and route reflector rendered from IPv6 peers, addresses, reflectors
and pools that felixctl itself stored, checked by BIRD's own parser and session by
session.  The command line alone (neighbour parsing, refusals before any datastore is
opened) is tested in tests/unit/test_ctl_neighbors.py, which needs neither root nor etcd.
"""

import pytest
from birdtext import bird_parses, block, sessions

from bgp import fabric
from felix_py.datastore.keys import KeyLayout


@pytest.fixture
def fabric_ctl(ctl):
    """Rack 1 (ToR 10.1.0.1 and fd10:1::1, AS 65101): h1 dual-stack with a session of its
    own in each family (password "six" over IPv6); h2 peers with the ToR's IPv6 address
    without an ip_addr_v6 of its own (accepted from the link's prefix).  Both are clients
    of cluster 1.0.0.1, whose reflectors are 10.3.0.1 and fd00:3::1 (one dual-stack BIRD)
    and fd00:3::2 (IPv6 only)."""
    ctl("pool", "add", "10.65.0.0/16")
    ctl("pool", "add", "fd00:10:65::/48")
    ctl("config", "set", "BgpHoldTimeSecs", "30")
    for host, v4 in (("h1", "10.1.0.11"), ("h2", "10.1.0.12")):
        ctl("bgp", "address", v4, "--host", host)
        ctl("bgp", "peer", "add", "10.1.0.1", "--as", "65101", "--host", host)
        ctl("bgp", "cluster-id", "1.0.0.1", "--host", host)
    ctl("bgp", "address", "fd10:1::11", "--host", "h1")
    ctl("bgp", "peer", "add", "fd10:1::1", "--as", "65101", "--host", "h1", "--password", "six")
    ctl("bgp", "peer", "add", "fd10:1::1", "--as", "65101", "--host", "h2")
    for rr in ("10.3.0.1", "fd00:3::1", "fd00:3::2"):
        ctl("bgp", "rr", "add", rr, "--cluster-id", "1.0.0.1")
    return ctl


def stored(ctl):
    return fabric.load(ctl.client, KeyLayout(ctl.prefix))


TOR = ["bgp", "render", "tor", "--name", "tor1", "--router-id", "10.1.0.1", "--as", "65101",
       "--address", "10.1.0.1/24", "--address", "fd10:1::1/64"]


def test_dual_stack_tor_from_the_command_line(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    text = ctl(*TOR, "--uplink", "10.0.1.1:65000", "--uplink", "[fd00:0:1::1]:65000:up:six")
    bird_parses(tmp_path, text)
    s = sessions(text)
    assert list(s) == ["host_h1", "host_h2", "uplink_10_0_1_1", "host6_h1",
                       "rack6_fd10_1___64", "uplink_fd00_0_1__1"]
    assert {p: ch for p, (_, ch) in s.items()} == {
        "host_h1": ["ipv4"], "host_h2": ["ipv4"], "uplink_10_0_1_1": ["ipv4"],
        "host6_h1": ["ipv6"], "rack6_fd10_1___64": ["ipv6"], "uplink_fd00_0_1__1": ["ipv6"]}
    # The IPv6 uplink: its address out of the brackets, the password with its ':'.
    up6 = s["uplink_fd00_0_1__1"][0]
    assert "neighbor fd00:0:1::1 as 65000;" in up6 and 'password "up:six";' in up6
    assert "import filter from_uplinks6;" in up6 and "export filter to_uplinks6;" in up6
    assert "neighbor 10.0.1.1 as 65000;" in s["uplink_10_0_1_1"][0]
    assert "password" not in s["uplink_10_0_1_1"][0]
    # The rack, from the datastore: h1's own IPv6 session with its peer_v6 password, h2
    # (no ip_addr_v6) from the link's prefix; IPv6 pool prefixes up, ::/0 down.
    assert "neighbor fd10:1::11 as 64512;" in s["host6_h1"][0]
    assert 'password "six";' in s["host6_h1"][0]
    assert "neighbor range fd10:1::/64 as 64512;" in s["rack6_fd10_1___64"][0]
    assert "define WORKLOAD_NETS6 = [ fd00:10:65::/48+ ];" in text
    assert "    if net = ::/0 then accept;\n    reject;\n" == block(text, "filter to_hosts6")
    assert "hold time 30;" in s["host6_h1"][0]
    # Exactly what the renderer makes of the same neighbours.
    settings, pools = stored(ctl)
    assert text == fabric.render_tor(
        settings, pools, name="tor1", router_id="10.1.0.1", local_as=65101,
        addresses=["10.1.0.1/24", "fd10:1::1/64"],
        uplinks=[("10.0.1.1", 65000), ("fd00:0:1::1", 65000, "up:six")], hold_time=30)


def test_ipv4_neighbours_render_as_before(fabric_ctl):
    """IP:AS:PASSWORD keeps its meaning: the password is everything after the AS."""
    ctl = fabric_ctl
    text = ctl("bgp", "render", "tor", "--name", "tor1", "--router-id", "10.1.0.1", "--as",
               "65101", "--address", "10.1.0.1/24", "--uplink", "10.0.1.1:65000:pa:ss")
    assert 'password "pa:ss";' in sessions(text)["uplink_10_0_1_1"][0]
    assert "ipv6" not in text
    settings, pools = stored(ctl)
    assert text == fabric.render_tor(settings, pools, name="tor1", router_id="10.1.0.1",
                                     local_as=65101, addresses=["10.1.0.1/24"],
                                     uplinks=[("10.0.1.1", 65000, "pa:ss")], hold_time=30)


def test_dual_stack_core_from_the_command_line(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    path = tmp_path / "core.conf"
    assert f"Wrote {path}" in ctl("bgp", "render", "core", "--name", "core", "--router-id",
                                  "10.0.0.1", "--as", "65000", "--tor", "10.0.1.2:65101",
                                  "--tor", "[FD00:0:1:0::2]:65101:up:six", "--file", str(path))
    text = path.read_text()
    bird_parses(tmp_path, text, "core-checked.conf")
    s = sessions(text)
    assert {p: ch for p, (_, ch) in s.items()} == {"tor_10_0_1_2": ["ipv4"],
                                                   "tor_fd00_0_1__2": ["ipv6"]}
    tor6 = s["tor_fd00_0_1__2"][0]
    assert "neighbor fd00:0:1::2 as 65101;" in tor6 and 'password "up:six";' in tor6
    assert "export filter to_tors6;" in tor6 and "hold time 30;" in tor6
    assert "protocol static default_route6 {\n    ipv6;\n    route ::/0 blackhole;\n}" in text


def test_dual_stack_and_ipv6_only_reflectors(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    dual = ctl("bgp", "render", "rr", "10.3.0.1", "--ipv6", "fd00:3::1")
    bird_parses(tmp_path, dual)
    s = sessions(dual)
    assert {p: ch for p, (_, ch) in s.items()} == {
        "host_h1": ["ipv4"], "host_h2": ["ipv4"], "host6_h1": ["ipv6"],
        "rr_fd00_3__2": ["ipv6"]}
    assert "neighbor fd10:1::11 as 64512;" in s["host6_h1"][0]
    assert "rr client;" in s["host6_h1"][0] and "rr cluster id 1.0.0.1;" in s["host6_h1"][0]
    assert "neighbor fd00:3::2 as 64512;" in s["rr_fd00_3__2"][0]
    assert "router id 10.3.0.1;" in dual
    assert "without ip_addr_v6, so without an IPv6 session here:\n# h2\n" in dual
    assert "router id 10.3.0.9;" in ctl("bgp", "render", "rr", "10.3.0.1", "--ipv6",
                                        "fd00:3::1", "--router-id", "10.3.0.9")
    only6 = ctl("bgp", "render", "rr", "fd00:3::2", "--router-id", "10.3.0.2")
    bird_parses(tmp_path, only6)
    s = sessions(only6)
    assert {p: ch for p, (_, ch) in s.items()} == {"host6_h1": ["ipv6"],
                                                   "rr_fd00_3__1": ["ipv6"]}
    assert "router id 10.3.0.2;" in only6 and "ipv4" not in only6


def test_missing_router_id_and_reflector_keys(fabric_ctl, tmp_path):
    ctl = fabric_ctl
    out = tmp_path / "rr.conf"
    err = ctl.fails("bgp", "render", "rr", "fd00:3::2", "--file", str(out))
    assert "the IPv6-only route reflector fd00:3::2 needs --router-id" in err
    assert "e.g. --router-id 10.255.0.1" in err
    # The renderer's own refusal (a reflector key that is not there) comes out the same way.
    err = ctl.fails("bgp", "render", "rr", "10.3.0.1", "--ipv6", "fd00:3::9", "--file",
                    str(out))
    assert "no route reflector fd00:3::9 in the datastore" in err
    assert "/calico/bgp/v1/rr_v6/fd00:3::9" in err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--uplink", "fd00:0:1::1:65000"], "--uplink 'fd00:0:1::1:65000' is not IP:AS[:PASSWORD] "
                                        "or [IPV6]:AS[:PASSWORD]: an IPv6 address goes in "
                                        "brackets (its ':' would be read as separators); "
                                        "write [fd00:0:1::1]:65000"),
    (["--uplink", "[fd00:0:1::1]:70000000000"], "--uplink '[fd00:0:1::1]:70000000000' is not "
                                                "[IPV6]:AS[:PASSWORD]: AS 70000000000 is out "
                                                "of range 1-4294967295"),
    (["--uplink", "[fd00:0:1::1]:65000:"], "the password after the AS is empty; write "
                                           "[fd00:0:1::1]:65000 for a session without one"),
    (["--uplink", "[fd00:0:1::zz]:65000"], "'fd00:0:1::zz' is not an IPv6 address"),
    (["--uplink", "[fe80::1]:65000:secret"], "--uplink '[fe80::1]:65000:****': fe80::1 is "
                                             "link-local"),
])
def test_bad_neighbours_render_nothing(fabric_ctl, tmp_path, args, message):
    out = tmp_path / "tor.conf"
    err = fabric_ctl.fails(*TOR, "--uplink", "10.0.1.1:65000", *args, "--file", str(out))
    assert message in err and "secret" not in err
    assert not out.exists()
