"""The health server's /status: a real HTTP server on loopback serving the snapshot the main
loop hands it, before any snapshot too, and never calling into the managers itself; and the
agent's loop building that snapshot."""

import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from felix_py import __version__
from felix_py import agent as agent_mod
from felix_py import config as config_mod
from felix_py.health import Health, Metrics, serve, status_snapshot


class Manager:
    """A manager with a status(); counts the calls so that a test can see who makes them."""

    def __init__(self, name, status):
        self.name, self._status, self.calls = name, status, 0

    def status(self):
        self.calls += 1
        return dict(self._status)

    def endpoint_problems(self):
        return {}


class NoStatus:
    name = "routes"

    def endpoint_problems(self):
        return {}


class Broken:
    name = "broken"

    def status(self):
        raise KeyError("gone")


@pytest.fixture
def server():
    health = Health(hostname="host-a")
    srv = serve(health, Metrics(), "127.0.0.1", 0)
    try:
        yield health, srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def get(port, path):
    """(status code, content type, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def get_status(port):
    code, ctype, body = get(port, "/status")
    assert (code, ctype) == (200, "application/json")
    return json.loads(body)


def test_status_before_any_snapshot_says_what_is_known(server):
    health, port = server
    st = get_status(port)
    assert st["host"] == "host-a" and st["version"] == __version__
    assert st["uptime_secs"] >= 0 and st["live"] is True
    assert (st["in_sync"], st["ready"]) == (False, False)
    assert st["endpoints"] is None and st["last_apply_secs"] is None
    assert st["managers"] == {} and st["snapshot_age_secs"] is None
    health.in_sync = health.datastore_in_sync = True       # in sync, nothing applied yet
    st = get_status(port)
    assert (st["in_sync"], st["ready"]) == (True, False)


def test_status_serves_the_latest_snapshot_without_calling_the_managers(server):
    health, port = server
    bgp = Manager("bgp", {"bgp_mode": "downward-default", "bgp_peers": {"established": 2}})
    policy = Manager("policy", {"chains": 12, "ipsets": 3, "profile_errors": {}})
    managers = (bgp, NoStatus(), Broken(), policy)
    health.in_sync = health.datastore_in_sync = health.applied = True
    health.set_status(status_snapshot({"up": 2, "down": 1, "error": 0}, 0.01234567, True,
                                      managers, set()))
    st = get_status(port)
    assert st["managers"] == {
        "bgp": {"bgp_mode": "downward-default", "bgp_peers": {"established": 2}},
        "policy": {"chains": 12, "ipsets": 3, "profile_errors": {}},
        "broken": {"error": "status() failed: KeyError('gone')"}}       # the rest still show
    assert st["endpoints"] == {"up": 2, "down": 1, "error": 0}
    assert (st["last_apply_secs"], st["last_apply_ok"]) == (0.0123, True)
    assert (st["in_sync"], st["ready"], st["host"]) == (True, True, "host-a")
    assert 0 <= st["snapshot_age_secs"] < 5
    # The handler serves the snapshot it was handed: asking again calls no manager.
    get_status(port)
    assert (bgp.calls, policy.calls) == (1, 1)
    # A new snapshot replaces the old one whole; what Health keeps current (the datastore
    # went away) wins over what the snapshot says.
    policy._status["chains"] = 13
    snapshot = status_snapshot({"up": 3, "down": 0, "error": 0}, 0.5, False, managers, set())
    health.set_status({**snapshot, "in_sync": True})
    health.datastore_in_sync = False
    st = get_status(port)
    assert st["managers"]["policy"]["chains"] == 13 and st["endpoints"]["up"] == 3
    assert st["last_apply_ok"] is False and st["in_sync"] is False


def test_the_other_paths_still_answer_and_unknown_ones_list_status(server):
    health, port = server
    assert get(port, "/livez")[0] == 200
    assert get(port, "/readyz")[0] == 503
    assert "felix_in_sync" in get(port, "/metrics")[2]
    code, _, body = get(port, "/nope")
    assert code == 404
    assert all(p in body for p in ("/livez", "/readyz", "/metrics", "/status"))


def test_a_failing_status_is_logged_once_per_failure_episode(caplog):
    """The caller keeps the set of failing managers: logged when status() starts failing,
    again only after it has worked in between."""
    class Flaky:
        name, works = "flaky", False

        def status(self):
            if not self.works:
                raise KeyError("gone")
            return {}

    flaky, failing = Flaky(), set()
    for works in (False, False, True, False):         # fails, fails, works, fails again
        flaky.works = works
        status_snapshot({}, None, None, (flaky,), failing)
    assert [r.getMessage() for r in caplog.records] == [
        "flaky: status() failed; /status shows the error"] * 2
    assert failing == {"flaky"}


def loop_agent(**env):
    """An agent whose loop is in sync and applied, with a policy manager that has a
    status() (whose calls it counts) and one that has none."""
    agent = agent_mod.Agent(config_mod.load({"FELIX_HOSTNAME": "h1", **env}, {}),
                            SimpleNamespace(), {}, {})
    policy = Manager("policy", {"chains": 1})
    agent.managers = (policy, NoStatus())
    agent.in_sync = agent.links.synced = True
    agent.health.in_sync = agent.health.datastore_in_sync = agent.health.applied = True
    return agent, policy


def turn(agent):
    agent.post(None)                # the loop wakes at once, with nothing to apply
    agent._turn()


def test_the_agent_loop_builds_the_snapshot_and_refreshes_it_between_batches(monkeypatch):
    """After a status publish, and then at most STATUS_REFRESH_SECS apart while no batch
    comes (ExaBGP acknowledges announcements in its own thread, posting nothing), while
    the health server runs."""
    agent, policy = loop_agent()
    agent._http = serve(agent.health, agent.metrics, "127.0.0.1", 0)   # as run() does
    try:
        assert agent.health.status()["managers"] == {}      # nothing built yet
        turn(agent)                 # the status is dirty at start: published, snapshot built
        st = agent.health.status()
        assert st["managers"] == {"policy": {"chains": 1}} and st["host"] == "h1"
        assert st["endpoints"] == {"up": 0, "down": 0, "error": 0}
        policy._status["chains"] = 2
        turn(agent)                 # no batch, and the snapshot is fresh: left alone
        assert agent.health.status()["managers"]["policy"]["chains"] == 1
        monkeypatch.setattr(agent_mod, "STATUS_REFRESH_SECS", 0.0)
        turn(agent)                 # no batch, but the snapshot is due: rebuilt
        assert agent.health.status()["managers"]["policy"]["chains"] == 2
    finally:
        agent._http.shutdown()
        agent._http.server_close()


def test_the_agent_loop_builds_no_snapshot_when_no_health_port_is_served(monkeypatch):
    """HealthPort 0: no server, nobody can read /status, so nothing builds it, neither
    after a publish nor between batches."""
    agent, policy = loop_agent(FELIX_HEALTH_PORT="0")
    assert not agent.config.health_port and agent._http is None
    monkeypatch.setattr(agent_mod, "STATUS_REFRESH_SECS", 0.0)
    turn(agent)                     # the status is dirty at start: published
    turn(agent)                     # no batch, and a snapshot would be due
    assert policy.calls == 0
    assert agent.health.status()["managers"] == {} and agent.health.status()["endpoints"] is None
