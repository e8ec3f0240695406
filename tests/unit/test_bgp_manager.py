"""bgp.manager against state fakes of the driver and the route manager: plan,
announcements, learned routes, status."""

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

from test_bgp_driver import SILENT_EXABGP

from bgp import api, manager
from bgp.driver import ExaBgpDriver, ProcessDown, State
from bgp.manager import ACK_WAIT, OWNER_FILE, BgpManager, remove_stale_run_dirs
from felix_py import config, model
from felix_py.calc.store import Blocks, Changes, Store
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.dataplane.manager import DataplaneRefresh
from felix_py.dataplane.netlink import Route
from felix_py.ipam.blocks import new_block
from felix_py.lab.netns import wait_for
from felix_py.procfs import start_time


class FakeDriver:
    """Keeps what ExaBGP would have been told."""

    def __init__(self, run_dir, on_event):
        self.on_event = on_event
        self.config = None
        self.families = {}
        self.listen = ()
        self.announced = frozenset()
        self.state = State.STOPPED
        self.restarts, self.last_error = 0, None
        self.helper_argv = ("/usr/bin/python3", "-m", "bgp.bridge", f"{run_dir}/api.sock")
        self.configures = 0
        self.told = 0                   # set_routes calls: the first one lets End-of-RIB go
        self.waits = []                 # how long each of them was allowed to wait
        self.acknowledging = True       # False: ExaBGP does not take them within the wait

    def configure(self, text, families, listen=()):
        if text != self.config:
            self.configures += 1
        self.config, self.families, self.listen = text, families, listen
        self.state = State.RUNNING

    def set_routes(self, prefixes, wait=None):
        self.announced = frozenset(prefixes)
        self.told += 1
        self.waits.append(wait)
        return self.acknowledging

    def close(self):
        self.state = State.CLOSED


class FakeRoutes:
    """The route manager: the sources it is handed, and the routes it has installed."""

    def __init__(self):
        self.sources = {}
        self.actual = {}

    def set_source_routes(self, source, routes):
        self.sources[source] = dict(routes)

    def install(self, *dsts):
        """What its apply does once the workload's interface exists."""
        self.actual.update({d: Route(d, oif=7, scope="link") for d in dsts})


def make(tmp_path, inherited=None, links=None, driver=FakeDriver, run_dir=True):
    """links: peer -> the interface it is reached on (none known by default); run_dir:
    False to have the manager make its own."""
    posted = []
    ctx = SimpleNamespace(config=config.load({}, {}), hostname="h1", post=posted.append,
                          routes=FakeRoutes(), layout=KeyLayout("/calico"))
    m = BgpManager(ctx, driver_factory=driver, run_dir=str(tmp_path) if run_dir else None,
                   dump_routes=lambda: dict(inherited or {}),
                   source_address=lambda ip: "fd10:7::2" if ":" in ip else "10.1.0.11",
                   link_to=lambda ip: (links or {}).get(ip), clock=lambda: 1_800_000_000.0)
    return m, ctx, posted


def store_with(peers, endpoints=("10.65.0.1/32",)):
    s = Store("h1")
    s.bgp.as_num = 64512
    s.bgp.host_ip_v4 = {"h1": "10.1.0.11"}
    s.bgp.host_peers = {"h1": {ip: model.BgpPeer(ip=ip, as_num=a) for ip, a in peers}}
    for i, net in enumerate(endpoints):
        eid = EndpointId("h1", "k8s", f"w{i}", "eth0")
        s.local_endpoints[eid] = s.endpoints[eid] = model.Endpoint(name=f"cali{i}",
                                                                   ipv4_nets=[net])
    return s


ALL = Changes(config=True, bgp=True, ipam=True, endpoints={None})


def turn(m, posted, store=None, changes=ALL):
    """One batch of the agent's loop: the driver's events, the datastore's changes, then
    the applies in the agent's order (the BGP manager first, its announcements after the
    routes)."""
    for msg in posted:
        m.on_message(msg)
    posted.clear()
    if store is not None:
        m.on_changes(store, changes, None)
    m.apply()
    m.announcer.apply()


def test_announces_local_workloads_and_installs_ecmp_default(tmp_path):
    m, ctx, posted = make(tmp_path)
    ctx.routes.install("10.65.0.1/32")
    turn(m, posted, store_with([("10.1.0.1", 65101), ("10.2.0.1", 65102)]))
    d = m.driver
    assert d.announced == {"10.65.0.1/32"}
    assert "neighbor 10.1.0.1 {" in d.config and "neighbor 10.2.0.1 {" in d.config
    assert "local-address 10.1.0.11;" in d.config
    assert d.families == {"10.1.0.1": 4, "10.2.0.1": 4}
    for ip in ("10.1.0.1", "10.2.0.1"):
        d.on_event(api.PeerState(ip, "up", "10.1.0.11"))
        d.on_event(api.RouteUpdate(ip, {"0.0.0.0/0": ip, "10.9.0.0/16": ip}))
    turn(m, posted)
    assert ctx.routes.sources["bgp"] == {
        "0.0.0.0/0": Route("0.0.0.0/0", gateways=("10.1.0.1", "10.2.0.1"))}
    st = m.peer_status()["10.2.0.1"]
    assert (st.peer_type, st.state, st.received, st.accepted, st.sent) == \
        ("tor", "established", 2, 1, 1)
    assert st.since == "2027-01-15T08:00:00Z"
    # A peer going down takes its next hop away; the other stays.
    d.on_event(api.Notification("10.2.0.1", "receive", 6, 2, ""))
    d.on_event(api.PeerState("10.2.0.1", "down", reason="notification received (6,2)"))
    turn(m, posted)
    assert ctx.routes.sources["bgp"]["0.0.0.0/0"].gateways == ("10.1.0.1",)
    assert m.peer_status()["10.2.0.1"].state == "idle"


def test_each_peer_is_counted_as_sent_only_the_prefixes_of_its_family(tmp_path):
    """ExaBGP gives each peer one session with its address's family: on a dual-stack host
    an IPv4 peer is sent the IPv4 prefixes, an IPv6 peer the IPv6 ones, not all of them."""
    m, ctx, posted = make(tmp_path)
    s = store_with([("10.1.0.1", 65101), ("fd10:7::1", 65101), ("10.2.0.1", 65102)],
                   ("10.65.0.1/32",))
    eid = EndpointId("h1", "k8s", "dual", "eth0")
    s.local_endpoints[eid] = s.endpoints[eid] = model.Endpoint(
        name="calidual", ipv4_nets=["10.65.0.2/32"], ipv6_nets=["fd00:65::2/128"])
    ctx.routes.install("10.65.0.1/32", "10.65.0.2/32", "fd00:65::2/128")
    turn(m, posted, s)
    assert m.driver.announced == {"10.65.0.1/32", "10.65.0.2/32", "fd00:65::2/128"}
    assert m.driver.families == {"10.1.0.1": 4, "fd10:7::1": 6, "10.2.0.1": 4}
    m.driver.on_event(api.PeerState("10.1.0.1", "up", "10.1.0.11"))
    m.driver.on_event(api.PeerState("fd10:7::1", "up", "fd10:7::2"))
    turn(m, posted)
    st = m.peer_status()
    assert (st["10.1.0.1"].state, st["10.1.0.1"].sent) == ("established", 2)
    assert (st["fd10:7::1"].state, st["fd10:7::1"].sent) == ("established", 1)
    assert (st["10.2.0.1"].state, st["10.2.0.1"].sent) == ("idle", 0)   # not up: nothing
    assert m.status()["bgp_announced"] == 3                              # all families


def test_exabgp_is_configured_first_and_told_the_announcements_last(tmp_path):
    m, ctx, posted = make(tmp_path)
    ctx.routes.install("10.65.0.1/32")
    m.on_changes(store_with([("10.1.0.1", 65101)]), ALL, None)
    m.apply()                   # first of the agent's managers: ExaBGP starts meanwhile
    assert "neighbor 10.1.0.1 {" in m.driver.config
    assert m.driver.announced == frozenset()
    m.announcer.apply()         # last, once policy and routes are programmed
    assert m.driver.announced == {"10.65.0.1/32"}


def test_announcements_not_taken_in_time_are_looked_at_again_without_waiting(
        tmp_path, caplog):
    m, ctx, posted = make(tmp_path)
    ctx.routes.install("10.65.0.1/32")
    m.driver.acknowledging = False
    with caplog.at_level(logging.INFO, logger="bgp.manager"):
        turn(m, posted, store_with([("10.1.0.1", 65101)]))     # goes on, does not raise
    assert "has not taken all 1 announcements within 3s; going on" in caplog.text
    assert m.driver.waits == [ACK_WAIT] and m.exported == frozenset()
    turn(m, posted, changes=NO_CHANGES)         # nothing changed: it looks, without waiting
    assert m.driver.waits == [ACK_WAIT, 0]
    # A workload withdrawn meanwhile is new to the driver: handed over, waited for.
    del ctx.routes.actual["10.65.0.1/32"]
    turn(m, posted, changes=NO_CHANGES)
    assert m.driver.waits == [ACK_WAIT, 0, ACK_WAIT] and m.driver.announced == frozenset()
    ctx.routes.install("10.65.0.1/32")
    m.driver.acknowledging = True
    turn(m, posted, changes=NO_CHANGES)
    turn(m, posted, changes=NO_CHANGES)         # taken: not asked again
    assert m.driver.waits == [ACK_WAIT, 0, ACK_WAIT, ACK_WAIT]
    assert m.exported == {"10.65.0.1/32"}
    # Configured again (a driver closed meanwhile would know nothing): told afresh.
    s = store_with([("10.1.0.1", 65101), ("10.2.0.1", 65102)])
    turn(m, posted, s, Changes(bgp=True))
    assert m.driver.waits[-1] == ACK_WAIT and m.driver.told == 5


def test_a_hung_exabgp_holds_only_the_batches_that_hand_it_something_new(
        tmp_path, monkeypatch):
    """The real driver, ExaBGP never answering: the batch that hands it announcements waits
    for them (ACK_WAIT); later batches with the same ones do not wait again; a batch with
    other announcements waits again."""
    monkeypatch.setattr(manager, "ACK_WAIT", 2.0)
    fake = tmp_path / "exabgp"
    fake.write_text(SILENT_EXABGP.format(python=sys.executable))
    fake.chmod(0o755)
    # ack_timeout: no restart while the test measures (a restarting ExaBGP is not waited for).
    m, ctx, posted = make(tmp_path, driver=lambda **kw: ExaBgpDriver(
        exabgp=str(fake), ack_timeout=30, **kw))
    try:
        m.on_changes(store_with([("10.1.0.1", 65101)]), ALL, None)
        m.apply()
        wait_for(lambda: m.driver.state is State.RUNNING, 10, what="ExaBGP running")
        ctx.routes.install("10.65.0.1/32")

        def batch_time():
            t0 = time.monotonic()
            turn(m, posted, changes=NO_CHANGES)
            return time.monotonic() - t0

        assert batch_time() >= 1.95                # handed over: waited for
        assert batch_time() < 1.0                  # the same: not waited for again
        assert batch_time() < 1.0
        ctx.routes.install("10.65.0.2/32")         # not ours: announced nothing new
        assert batch_time() < 1.0
        del ctx.routes.actual["10.65.0.1/32"]      # withdrawn: handed over, waited for
        assert batch_time() >= 1.95
        assert batch_time() < 1.0
        assert m.exported == frozenset() and m.driver.state is State.RUNNING
    finally:
        if m.driver.pid:
            os.kill(m.driver.pid, signal.SIGKILL)  # it would hold close() until ack_timeout
        m.close()


def test_endpoint_changes_are_diffs_and_do_not_restart_exabgp(tmp_path):
    m, ctx, posted = make(tmp_path)
    ctx.routes.install("10.65.0.1/32", "10.65.0.2/32")
    turn(m, posted, store_with([("10.1.0.1", 65101)]))
    turn(m, posted, store_with([("10.1.0.1", 65101)], ("10.65.0.1/32", "10.65.0.2/32")),
         Changes(endpoints={None}))
    assert m.driver.announced == {"10.65.0.1/32", "10.65.0.2/32"}
    assert m.driver.configures == 1


NO_CHANGES = Changes()


def test_a_workload_is_announced_only_while_its_route_is_installed(tmp_path):
    m, ctx, posted = make(tmp_path)
    # Registered, but its interface does not exist: the route manager installed nothing.
    turn(m, posted, store_with([("10.1.0.1", 65101)]))
    assert m.driver.announced == frozenset()
    assert m.driver.told == 1       # announced nothing, but announced: End-of-RIB may go
    # Its interface appears: a link event, the route is installed in that batch.
    ctx.routes.install("10.65.0.1/32")
    turn(m, posted, changes=NO_CHANGES)
    assert m.driver.announced == {"10.65.0.1/32"}
    # The interface is deleted, taking the route with it: withdrawn in that batch.
    del ctx.routes.actual["10.65.0.1/32"]
    turn(m, posted, changes=NO_CHANGES)
    assert m.driver.announced == frozenset()
    # A learned route kept from before a restart is not ours to announce.
    ctx.routes.actual["10.65.0.1/32"] = Route("10.65.0.1/32", oif=2, gateways=("10.1.0.9",))
    turn(m, posted, changes=NO_CHANGES)
    assert m.driver.announced == frozenset()
    assert m.driver.configures == 1


def test_owned_blocks_are_announced_whole_whatever_is_installed(tmp_path):
    m, ctx, posted = make(tmp_path)
    s = store_with([("10.1.0.1", 65101)], ("10.65.0.1/32", "10.70.0.9/32"))
    s.blocks["10.65.0.0/26"] = new_block("10.65.0.0/26", "h1", False)
    s.blocks["10.65.0.64/26"] = new_block("10.65.0.64/26", "h2", False)   # another host's
    turn(m, posted, s)
    # The block has a blackhole route for its unused addresses; the workload outside it
    # has no route yet.
    assert m.driver.announced == {"10.65.0.0/26"}
    ctx.routes.install("10.65.0.1/32", "10.70.0.9/32")
    turn(m, posted, changes=NO_CHANGES)
    assert m.driver.announced == {"10.65.0.0/26", "10.70.0.9/32"}


def test_exabgp_death_keeps_learned_routes_until_the_restart_time(tmp_path):
    m, ctx, posted = make(tmp_path)
    turn(m, posted, store_with([("10.1.0.1", 65101)]))
    m.driver.on_event(api.PeerState("10.1.0.1", "up", "10.1.0.11"))
    m.driver.on_event(api.RouteUpdate("10.1.0.1", {"0.0.0.0/0": "10.1.0.1"}))
    turn(m, posted)
    m.driver.on_event(ProcessDown(1, "ExaBGP exited (killed by SIGKILL)"))
    turn(m, posted)
    assert "0.0.0.0/0" in ctx.routes.sources["bgp"]
    assert m.peer_status()["10.1.0.1"].info == "ExaBGP restarting"
    m._timer.cancel()


def test_routes_of_a_previous_run_are_kept_until_the_peers_resend(tmp_path):
    old = {"0.0.0.0/0": Route("0.0.0.0/0", oif=2, gateways=("10.1.0.1",)),
           "10.65.0.1/32": Route("10.65.0.1/32", oif=5, scope="link")}
    m, ctx, posted = make(tmp_path, inherited=old)
    turn(m, posted, store_with([("10.1.0.1", 65101)]))
    assert ctx.routes.sources["bgp"] == {"0.0.0.0/0": old["0.0.0.0/0"]}
    m.driver.on_event(api.PeerState("10.1.0.1", "up", "10.1.0.11"))
    m.driver.on_event(api.EndOfRib("10.1.0.1", "ipv4 unicast"))
    turn(m, posted)
    assert ctx.routes.sources["bgp"] == {}
    m._timer.cancel()


def test_invalid_peer_keys_and_refused_peers_show_in_status(tmp_path):
    m, ctx, posted = make(tmp_path)
    s = store_with([("10.1.0.1", 65101)])
    s.bgp.host_peers["h1"]["10.1.0.2"] = model.BgpPeer(ip="10.1.0.2", as_num=65101,
                                                       password="caf\u00e9")
    s.errors["/calico/bgp/v1/host/h1/peer_v4/10.1.0.3"] = model.ModelError(
        "/calico/bgp/v1/host/h1/peer_v4/10.1.0.3", "as_num", "AS number 0 is out of range")
    s.errors["/calico/bgp/v1/host/h2/peer_v4/10.1.0.4"] = ValueError("another host's")
    turn(m, posted, s)
    st = m.peer_status()
    assert st["10.1.0.2"].state == "error" and "ASCII" in st["10.1.0.2"].info
    assert st["10.1.0.3"].state == "error" and "out of range" in st["10.1.0.3"].info
    assert "10.1.0.4" not in st
    assert "neighbor 10.1.0.2" not in m.driver.config      # ExaBGP never sees it
    assert st["10.1.0.1"].state == "idle"


def test_no_bgp_address_stops_exabgp_and_reports(tmp_path):
    m, ctx, posted = make(tmp_path)
    turn(m, posted, store_with([("10.1.0.1", 65101)]))
    s = store_with([("10.1.0.1", 65101)])
    s.bgp.host_ip_v4 = {}
    turn(m, posted, s, Changes(bgp=True))
    assert m.driver.state is State.CLOSED
    assert m.status()["bgp_mode"] == "disabled" and m.peer_status() == {}
    assert "ip_addr_v4" in m.status()["bgp_problems"][0]


def reflected_store(reflector: str):
    """A store in which h1 is in route-reflector mode, served by ``reflector``."""
    s = store_with([])
    s.bgp.mode = "route-reflector"
    s.bgp.rr_cluster_id = {"h1": "1.0.0.1"}
    s.bgp.route_reflectors = {reflector: model.RouteReflector(ip=reflector,
                                                              cluster_id="1.0.0.1")}
    return s


def test_a_problem_that_comes_alone_is_logged_and_shown(tmp_path, caplog):
    """A host losing its ip_addr_v6 leaves its plan as it was (problems are not compared),
    but the problem that an IPv6 reflector cannot reach it is logged and in the status."""
    m, ctx, posted = make(tmp_path)
    s = reflected_store("fd00:9::1")
    s.bgp.host_ip_v6 = {"h1": "fd10:1::11"}
    turn(m, posted, s)
    assert m.status()["bgp_problems"] == []
    del s.bgp.host_ip_v6["h1"]
    with caplog.at_level(logging.WARNING, logger="bgp.manager"):
        turn(m, posted, s, Changes(bgp=True))
    [problem] = m.status()["bgp_problems"]
    assert "/calico/bgp/v1/host/h1/ip_addr_v6" in problem and problem in caplog.text
    assert "neighbor fd00:9::1 {" in m.driver.config        # still tried
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bgp.manager"):
        turn(m, posted, s, Changes(bgp=True))               # the same problems: once
    assert "BGP:" not in caplog.text


def test_run_directories_of_dead_agents_are_removed_and_no_other(tmp_path):
    from bgp.manager import OWNER_FILE, remove_stale_run_dirs
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    ours = os.readlink("/proc/self/ns/pid")
    try:
        for name, owner in (("felix-bgp-a-1", f"{dead.pid} {ours}"),
                            ("felix-bgp-b-2", f"{alive.pid} {ours}"),
                            ("felix-bgp-c-3", None),
                            ("felix-bgp-d-4", f"{dead.pid} pid:[1]"),   # another namespace's
                            ("other-5", f"{dead.pid} {ours}")):
            (tmp_path / name).mkdir()
            if owner is not None:
                (tmp_path / name / OWNER_FILE).write_text(f"{owner}\n")
        (tmp_path / "felix-bgp-file").write_text("not a directory")
        assert remove_stale_run_dirs(str(tmp_path)) == [str(tmp_path / "felix-bgp-a-1")]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "felix-bgp-b-2", "felix-bgp-c-3", "felix-bgp-d-4", "felix-bgp-file", "other-5"]
    finally:
        alive.kill()
        alive.wait()


def learning_from_a_reflector(tmp_path):
    """(manager, ctx, posted, store) of a host in route-reflector mode that has learned
    10.65.0.9/32 from its reflector."""
    m, ctx, posted = make(tmp_path)
    s = reflected_store("10.1.0.250")
    turn(m, posted, s)
    m.driver.on_event(api.PeerState("10.1.0.250", "up", "10.1.0.11"))
    m.driver.on_event(api.RouteUpdate("10.1.0.250", {"10.65.0.9/32": "10.1.0.12"}))
    turn(m, posted)
    return m, ctx, posted, s


def move_here(s):
    """The workload at 10.65.0.9 moves to this host: its endpoint id."""
    eid = EndpointId("h1", "k8s", "moved", "eth0")
    s.local_endpoints[eid] = s.endpoints[eid] = model.Endpoint(name="calim",
                                                               ipv4_nets=["10.65.0.9/32"])
    return eid


def test_an_endpoint_taking_a_learned_prefix_filters_it_out_without_reconfiguring(tmp_path):
    m, ctx, posted, s = learning_from_a_reflector(tmp_path)
    d = m.driver
    assert "10.65.0.9/32" in ctx.routes.sources["bgp"]
    configures = d.configures

    # The workload moves here: its prefix is ours now, and is no longer imported.
    eid = move_here(s)
    turn(m, posted, s, Changes(endpoints={eid}))
    assert "10.65.0.9/32" not in ctx.routes.sources["bgp"]
    assert d.configures == configures            # ExaBGP's configuration left alone


def test_a_link_local_default_waits_for_its_link_and_a_refresh_looks_again(tmp_path):
    links = {}
    m, ctx, posted = make(tmp_path, links=links)
    turn(m, posted, store_with([("fd10:7::1", 65101)]))
    m.driver.on_event(api.PeerState("fd10:7::1", "up", "fd10:7::2"))
    m.driver.on_event(api.RouteUpdate("fd10:7::1", {"::/0": "fe80::1"}))
    turn(m, posted)
    assert "::/0" not in ctx.routes.sources["bgp"]          # no link known for the peer
    links["fd10:7::1"] = "up6"
    turn(m, posted, changes=NO_CHANGES)
    assert "::/0" not in ctx.routes.sources["bgp"]          # nothing asked it to look again
    m.on_message(DataplaneRefresh())
    turn(m, posted, changes=NO_CHANGES)
    assert ctx.routes.sources["bgp"]["::/0"] == Route("::/0", gateways=("fe80::1%up6",))


def test_own_prefixes_are_filtered_out_while_ours_and_imported_again_after(tmp_path):
    """The import filter follows this host's own prefixes batch by batch (the RIB compares
    them): a learned prefix an endpoint here takes is dropped, and comes back when the
    endpoint goes; a batch that changes none of them pushes nothing new."""
    m, ctx, posted, s = learning_from_a_reflector(tmp_path)
    eid = move_here(s)
    turn(m, posted, s, Changes(endpoints={eid}))
    assert "10.65.0.9/32" not in ctx.routes.sources["bgp"]
    ctx.routes.sources.clear()
    turn(m, posted, s, Changes(endpoints={eid}))      # the same prefixes: nothing pushed
    assert ctx.routes.sources == {}
    del s.local_endpoints[eid], s.endpoints[eid]
    turn(m, posted, s, Changes(endpoints={eid}))
    assert ctx.routes.sources["bgp"]["10.65.0.9/32"] == Route("10.65.0.9/32",
                                                              gateways=("10.1.0.12",))
    assert m.driver.configures == 1


def count_full_passes(monkeypatch):
    """The passes over every block of the cluster (``Blocks``' iteration and views), made
    while the test runs: the list of them, by method."""
    passes = []
    for name in ("__iter__", "keys", "values", "items"):
        def counted(self, _real=getattr(Blocks, name), _name=name):
            passes.append(_name)
            return _real(self)
        monkeypatch.setattr(Blocks, name, counted)
    return passes


def test_a_batch_does_not_go_through_the_clusters_blocks_for_bgp(tmp_path, monkeypatch):
    """What the host announces comes from the store's index of its own blocks."""
    m, ctx, posted = make(tmp_path)
    s = store_with([("10.1.0.1", 65101)], ("10.65.0.1/32", "10.70.0.9/32"))
    s.blocks["10.65.0.0/26"] = new_block("10.65.0.0/26", "h1", False)
    for i in range(1, 200):         # other hosts' blocks
        s.blocks[f"10.66.{i}.0/26"] = new_block(f"10.66.{i}.0/26", f"h{i + 1}", False)
    passes = count_full_passes(monkeypatch)
    m.on_changes(s, ALL, None)
    assert passes == []
    assert m.blocks == {"10.65.0.0/26"} and m.own == {"10.65.0.0/26", "10.70.0.9/32"}
    assert len(list(s.blocks.items())) == 200 and passes == ["items"]     # passes are seen


# -- run directories -----------------------------------------------------------------------
OURS = os.readlink("/proc/self/ns/pid")


def owned_dirs(parent, owners):
    for name, owner in owners.items():
        (parent / name).mkdir()
        (parent / name / OWNER_FILE).write_text(f"{owner}\n")


def test_a_pid_taken_by_a_later_process_or_a_zombie_is_no_agent(tmp_path):
    alive = subprocess.Popen(["sleep", "30"])
    zombie = subprocess.Popen(["sleep", "30"])  # killed, not waited for until the end
    try:
        zombie_start = start_time(zombie.pid)   # read while it runs: a zombie's is None
        zombie.kill()
        # Not collected, so still there (its /proc directory), as a zombie.
        wait_for(lambda: start_time(zombie.pid) is None, 10, 0.02, what="a zombie")
        assert os.path.isdir(f"/proc/{zombie.pid}")
        owned_dirs(tmp_path, {
            "felix-bgp-alive-1": f"{alive.pid} {OURS} {start_time(alive.pid)}",
            # its pid, another process since (the agent started at another time)
            "felix-bgp-reused-2": f"{alive.pid} {OURS} {start_time(alive.pid) - 1}",
            "felix-bgp-zombie-3": f"{zombie.pid} {OURS} {zombie_start}",
            # an older agent's pid file, without a start time: whether the pid exists
            "felix-bgp-old-4": f"{alive.pid} {OURS}",
            "felix-bgp-bad-5": f"{alive.pid} {OURS} 1 2",
            # this very process's, and one of an earlier process that had its pid
            "felix-bgp-self-6": f"{os.getpid()} {OURS} {start_time(os.getpid())}",
            "felix-bgp-before-7": f"{os.getpid()} {OURS} {start_time(os.getpid()) - 1}"})
        assert sorted(remove_stale_run_dirs(str(tmp_path))) == [
            str(tmp_path / "felix-bgp-before-7"), str(tmp_path / "felix-bgp-reused-2"),
            str(tmp_path / "felix-bgp-zombie-3")]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "felix-bgp-alive-1", "felix-bgp-bad-5", "felix-bgp-old-4", "felix-bgp-self-6"]
    finally:
        alive.kill()
        alive.wait()
        zombie.wait()


def test_start_times_are_read_after_the_command_name_whatever_it_holds(tmp_path):
    proc = tmp_path / "proc"
    rest = " ".join(str(n) for n in range(4, 22))          # fields 4 to 21
    for pid, comm, state, start in ((101, "a) S (b", "S", 777), (102, "z", "Z", 888),
                                    (103, "x", "R", 999)):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "stat").write_text(f"{pid} ({comm}) {state} {rest} {start} 0 0\n")
    runs = tmp_path / "runs"
    runs.mkdir()
    owned_dirs(runs, {"felix-bgp-a": f"101 {OURS} 777", "felix-bgp-b": f"102 {OURS} 888",
                      "felix-bgp-c": f"103 {OURS} 998", "felix-bgp-d": f"104 {OURS} 5"})
    assert sorted(os.path.basename(p) for p in remove_stale_run_dirs(str(runs), str(proc))) \
        == ["felix-bgp-b", "felix-bgp-c", "felix-bgp-d"]


AGENT = """import sys, time
from bgp.manager import owner_line
sys.stdout.write(owner_line())
sys.stdout.flush()
time.sleep(30)
"""


def test_the_pid_file_names_the_agent_by_pid_and_start_time(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    m, _, _ = make(tmp_path, run_dir=False)
    try:
        assert os.path.dirname(m.run_dir) == str(tmp_path)
        assert open(os.path.join(m.run_dir, OWNER_FILE)).read().split() == [
            str(os.getpid()), OURS, str(start_time("self"))]
    finally:
        m.close()
    assert not os.path.exists(m.run_dir)
    # Another agent's: kept while it runs, removed once it is gone.
    agent = subprocess.Popen([sys.executable, "-c", AGENT], stdout=subprocess.PIPE, text=True)
    try:
        owned_dirs(tmp_path, {"felix-bgp-other": agent.stdout.readline().strip()})
        assert remove_stale_run_dirs(str(tmp_path)) == []
    finally:
        agent.kill()
        agent.wait()
        agent.stdout.close()
    assert remove_stale_run_dirs(str(tmp_path)) == [str(tmp_path / "felix-bgp-other")]
