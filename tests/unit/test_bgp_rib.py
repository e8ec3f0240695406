"""bgp.rib: peer sessions, the import filter per mode, and the routes they make."""

from bgp.config import ALL_BUT_OWN, DEFAULT_ONLY
from bgp.rib import CONNECT, ERROR, ESTABLISHED, IDLE, Rib, accepts


def up(rib, *peers):
    for p in peers:
        rib.session(p, "connected", 1.0)
        rib.session(p, "up", 2.0, local="10.1.0.11")


def test_import_filter_per_mode():
    own = frozenset({"10.65.0.1/32"})
    me = frozenset({"10.1.0.11"})
    assert accepts(DEFAULT_ONLY, "0.0.0.0/0", "10.1.0.1", own, me)
    assert accepts(DEFAULT_ONLY, "::/0", "fe80::1", own, me)
    assert not accepts(DEFAULT_ONLY, "10.66.0.1/32", "10.1.0.1", own, me)
    assert accepts(ALL_BUT_OWN, "10.66.0.1/32", "10.1.0.12", own, me)
    assert accepts(ALL_BUT_OWN, "0.0.0.0/0", "10.1.0.12", own, me)
    assert not accepts(ALL_BUT_OWN, "10.65.0.1/32", "10.1.0.12", own, me)     # our own
    assert not accepts(ALL_BUT_OWN, "10.66.0.1/32", "10.1.0.11", own, me)     # via us
    # Prefixes that cover the host's own address are routes like any other: an aggregate
    # loses to the connected route by longest match, and the network the host sits on is
    # refused by the kernel (NLM_F_EXCL), never installed over the connected route.
    assert accepts(ALL_BUT_OWN, "10.0.0.0/8", "10.1.0.1", own, me)
    assert accepts(ALL_BUT_OWN, "10.1.0.0/24", "10.1.0.1", own, me)


def test_downward_default_ecmp_and_peer_down_keeps_the_other():
    rib = Rib(DEFAULT_ONLY)
    rib.set_peers({"10.1.0.1": "tor", "10.2.0.1": "tor"}, {}, 0.0)
    up(rib, "10.1.0.1", "10.2.0.1")
    assert rib.peers["10.1.0.1"].state == ESTABLISHED and rib.peers["10.1.0.1"].since == 2.0
    rib.update("10.1.0.1", {"0.0.0.0/0": "10.1.0.1"}, ())
    rib.update("10.2.0.1", {"0.0.0.0/0": "10.2.0.1", "10.66.0.0/24": "10.2.0.1"}, ())
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1", "10.2.0.1")}
    assert rib.counts("10.2.0.1") == (2, 1)            # received, accepted
    rib.session("10.2.0.1", "down", 5.0, reason="hold timer expired")
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1",)}
    p = rib.peers["10.2.0.1"]
    assert (p.state, p.since, p.info) == (IDLE, 5.0, "hold timer expired")
    assert rib.counts("10.2.0.1") == (0, 0)


def test_a_flood_of_routes_in_downward_default_is_counted_not_installed():
    rib = Rib(DEFAULT_ONLY)
    rib.set_peers({"10.1.0.1": "tor"}, {}, 0.0)
    up(rib, "10.1.0.1")
    flood = {f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32": "10.1.0.1"
             for i in range(10_000)}
    rib.update("10.1.0.1", {**flood, "0.0.0.0/0": "10.1.0.1"}, ())
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1",)}
    assert rib.counts("10.1.0.1") == (10_001, 1)


def test_default_paths_are_capped():
    rib = Rib(DEFAULT_ONLY, max_default_paths=2)
    peers = {f"10.1.0.{i}": "tor" for i in range(1, 5)}
    rib.set_peers(peers, {}, 0.0)
    up(rib, *peers)
    for ip in peers:
        rib.update(ip, {"0.0.0.0/0": ip}, ())
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1", "10.1.0.2")}


def test_reflector_mode_installs_all_but_own():
    rib = Rib(ALL_BUT_OWN)
    rib.set_peers({"10.3.0.1": "route-reflector"}, {}, 0.0)
    rib.set_own(frozenset({"10.66.1.1/32"}), frozenset({"10.3.0.11"}))
    up(rib, "10.3.0.1")
    rib.update("10.3.0.1", {"10.66.1.1/32": "10.3.0.11", "10.66.2.1/32": "10.3.0.12",
                            "10.66.3.0/26": "10.3.0.13", "10.66.4.1/32": "10.3.0.11"}, ())
    assert rib.kernel_routes() == {"10.66.2.1/32": ("10.3.0.12",),
                                   "10.66.3.0/26": ("10.3.0.13",)}
    assert rib.counts("10.3.0.1") == (4, 2)            # our own prefix, and one via us
    rib.update("10.3.0.1", {}, ["10.66.3.0/26"])
    assert rib.kernel_routes() == {"10.66.2.1/32": ("10.3.0.12",)}
    # An endpoint moves here: its prefix is now ours, the learned route goes.
    rib.set_own(frozenset({"10.66.1.1/32", "10.66.2.1/32"}), frozenset({"10.3.0.11"}))
    assert rib.kernel_routes() == {}


def test_exabgp_restart_keeps_routes_stale_until_end_of_rib_or_timeout():
    rib = Rib(DEFAULT_ONLY)
    rib.set_peers({"10.1.0.1": "tor", "10.2.0.1": "tor"}, {}, 0.0)
    up(rib, "10.1.0.1", "10.2.0.1")
    rib.update("10.1.0.1", {"0.0.0.0/0": "10.1.0.1"}, ())
    rib.update("10.2.0.1", {"0.0.0.0/0": "10.2.0.1"}, ())
    rib.process_stopped(now=10.0, restart_time=120)
    assert all(p.state == IDLE for p in rib.peers.values())
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1", "10.2.0.1")}
    # tor1 comes back and re-sends everything: its stale copy is replaced.
    up(rib, "10.1.0.1")
    rib.update("10.1.0.1", {"0.0.0.0/0": "10.1.0.1"}, ())
    rib.end_of_rib("10.1.0.1")
    assert rib.peers["10.1.0.1"].stale == {}
    # tor2 never comes back: its route goes when the restart time runs out.
    assert rib.expire(100.0) == 130.0
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1", "10.2.0.1")}
    assert rib.expire(131.0) is None
    assert rib.kernel_routes() == {"0.0.0.0/0": ("10.1.0.1",)}


def test_refused_peers_are_in_error_and_get_no_routes():
    rib = Rib(DEFAULT_ONLY)
    rib.set_peers({"10.1.0.1": "tor"}, {"10.1.0.2": "the password must be printable ASCII"},
                  0.0)
    rib.session("10.1.0.2", "up", 1.0)
    rib.update("10.1.0.2", {"0.0.0.0/0": "10.1.0.2"}, ())
    assert rib.peers["10.1.0.2"].state == ERROR
    assert rib.kernel_routes() == {}
    rib.session("10.1.0.1", "connected", 1.0)
    assert rib.peers["10.1.0.1"].state == CONNECT
    # Unconfigured, the peer disappears.
    rib.set_peers({}, {}, 2.0)
    assert rib.peers == {}


def test_a_link_local_next_hop_names_the_link_its_peer_is_on():
    """IPv6 peers on the link may give their link-local address as the next hop; a route
    through it is only valid with its interface.  One whose link is unknown is left out."""
    links = {"fd10:7::1": "up6", "fd10:8::1": "up7"}
    rib = Rib(DEFAULT_ONLY, link_of=links.get)
    rib.set_peers({"fd10:7::1": "tor", "fd10:8::1": "tor", "fd10:9::1": "tor"}, {}, 0.0)
    up(rib, "fd10:7::1", "fd10:8::1", "fd10:9::1")
    rib.update("fd10:7::1", {"::/0": "fe80::1"}, ())
    rib.update("fd10:8::1", {"::/0": "fe80::1"}, ())       # the same address, another link
    rib.update("fd10:9::1", {"::/0": "fe80::9"}, ())       # no known link: unusable
    assert rib.kernel_routes() == {"::/0": ("fe80::1%up6", "fe80::1%up7")}


def test_a_relink_recomputes_only_routes_that_went_through_a_link_local_next_hop():
    links = {}
    rib = Rib(DEFAULT_ONLY, link_of=links.get)
    rib.set_peers({"fd10:7::1": "tor"}, {}, 0.0)
    up(rib, "fd10:7::1")
    rib.update("fd10:7::1", {"::/0": "fd10:7::1"}, ())
    assert rib.kernel_routes() == {"::/0": ("fd10:7::1",)}
    rib.relink()                    # no route depends on a link: nothing to recompute
    assert not rib.changed
    rib.update("fd10:7::1", {"::/0": "fe80::1"}, ())
    assert rib.kernel_routes() == {}                       # its link unknown: left out
    links["fd10:7::1"] = "up6"
    assert rib.kernel_routes() == {}                       # not looked up again unasked
    rib.relink()
    assert rib.changed and rib.kernel_routes() == {"::/0": ("fe80::1%up6",)}
