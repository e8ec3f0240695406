"""FV fixtures: a real embedded etcd, namespaces that are always removed, the agent."""

import os
from contextlib import contextmanager

import pytest
from agentkit import BgpAgent
from ctlkit import Ctl

from bgp.lab import Bird
from felix_py.datastore.client import EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.datastore.keys import KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.lab import netns as nsmod
from felix_py.lab.processes import AgentProcess


def pytest_collection_modifyitems(items):
    for item in items:
        if "/fv/" in str(item.fspath):
            item.add_marker(pytest.mark.fv)


@pytest.fixture(scope="session", autouse=True)
def _require_root():
    if os.geteuid() != 0:
        pytest.fail("FV tests need root (network namespaces, iptables); run them as root")


@pytest.fixture(scope="session")
def etcd():
    server = EmbeddedEtcd().start()
    yield server
    server.destroy()


@pytest.fixture
def client(etcd):
    c = EtcdClient(etcd.endpoint)
    yield c
    c.close()


@pytest.fixture
def layout(prefix):
    return KeyLayout(prefix)


@pytest.fixture
def registry(client, layout, prefix):
    yield Registry(client, layout)
    client.delete_prefix(prefix + "/")


@pytest.fixture
def netns_factory():
    """make(prefix) -> a new namespace; every one is deleted after the test, pass or fail."""
    made: list[nsmod.Netns] = []

    def make(prefix: str = "ft") -> nsmod.Netns:
        ns = nsmod.Netns(nsmod.unique_name(prefix)).create()
        made.append(ns)
        return ns

    make.made = made
    yield make
    for ns in reversed(made):
        ns.delete()


@pytest.fixture
def workload_factory(netns_factory):
    """make(host_ns, name, host_ifname, ipv4) -> a Calico-style workload namespace."""
    def make(host, name, host_ifname, ipv4, mac=None):
        wl = nsmod.workload(host, name, host_ifname, ipv4,
                            ns_name=nsmod.unique_name(name), mac=mac)
        netns_factory.made.append(wl)
        return wl
    return make


@contextmanager
def _stopping(start):
    """A factory calling ``start``; whatever it started is stopped on leaving (a process
    with a ``stop()``: agents, BIRD)."""
    made = []

    def make(*args, **kwargs):
        made.append(start(*args, **kwargs))
        return made[-1]
    try:
        yield make
    finally:
        for x in made:
            x.stop()


@pytest.fixture
def agent_factory(etcd, prefix, tmp_path):
    """make(ns, hostname, cls=AgentProcess, **env) -> a started agent; all are stopped
    after the test."""
    def start(ns, hostname, cls=AgentProcess, **env):
        return cls(ns, hostname, etcd.unix_endpoint, prefix,
                   str(tmp_path / f"agent-{hostname}.log"), env).start()
    with _stopping(start) as make:
        yield make


@pytest.fixture
def agents(agent_factory):
    """make(ns, hostname, **env) -> a started agent with short BGP timers (``BgpAgent``)."""
    return lambda ns, hostname, **env: agent_factory(ns, hostname, cls=BgpAgent, **env)


@pytest.fixture
def host_factory(netns_factory):
    """make(name) -> a host namespace with an uplink to a stand-in ToR namespace holding its
    default route, as a real host has (proxy ARP for 169.254.1.1 needs a route to it)."""
    count = [0]

    def make(name="host"):
        count[0] += 1
        host = netns_factory(name)
        tor = netns_factory(f"{name}-up")
        nsmod.veth(host, "uplink", tor, "down")
        host.addr("uplink", f"192.0.2.{count[0] * 4 + 1}/30")
        tor.addr("down", f"192.0.2.{count[0] * 4 + 2}/30")
        host.run(f"ip route add default via 192.0.2.{count[0] * 4 + 2}")
        return host
    return make


ALLOW_ALL = {"inbound_rules": [{"action": "allow"}], "outbound_rules": [{"action": "allow"}]}


@pytest.fixture
def open_profile(registry):
    """An allow-all profile's id, for tests about routing rather than policy."""
    registry.set_profile("open", ALLOW_ALL)
    return "open"


@pytest.fixture
def birds(tmp_path):
    """make(ns, name, conf) -> a started BIRD; all are stopped after the test."""
    with _stopping(lambda ns, name, conf: Bird(ns, name, str(tmp_path)).start(conf)) as make:
        yield make


@pytest.fixture
def ctl(client, etcd, prefix):
    """felixctl against the test etcd under the test's own prefix, cleaned up after."""
    yield Ctl(client, etcd.endpoint, prefix)
    client.delete_prefix(prefix + "/")
