"""The route manager against a state fake of the kernel's main table.

The fake answers as the kernel does: a create (NLM_F_EXCL) where any route to the prefix
exists is refused with EEXIST, a delete only removes a route of the protocol it names, and
``fail`` makes it refuse a prefix with a given errno.  It counts what the manager sends per
prefix, so tests can tell a conflict that is left alone from one that is retried.
"""

import errno
import ipaddress
import logging
import os
import socket
import struct
import types
from collections import Counter

import pytest

from felix_py.calc.store import Store
from felix_py.dataplane.links import LinkInfo, LinkMonitor, LinksSynced, LinkUpdate, Links
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from felix_py.dataplane import netlink as nl
from felix_py.dataplane.netlink import Route
from felix_py.dataplane.routes import RouteManager
from policy.testing import Feeder

PROTO = 98
H = "host-a"


class FakeNetlink:
    def __init__(self):
        self.table: dict[str, tuple[int, Route]] = {}      # dst -> (protocol, route)
        self.fail: dict[str, int] = {}
        self.sent: Counter = Counter()                       # (op, dst) -> messages

    def dump_routes(self, proto):
        return {dst: r for dst, (p, r) in self.table.items() if p == proto}

    def route_holders(self, dsts):
        return {d: f"protocol {self.table[d][0]}" for d in dsts if d in self.table}

    def route_message(self, op, route, proto):
        for gw in route.gateways if op != "delete" else ():
            nl._gateway(gw)         # the real encoder's check of a link-local gateway's link
        return 0, b""

    def neigh_message(self, op, ifindex, ip, mac):
        return 0, b""

    def batch(self, msgs):
        failed = {}
        for _seq, _data, tag in msgs:
            if isinstance(tag[1], Route):
                op, route = tag
                self.sent[(op, route.dst)] += 1
                code = self.fail.get(route.dst) or self._route(op, route)
                if code:
                    failed[tag] = code
        return failed

    def _route(self, op, route):
        held = self.table.get(route.dst)
        if op == "create" and held:
            return errno.EEXIST
        if op == "delete":
            if not held or held[0] != PROTO:
                return errno.ESRCH
            del self.table[route.dst]
        else:
            self.table[route.dst] = (PROTO, route)
        return 0

    def close(self):
        pass


class FakeWatch:
    """ConflictWatch without its socket: ``report`` is what a route delete event does."""

    def __init__(self):
        self.watched: set[str] = set()
        self._freed: set[str] = set()

    def watch(self, dsts):
        self.watched = set(dsts)

    def report(self, dsts):
        self._freed |= set(dsts) & self.watched

    def take_freed(self):
        out, self._freed = self._freed, set()
        return out

    def close(self):
        self.watched = set()


LINKS = {"up6": 6, "up7": 7}        # the links of the fake kernel, for zoned gateways


def _if_nametoindex(name):
    if name not in LINKS:
        raise OSError(errno.ENODEV, "No such device")
    return LINKS[name]


@pytest.fixture
def kernel(monkeypatch):
    monkeypatch.setattr(nl.socket, "if_nametoindex", _if_nametoindex)
    return FakeNetlink()


@pytest.fixture
def watch():
    return FakeWatch()


@pytest.fixture
def world(kernel, watch):
    """(manager, feeder, apply): apply() hands the store's changes over and applies."""
    store, links = Store(H), Links()
    for i in range(1, 4):
        links.apply(LinkUpdate(f"cali{i}", LinkInfo(10 + i, f"cali{i}", True, None)))
    mgr = RouteManager(PROTO, netlink=kernel, watch=watch)
    feed = Feeder(store)

    def apply():
        mgr.on_changes(store, store.drain(), links)
        mgr.apply()
    return mgr, feed, apply


def workload(feed, name, iface, ip):
    return feed.endpoint(H, name, {"name": iface, "ipv4_nets": [f"{ip}/32"]})


def ours(kernel, dst):
    held = kernel.table.get(dst)
    return held is not None and held[0] == PROTO


def test_a_foreign_route_is_left_alone_reported_once_and_not_retried(world, kernel, watch,
                                                                       caplog):
    mgr, feed, apply = world
    kernel.table["10.65.0.1/32"] = (4, Route("10.65.0.1/32", oif=99, scope="link"))
    w1 = workload(feed, "w1", "cali1", "10.65.0.1")
    w2 = workload(feed, "w2", "cali2", "10.65.0.2")
    with caplog.at_level(logging.WARNING):
        apply()                                     # no DataplaneError: nothing to retry
        for _ in range(5):
            mgr.apply()
        workload(feed, "w3", "cali3", "10.65.0.3")  # an unrelated change
        apply()
    assert kernel.table["10.65.0.1/32"][0] == 4, "the foreign route was overwritten"
    assert ours(kernel, "10.65.0.2/32") and ours(kernel, "10.65.0.3/32")
    assert kernel.sent[("create", "10.65.0.1/32")] == 1
    warnings = [r.getMessage() for r in caplog.records if "10.65.0.1/32" in r.getMessage()]
    assert len(warnings) == 1 and "protocol 4" in warnings[0]
    state, reason = mgr.endpoint_problems()[w1]
    assert state == "error" and "10.65.0.1/32" in reason and "protocol 4" in reason
    assert w2 not in mgr.endpoint_problems()
    assert set(mgr.conflicts) == {"10.65.0.1/32"} and watch.watched == {"10.65.0.1/32"}


def test_the_foreign_route_deleted_lets_ours_in(world, kernel, watch):
    mgr, feed, apply = world
    kernel.table["10.65.0.1/32"] = (4, Route("10.65.0.1/32", oif=99, scope="link"))
    w1 = workload(feed, "w1", "cali1", "10.65.0.1")
    apply()
    del kernel.table["10.65.0.1/32"]
    watch.report({"10.65.0.1/32"})                  # the route delete event
    mgr.apply()
    assert kernel.table["10.65.0.1/32"] == (PROTO, Route("10.65.0.1/32", oif=11, scope="link"))
    assert kernel.sent[("create", "10.65.0.1/32")] == 2
    assert mgr.conflicts == {} and w1 not in mgr.endpoint_problems()
    assert watch.watched == set()


def test_a_spurious_free_retries_once_without_logging_again(world, kernel, watch, caplog):
    mgr, feed, apply = world
    kernel.table["10.65.0.1/32"] = (4, Route("10.65.0.1/32", oif=99, scope="link"))
    workload(feed, "w1", "cali1", "10.65.0.1")
    with caplog.at_level(logging.WARNING):
        apply()
        watch.report({"10.65.0.1/32"})          # e.g. events lost: everything is tried again
        mgr.apply()
        mgr.apply()
    assert kernel.sent[("create", "10.65.0.1/32")] == 2
    assert sum("10.65.0.1/32" in r.getMessage() for r in caplog.records) == 1
    assert "10.65.0.1/32" in mgr.conflicts


def test_a_change_of_the_wanted_route_is_tried_again(world, kernel):
    mgr, feed, apply = world
    kernel.table["10.65.0.1/32"] = (4, Route("10.65.0.1/32", oif=99, scope="link"))
    workload(feed, "w1", "cali1", "10.65.0.1")
    apply()
    workload(feed, "w1", "cali2", "10.65.0.1")      # moved to another interface
    apply()
    assert kernel.sent[("create", "10.65.0.1/32")] == 2
    assert kernel.sent[("replace", "10.65.0.1/32")] == 0
    assert kernel.table["10.65.0.1/32"][0] == 4 and mgr.actual == {}
    assert mgr.conflicts["10.65.0.1/32"].route.oif == 12
    feed.remove_endpoint(H, "w1")
    apply()
    assert mgr.conflicts == {} and kernel.table["10.65.0.1/32"][0] == 4


def test_a_conflicting_learned_route_has_no_endpoint_and_is_only_logged(world, kernel,
                                                                          caplog):
    mgr, feed, apply = world
    kernel.table["0.0.0.0/0"] = (3, Route("0.0.0.0/0", gateways=("192.0.2.2",)))
    mgr.set_source_routes("bgp", {"0.0.0.0/0": Route("0.0.0.0/0", gateways=("10.1.0.1",))})
    with caplog.at_level(logging.WARNING):
        apply()
    assert kernel.table["0.0.0.0/0"][0] == 3 and "0.0.0.0/0" in mgr.conflicts
    assert mgr.endpoint_problems() == {}
    assert any("0.0.0.0/0" in r.getMessage() for r in caplog.records)


def test_other_errors_keep_being_retried_on_backoff(world, kernel):
    mgr, feed, apply = world
    w1 = workload(feed, "w1", "cali1", "10.65.0.1")
    kernel.fail["10.65.0.1/32"] = errno.ENODEV
    with pytest.raises(DataplaneError, match="10.65.0.1/32: ENODEV"):
        apply()
    assert mgr.endpoint_problems()[w1] == ("error", "route 10.65.0.1/32: ENODEV")
    with pytest.raises(DataplaneError):
        mgr.apply()                                 # still dirty: the agent's retry works
    del kernel.fail["10.65.0.1/32"]
    mgr.apply()
    assert ours(kernel, "10.65.0.1/32") and mgr.endpoint_problems() == {}
    assert mgr.conflicts == {}


def test_a_holder_gone_before_it_could_be_named_is_an_ordinary_failure(world, kernel, watch):
    mgr, feed, apply = world
    workload(feed, "w1", "cali1", "10.65.0.1")
    kernel.fail["10.65.0.1/32"] = errno.EEXIST      # refused, yet no route holds the prefix
    with pytest.raises(DataplaneError, match="EEXIST"):
        apply()
    assert mgr.conflicts == {} and watch.watched == set()
    del kernel.fail["10.65.0.1/32"]
    mgr.apply()
    assert ours(kernel, "10.65.0.1/32")


def test_an_ipv6_device_route_reads_back_as_the_link_route_written():
    """The kernel keeps no scope for IPv6 routes and dumps every one as universe; read as
    such, every IPv6 workload route would differ from the wanted one and be rewritten at
    each restart."""
    def dumped(*attrs):
        body = nl._RTMSG.pack(socket.AF_INET6, 128, 0, 0, nl.RT_TABLE_MAIN, PROTO,
                              nl.RT_SCOPE_UNIVERSE, nl.RTN_UNICAST, 0)
        return body + b"".join(nl._attr(k, v) for k, v in attrs)
    dst = (nl.RTA_DST, ipaddress.ip_address("fd00::5").packed)
    oif = (nl.RTA_OIF, struct.pack("=i", 7))
    gw = (nl.RTA_GATEWAY, ipaddress.ip_address("fd00::1").packed)
    assert nl.parse_route(dumped(dst, oif), PROTO) == \
        (PROTO, Route("fd00::5/128", oif=7, scope="link"))
    assert nl.parse_route(dumped(dst, oif, gw), PROTO) == \
        (PROTO, Route("fd00::5/128", oif=7, gateways=("fd00::1",)))


@pytest.mark.parametrize("route", [
    Route("10.65.0.5/32", oif=7, scope="link"),
    Route("0.0.0.0/0", gateways=("10.0.0.1", "10.0.1.1")),
    Route("10.96.0.0/12", kind="blackhole"),
    Route("fd00::5/128", oif=7, gateways=("fd00::1",)),
    Route("::/0", gateways=("fd00::1", "fd00::2")),
])
def test_a_route_message_reads_back_as_the_route_written(route):
    _, msg = _message(route)
    assert nl.parse_route(msg[nl._HDR.size:], PROTO) == (PROTO, route)


def test_a_link_local_gateway_goes_out_on_its_link_and_reads_back_so():
    route = Route("::/0", gateways=("fe80::1%lo",))
    _, msg = _message(route)
    _, read = nl.parse_route(msg[nl._HDR.size:], PROTO)
    assert read == Route("::/0", oif=socket.if_nametoindex("lo"), gateways=("fe80::1%lo",))
    assert route.is_in(read)
    ecmp = Route("::/0", gateways=("fe80::1%lo", "fd00::2"))
    _, msg = _message(ecmp)
    _, read = nl.parse_route(msg[nl._HDR.size:], PROTO)
    assert read.gateways == ("fd00::2", "fe80::1%lo") and ecmp.is_in(read)


def test_a_route_through_gateways_is_the_kernels_whatever_interface_and_order_it_adds():
    want = Route("0.0.0.0/0", gateways=("10.9.0.1", "10.10.0.1"))
    assert want.is_in(Route("0.0.0.0/0", oif=None, gateways=("10.10.0.1", "10.9.0.1")))
    assert Route("0.0.0.0/0", gateways=("10.9.0.1",)).is_in(
        Route("0.0.0.0/0", oif=3, gateways=("10.9.0.1",)))
    assert not want.is_in(Route("0.0.0.0/0", gateways=("10.9.0.1",)))
    assert not want.is_in(None)
    workload = Route("10.65.0.1/32", oif=7, scope="link")
    assert workload.is_in(workload) and not workload.is_in(workload._replace(oif=8))


@pytest.mark.parametrize("dst", ["10.65.0.5/24", "10.0.0.0/33", "10.0.0.0/x", "10.0.0.0/",
                                 "300.1.1.1/32", "fd00::1/64", "cali0"])
def test_a_route_to_something_that_is_not_a_network_is_refused(dst):
    with pytest.raises(ValueError, match="not"):
        _message(Route(dst, oif=7))


def _message(route):
    sock = nl.Netlink()
    try:
        return sock.route_message("create", route, PROTO)
    finally:
        sock.close()


def test_a_link_message_gives_its_name_state_and_mac_whatever_the_attribute_order():
    def link(flags, *attrs):
        return nl._IFINFO.pack(0, 1, 7, flags, 0) + b"".join(nl._attr(k, v) for k, v in attrs)
    name = (nl.IFLA_IFNAME, b"cali7\0")
    mac = (nl.IFLA_ADDRESS, bytes.fromhex("eeeeeeeeee01"))
    mtu = (4, struct.pack("=I", 1500))
    assert nl.parse_link(link(nl.IFF_UP, mtu, name, mtu, mac, mtu)) == \
        (7, "cali7", True, "ee:ee:ee:ee:ee:01")
    assert nl.parse_link(link(0, mac, mtu, name)) == (7, "cali7", False, "ee:ee:ee:ee:ee:01")
    assert nl.parse_link(link(0, name, mtu)) == (7, "cali7", False, None)   # e.g. a tun device
    assert nl.parse_link(link(0, (nl.IFLA_ADDRESS, b"\0" * 16), name)) == (7, "cali7", False, None)
    assert nl.parse_link(link(0, mac, mtu)) is None


def test_a_complete_link_dump_replaces_the_table_and_names_what_changed():
    links = Links()
    a, b = LinkInfo(11, "cali1", True, None), LinkInfo(12, "cali2", True, None)
    assert links.replace((a, b)) == {"cali1", "cali2"} and links.synced
    # After a monitor restart: cali1 went meanwhile, cali2 was set down, cali3 appeared.
    c = LinkInfo(13, "cali3", True, None)
    assert links.replace((LinkInfo(12, "cali2", False, None), c)) == {"cali1", "cali2", "cali3"}
    assert links.get("cali1") is None and links.get("cali2").up is False
    assert links.names() == {"cali2", "cali3"}
    assert links.replace((LinkInfo(12, "cali2", False, None), c)) == set()


class ScriptedSocket(nl.Netlink):
    """A link-event socket whose reads are scripted: each chunk is what one read returns,
    as (type, sequence number, payload); sequence 1 is the dump's."""

    def __init__(self, chunks):
        self._seq, self._chunks = 0, list(chunks)
        self._idle = os.pipe()
        self.sock = types.SimpleNamespace(send=lambda msg: None, close=lambda: None,
                                          fileno=lambda: self._idle[0])

    def _recv(self):
        yield from self._chunks.pop(0)

    def close(self):
        for fd in self._idle:
            os.close(fd)


def _link(index, name, up=True):
    return nl._IFINFO.pack(0, 1, index, nl.IFF_UP if up else 0, 0) + \
        nl._attr(nl.IFLA_IFNAME, name.encode() + b"\0")


def test_links_added_and_removed_in_the_middle_of_the_dump_are_not_lost():
    """Events are read interleaved with the dump's answers; the dump of cali1 came before
    cali1 went, and cali9 came after the dump had passed it."""
    sock = ScriptedSocket([
        [(nl.RTM_NEWLINK, 1, _link(11, "cali1")), (nl.RTM_NEWLINK, 0, _link(19, "cali9"))],
        [(nl.RTM_DELLINK, 0, _link(11, "cali1")), (nl.RTM_NEWLINK, 1, _link(12, "cali2"))],
        [(nl.NLMSG_DONE, 1, b"")],
    ])
    posted, links = [], Links()
    monitor = LinkMonitor(posted.append)
    monitor._sock = sock

    def post(msg):
        posted.append(msg)
        monitor._stop.set()              # the dump is in: end the event loop after it
    monitor.post = post
    try:
        monitor._run()
    finally:
        sock.close()
    assert isinstance(posted[0], LinksSynced)
    links.replace(posted[0].links)
    for upd in posted[1:]:
        links.apply(upd)
    assert links.names() == {"cali2", "cali9"}
    assert links.get("cali9").index == 19


def test_a_refresh_puts_back_a_route_deleted_from_outside_and_leaves_a_newcomer_alone(
        world, kernel):
    mgr, feed, apply = world
    workload(feed, "w1", "cali1", "10.65.0.1")
    w2 = workload(feed, "w2", "cali2", "10.65.0.2")
    apply()
    # Someone deletes both our routes, and another route takes w2's prefix.
    del kernel.table["10.65.0.1/32"], kernel.table["10.65.0.2/32"]
    kernel.table["10.65.0.2/32"] = (4, Route("10.65.0.2/32", oif=99, scope="link"))
    mgr.apply()
    assert "10.65.0.1/32" not in kernel.table           # nothing tells the agent...
    mgr.on_message(DataplaneRefresh())                  # ...until it reads the kernel back
    mgr.apply()
    assert ours(kernel, "10.65.0.1/32")
    assert kernel.table["10.65.0.2/32"][0] == 4, "the newcomer was overwritten"
    state, reason = mgr.endpoint_problems()[w2]
    assert state == "error" and "protocol 4" in reason


def test_a_refresh_whose_read_fails_keeps_what_the_announcer_relies_on(world, kernel):
    mgr, feed, apply = world
    workload(feed, "w1", "cali1", "10.65.0.1")
    apply()

    def broken(proto):
        raise DataplaneError("netlink dump: No buffer space available (errno 105)")
    kernel.dump_routes = broken
    mgr.on_message(DataplaneRefresh())
    with pytest.raises(DataplaneError):
        mgr.apply()
    assert "10.65.0.1/32" in mgr.actual            # not "no routes": nothing withdrawn
    del kernel.dump_routes                          # the next read works
    mgr.apply()
    assert "10.65.0.1/32" in mgr.actual and ours(kernel, "10.65.0.1/32")


def test_workload_routes_wait_for_the_policy_skeleton_and_no_route_is_lost_meanwhile(
        world, kernel):
    mgr, feed, apply = world
    w1 = workload(feed, "w1", "cali1", "10.65.0.1")
    apply()
    ready = False
    mgr.gate = lambda: ready                        # the guard's iptables-restore fails
    w2 = workload(feed, "w2", "cali2", "10.65.0.2")
    mgr.set_source_routes("bgp", {"0.0.0.0/0": Route("0.0.0.0/0", gateways=("10.1.0.1",))})
    apply()
    assert "10.65.0.2/32" not in kernel.table       # not routed unpoliced
    assert ours(kernel, "10.65.0.1/32")             # what was there stays
    assert ours(kernel, "0.0.0.0/0")                # learned routes are not held
    state, reason = mgr.endpoint_problems()[w2]
    assert state == "error" and "iptables chains" in reason and w1 not in mgr.endpoint_problems()
    ready = True                                    # the guard's retry succeeds
    mgr.apply()
    assert ours(kernel, "10.65.0.2/32") and w2 not in mgr.endpoint_problems()


def test_a_route_whose_gateway_link_is_gone_fails_alone(world, kernel):
    """A learned route through a link-local next hop whose interface went away cannot even
    be written as a message; the other changes of the batch go in all the same."""
    mgr, feed, apply = world
    workload(feed, "w1", "cali1", "10.65.0.1")
    mgr.set_source_routes("bgp", {"::/0": Route("::/0", gateways=("fe80::1%gone0",)),
                                  "fd20::/64": Route("fd20::/64", gateways=("fe80::1%up6",))})
    with pytest.raises(DataplaneError, match="no interface 'gone0'"):
        apply()
    assert ours(kernel, "10.65.0.1/32") and ours(kernel, "fd20::/64")
    assert not ours(kernel, "::/0")

