"""A route felix-py does not own holds a workload's prefix: it is left alone, reported once,
not retried in a loop, and replaced by ours once it is deleted.  Real kernel, in throwaway
namespaces: the agent as a process, and the route manager driven the way the agent drives
it from a thread that entered the host's namespace."""

import ctypes
import queue
import threading
import time
from collections import Counter

import pytest
from agentkit import metric

from felix_py.datastore.keys import EndpointId
from felix_py.dataplane.netlink import Netlink, Route
from felix_py.dataplane.routes import RouteManager
from felix_py.lab.netns import wait_for

H = "host-a"
CLONE_NEWNET = 0x40000000


@pytest.fixture
def host(host_factory):
    return host_factory("rc")


def eid(name):
    return EndpointId(H, "k8s", name, "eth0")


def ep(iface, ip):
    return {"name": iface, "ipv4_nets": [f"{ip}/32"], "profile_ids": ["open"]}


def route_to(host, dst):
    return host.routes("exact", dst)


def test_agent_leaves_a_foreign_route_alone_and_reports_it_once(
        host, registry, open_profile, agent_factory, workload_factory):
    for i in (1, 2, 3):
        workload_factory(host, f"w{i}", f"cali{i}", f"10.65.0.{i}")
    # Someone else's route to w1's address: out of the uplink, protocol static.
    host.run("ip route add 10.65.0.1/32 via 192.0.2.6 proto static")
    registry.register_endpoints([(eid("w1"), ep("cali1", "10.65.0.1")),
                                 (eid("w2"), ep("cali2", "10.65.0.2"))])
    agent = agent_factory(host, H, FELIX_HEALTH_PORT="9097")
    agent.wait_ready(registry)          # a conflict is not a failed apply
    wait_for(lambda: route_to(host, "10.65.0.2/32"), what="route to w2")

    def w1_status():
        st = registry.endpoint_status(eid("w1"))
        return st and (st.status, st.reason)
    state, reason = wait_for(w1_status, what="w1 status")
    assert state == "error"
    assert "10.65.0.1/32" in reason and "protocol static (4), via 192.0.2.6 dev uplink" in reason
    assert route_to(host, "10.65.0.1/32") == ["10.65.0.1 via 192.0.2.6 dev uplink proto static"]
    assert metric(host, 9097, "felix_route_conflicts") == 1

    # No retry loop: one warning, no failed applies, also across an unrelated change.
    time.sleep(2.5)
    registry.register_endpoint(eid("w3"), ep("cali3", "10.65.0.3"))
    wait_for(lambda: route_to(host, "10.65.0.3/32"), what="route to w3")
    time.sleep(0.5)
    log = agent.log()
    assert log.count("route 10.65.0.1/32 not installed") == 1, log[-3000:]
    assert "changes failed" not in log, log[-3000:]
    assert route_to(host, "10.65.0.1/32") == ["10.65.0.1 via 192.0.2.6 dev uplink proto static"]

    # The foreign route goes: ours takes the prefix at once, and w1 is up again.
    host.run("ip route del 10.65.0.1/32 proto static")
    wait_for(lambda: route_to(host, "10.65.0.1/32") == ["10.65.0.1 dev cali1 proto 98 scope link"],
             timeout=5, what="our route to w1 after the foreign one went")
    wait_for(lambda: w1_status() == ("up", None), what="w1 up again")
    assert metric(host, 9097, "felix_route_conflicts") == 0


def test_a_route_deleted_from_outside_comes_back_and_a_newcomer_is_left_alone(
        host, registry, open_profile, agent_factory, workload_factory):
    for i in (1, 2):
        workload_factory(host, f"w{i}", f"cali{i}", f"10.65.0.{i}")
    registry.register_endpoints([(eid("w1"), ep("cali1", "10.65.0.1")),
                                 (eid("w2"), ep("cali2", "10.65.0.2"))])
    agent_factory(host, H, FELIX_DATAPLANE_REFRESH_SECS="1").wait_ready(registry)
    ours = "10.65.0.{} dev cali{} proto 98 scope link"
    wait_for(lambda: route_to(host, "10.65.0.2/32") == [ours.format(2, 2)], what="route to w2")

    # An operator deletes w1's route, and puts a route of their own in place of w2's (in one
    # step: the agent's refresh runs every second).
    host.run("ip route del 10.65.0.1/32")
    host.run("ip route replace 10.65.0.2/32 via 192.0.2.6 proto static")
    wait_for(lambda: route_to(host, "10.65.0.1/32") == [ours.format(1, 1)], timeout=10,
             what="the deleted route put back by the agent's refresh")
    st = wait_for(lambda: (s := registry.endpoint_status(eid("w2"))) and s.status == "error"
                  and s, what="w2 reported")
    assert "protocol static" in st.reason
    time.sleep(2.5)                     # more refreshes: still not overwritten
    assert route_to(host, "10.65.0.2/32") == ["10.65.0.2 via 192.0.2.6 dev uplink proto static"]


class CountingNetlink(Netlink):
    """The real netlink socket, counting the route messages sent per (operation, prefix)."""

    def __init__(self):
        super().__init__()
        self.sent = Counter()

    def route_message(self, op, route, proto):
        self.sent[(op, route.dst)] += 1
        return super().route_message(op, route, proto)


class ManagerInNetns(threading.Thread):
    """A RouteManager inside a namespace, driven as the agent drives it: one apply at start
    and one per message posted to its queue.  Every socket it opens (its own, the conflict
    watch's) is opened from this thread, so it belongs to the namespace."""

    def __init__(self, ns_name: str, routes: dict[str, Route]):
        super().__init__(daemon=True, name="manager-in-netns")
        self.ns_name, self.routes = ns_name, routes
        self.queue: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self.applies = 0
        self.nl: CountingNetlink | None = None
        self.mgr: RouteManager | None = None
        self.error: BaseException | None = None

    def run(self):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{self.ns_name}") as f:
                if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns into " + self.ns_name)
            self.nl = CountingNetlink()
            self.mgr = RouteManager(98, netlink=self.nl, post=self.queue.put)
            self.mgr.set_source_routes("workloads", self.routes)
            self._apply()
            self.ready.set()
            while self.queue.get() is not None:
                self._apply()
        except BaseException as e:      # reported by the test, not lost in the thread
            self.error = e
            self.ready.set()
        finally:
            if self.mgr is not None:
                self.mgr.close()

    def _apply(self):
        self.mgr.apply()
        self.applies += 1

    def stop(self):
        self.queue.put(None)
        self.join(5)


def test_the_foreign_route_deleted_lets_ours_in(host, workload_factory):
    workload_factory(host, "w1", "cali1", "10.65.0.1")
    ifindex = int(host.run("cat /sys/class/net/cali1/ifindex").stdout)
    host.run("ip route add 10.65.0.1/32 dev cali1 proto static scope link")
    dst = "10.65.0.1/32"
    loop = ManagerInNetns(host.name, {dst: Route(dst, oif=ifindex, scope="link")})
    loop.start()
    try:
        loop.ready.wait(10)
        assert loop.error is None, loop.error
        assert loop.mgr.conflicts[dst].holder == "protocol static (4), dev cali1"
        time.sleep(2)
        assert loop.nl.sent[("create", dst)] == 1 and loop.applies == 1, "retried"
        assert route_to(host, dst) == ["10.65.0.1 dev cali1 proto static scope link"]

        host.run(f"ip route del {dst} proto static")
        wait_for(lambda: route_to(host, dst) == ["10.65.0.1 dev cali1 proto 98 scope link"],
                 timeout=5, what="our route after the foreign one was deleted")
        assert loop.nl.sent[("create", dst)] == 2
        assert loop.mgr.conflicts == {} and loop.error is None
    finally:
        loop.stop()
