"""The interface manager's proxy NDP entries against a state fake of the kernel.

The fake holds proxy entries as (ifindex, address), refuses an address listed in ``fail``
with that errno, and answers ENODEV for an interface that is gone (whose entries the
kernel removed with it), as the kernel does.
"""

import errno

import pytest

from felix_py.calc.store import Changes, Store
from felix_py.dataplane.interfaces import GATEWAY_V6, InterfaceManager
from felix_py.dataplane.links import LinkInfo, LinkUpdate, Links
from felix_py.dataplane.manager import DataplaneError, DataplaneRefresh
from policy.testing import Feeder

H = "host-a"


class FakeNetlink:
    def __init__(self):
        self.proxies: set[tuple[int, str]] = set()
        self.gone: set[int] = set()
        self.fail: dict[str, int] = {}
        self.sent: list = []
        self.unreadable = False

    def link_up_message(self, index):
        return 0, b""

    def neigh_message(self, op, ifindex, ip, mac, proxy=False):
        assert proxy and mac is None
        return 0, b""

    def batch(self, msgs):
        failed = {}
        for _seq, _data, tag in msgs:
            if isinstance(tag, str):
                continue                    # a link set up
            self.sent.append(tag)
            op, (index, ip) = tag
            code = errno.ENODEV if index in self.gone else self.fail.get(ip)
            if not code and op == "delete" and (index, ip) not in self.proxies:
                code = errno.ENOENT
            if code:
                failed[tag] = code
            elif op == "replace":
                self.proxies.add((index, ip))
            else:
                self.proxies.discard((index, ip))
        return failed

    def dump_proxy_neighbours(self):
        if self.unreadable:
            raise OSError("netlink dump interrupted")
        return sorted(self.proxies)

    def remove_link(self, index):
        self.gone.add(index)
        self.proxies = {p for p in self.proxies if p[0] != index}


class FakeSysctl:
    def __init__(self):
        self.values: dict[str, str] = {}

    def write(self, path, value):
        self.values[path] = value


@pytest.fixture
def world():
    """(manager, kernel, feeder, links, apply); cali1 and cali2 exist."""
    store, links, kernel = Store(H), Links(), FakeNetlink()
    for i in (1, 2):
        links.apply(LinkUpdate(f"cali{i}", LinkInfo(10 + i, f"cali{i}", True, None)))
    mgr = InterfaceManager(netlink=kernel, sysctl=FakeSysctl())

    def apply():
        mgr.on_changes(store, store.drain(), links)
        mgr.apply()
    return mgr, kernel, Feeder(store), links, apply


def test_an_ipv6_endpoint_gets_a_proxy_entry_for_its_gateway_kept_in_line(world):
    mgr, kernel, feed, _links, apply = world
    ep = {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"], "ipv6_nets": ["fd00::1/128"]}
    feed.endpoint(H, "w1", ep)
    feed.endpoint(H, "w2", {"name": "cali2", "ipv4_nets": ["10.65.0.2/32"]})
    apply()
    assert kernel.proxies == {(11, GATEWAY_V6)}         # none for the IPv4-only endpoint
    assert mgr.sysctl.values["net/ipv6/conf/cali1/proxy_ndp"] == "1"
    assert mgr.sysctl.values["net/ipv6/neigh/cali1/proxy_delay"] == "0"

    feed.endpoint(H, "w1", {**ep, "ipv6_gateway": "fe80::1"})
    apply()
    assert kernel.proxies == {(11, "fe80::1")}

    feed.endpoint(H, "w1", {**ep, "state": "inactive"})
    apply()
    assert kernel.proxies == set()


def test_a_refused_entry_is_reported_and_retried_and_a_gone_link_forgotten(world):
    mgr, kernel, feed, links, apply = world
    w1 = feed.endpoint(H, "w1", {"name": "cali1", "ipv6_nets": ["fd00::1/128"]})
    kernel.fail[GATEWAY_V6] = errno.EPERM
    with pytest.raises(DataplaneError, match="proxy NDP entry"):
        apply()
    state, reason = mgr.endpoint_problems()[w1]
    assert state == "error" and GATEWAY_V6 in reason and "cali1" in reason

    del kernel.fail[GATEWAY_V6]
    mgr.on_changes(feed.store, Changes(), links)        # the agent's retry after backoff
    mgr.apply()
    assert kernel.proxies == {(11, GATEWAY_V6)} and w1 not in mgr.endpoint_problems()

    # The veth goes, taking its entry; the endpoint stays registered.
    kernel.remove_link(11)
    links.apply(LinkUpdate("cali1", None))
    mgr.on_changes(feed.store, Changes(endpoints={w1}), links)
    mgr.apply()
    sent = len(kernel.sent)
    mgr.apply()
    assert len(kernel.sent) == sent, "an entry that went with its link is sent again"


def test_ipv6_settings_only_for_an_endpoint_with_an_ipv6_address_and_when_it_gains_one(world):
    mgr, _kernel, feed, _links, apply = world
    ep = {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"]}
    feed.endpoint(H, "w1", ep)
    apply()
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "1"
    assert mgr.sysctl.values["net/ipv4/conf/cali1/rp_filter"] == "1"
    assert not [p for p in mgr.sysctl.values if p.startswith("net/ipv6/") and "cali1" in p]

    feed.endpoint(H, "w1", {**ep, "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert mgr.sysctl.values["net/ipv6/conf/cali1/proxy_ndp"] == "1"
    assert mgr.sysctl.values["net/ipv6/conf/cali1/forwarding"] == "1"

    # Losing the address again does not rewrite anything; the interface stays configured.
    mgr.sysctl.values.clear()
    feed.endpoint(H, "w1", ep)
    apply()
    assert mgr.sysctl.values == {}


def test_an_interface_set_up_for_ipv6_stays_so_until_its_veth_is_re_created(world):
    """Nothing switches the IPv6 settings off: an interface configured again for an
    IPv4-only endpoint (it was found down) still has them, and regaining an address writes
    nothing; a veth re-created under the same name starts afresh."""
    mgr, _kernel, feed, links, apply = world
    ep = {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"]}
    feed.endpoint(H, "w1", {**ep, "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert mgr.sysctl.values["net/ipv6/conf/cali1/proxy_ndp"] == "1"

    # Set down as it loses its address: set up and configured again, for IPv4 only.
    links.apply(LinkUpdate("cali1", LinkInfo(11, "cali1", False, None)))
    mgr.sysctl.values.clear()
    feed.endpoint(H, "w1", ep)
    apply()
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "1"
    assert not [p for p in mgr.sysctl.values if p.startswith("net/ipv6/")]

    # Up again with its address back: the IPv6 settings written before are still there.
    links.apply(LinkUpdate("cali1", LinkInfo(11, "cali1", True, None)))
    mgr.sysctl.values.clear()
    feed.endpoint(H, "w1", {**ep, "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert mgr.sysctl.values == {}

    # The veth re-created (another ifindex) for an IPv4-only endpoint, then the address back:
    # the new interface has no IPv6 settings yet, so they are written.
    links.apply(LinkUpdate("cali1", LinkInfo(21, "cali1", True, None)))
    feed.endpoint(H, "w1", ep)
    apply()
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "1"
    assert not [p for p in mgr.sysctl.values if p.startswith("net/ipv6/")]
    feed.endpoint(H, "w1", {**ep, "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert mgr.sysctl.values["net/ipv6/conf/cali1/proxy_ndp"] == "1"
    assert mgr.sysctl.values["net/ipv6/conf/cali1/forwarding"] == "1"


def test_a_refresh_puts_back_what_something_else_changed(world):
    mgr, kernel, feed, _links, apply = world
    feed.endpoint(H, "w1", {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"],
                            "ipv6_nets": ["fd00::1/128"]})
    apply()
    mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] = "0"    # someone else's doing
    kernel.proxies.clear()
    apply()
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "0"   # nothing noticed...
    mgr.on_message(DataplaneRefresh())
    apply()                                                         # ...until a refresh
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "1"
    assert kernel.proxies == {(11, GATEWAY_V6)}


def test_entries_left_on_workload_interfaces_from_before_the_start_are_removed(world):
    """An endpoint removed while the agent was stopped left its entry on an interface that
    is still there; a host's own entry on a non-workload interface is not the agent's."""
    mgr, kernel, feed, links, apply = world
    links.apply(LinkUpdate("eth0", LinkInfo(5, "eth0", True, None)))
    kernel.proxies = {(11, GATEWAY_V6), (11, "fd00::99"), (12, GATEWAY_V6), (5, "fd00::5")}
    feed.endpoint(H, "w1", {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"],
                            "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert kernel.proxies == {(11, GATEWAY_V6), (5, "fd00::5")}
    kernel.proxies.add((12, "fe80::1"))                             # someone else's doing
    apply()
    assert (12, "fe80::1") in kernel.proxies                        # noticed at a refresh
    mgr.on_message(DataplaneRefresh())
    apply()
    assert kernel.proxies == {(11, GATEWAY_V6), (5, "fd00::5")}


def test_entries_that_cannot_be_read_back_do_not_hold_up_the_interfaces(world):
    mgr, kernel, feed, _links, apply = world
    kernel.proxies = {(12, "fe80::dead")}
    kernel.unreadable = True
    feed.endpoint(H, "w1", {"name": "cali1", "ipv4_nets": ["10.65.0.1/32"],
                            "ipv6_nets": ["fd00::1/128"]})
    apply()
    assert mgr.sysctl.values["net/ipv4/conf/cali1/proxy_arp"] == "1"
    assert (11, GATEWAY_V6) in kernel.proxies
    kernel.unreadable = False
    feed.endpoint(H, "w2", {"name": "cali2", "ipv4_nets": ["10.65.0.2/32"]})
    apply()                                         # read back at the next change
    assert kernel.proxies == {(11, GATEWAY_V6)}

