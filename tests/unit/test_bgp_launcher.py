"""bgp.launcher: its Neighbor.remove_self gives what ExaBGP's own gives, without the deep
copy; the reactor runs more API steps per turn; UPDATEs list their routes in ExaBGP's
order; nothing is changed that the launcher was not written for."""

import random
import subprocess
import time
import types

import pytest

from bgp import launcher
from bgp.driver import Spare, launcher_argv


@pytest.fixture
def exabgp(monkeypatch):
    """ExaBGP's API parser and Neighbor class, in this process; what the launcher changes
    is restored afterwards."""
    monkeypatch.setenv("EXABGP_ENVFILE", "/dev/null")
    from exabgp.bgp.neighbor import Neighbor
    from exabgp.configuration.configuration import Configuration
    from exabgp.environment import getenv
    from exabgp.logger import log
    from exabgp.protocol.ip import IP
    from exabgp.reactor.asynchronous import ASYNC

    from exabgp.bgp.message.update import Update

    log.init(getenv())
    monkeypatch.setattr(Neighbor, "remove_self", Neighbor.remove_self)
    monkeypatch.setattr(Update, "_split_nlris", Update._split_nlris)
    monkeypatch.setattr(ASYNC, "LIMIT", ASYNC.LIMIT)

    def neighbor(local):
        n = Neighbor()
        n["local-address"] = n["router-id"] = IP.create(local)
        return n

    def parse(command):
        """The changes ExaBGP makes of an API announcement (``announce`` left out)."""
        conf = Configuration([])
        assert conf.partial("static", command)
        conf.scope.to_context()
        return conf.scope.pop_routes()

    return Neighbor, neighbor, parse


def attributes(change):
    return {code: str(value) for code, value in change.attributes.items()}


def test_next_hop_self_resolves_per_neighbour_as_exabgp_does(exabgp):
    Neighbor, neighbor, parse = exabgp
    tor1, tor2 = neighbor("10.1.0.12"), neighbor("10.2.0.12")      # a dual-homed host
    changes = parse("attributes next-hop self community 64512:1 nlri 10.65.0.1/32 "
                    "10.65.0.2/32")
    expected = [(Neighbor.remove_self(n, c), n) for c in changes for n in (tor1, tor2)]
    original = Neighbor.remove_self
    assert launcher.install() == []
    assert Neighbor.remove_self is not original
    for want, n in expected:
        change = next(c for c in changes if c.index() == want.index())
        got = Neighbor.remove_self(n, change)
        assert got.extensive() == want.extensive()
        assert str(got.nlri.nexthop) == str(n["local-address"])
        assert attributes(got) == attributes(want)
        assert got.attributes.index() == want.attributes.index()
    # The parsed change, shared by both neighbours, still says "self".
    assert all(c.nlri.nexthop.SELF for c in changes)
    a, b = (Neighbor.remove_self(n, changes[0]) for n in (tor1, tor2))
    assert (str(a.nlri.nexthop), str(b.nlri.nexthop)) == ("10.1.0.12", "10.2.0.12")
    assert a.nlri is not b.nlri and a.attributes is not b.attributes
    # One command's routes share one resolved attribute set per neighbour; the next
    # command's attributes are resolved afresh.
    assert Neighbor.remove_self(tor1, changes[1]).attributes is a.attributes
    [later] = parse("attributes next-hop self community 64512:2 nlri 10.65.0.3/32")
    c = Neighbor.remove_self(tor1, later)
    assert c.attributes is not a.attributes
    assert "64512:2" in c.extensive() and str(c.nlri.nexthop) == "10.1.0.12"
    assert "64512:1" in Neighbor.remove_self(tor1, changes[0]).extensive()


def test_an_explicit_next_hop_takes_exabgps_own_path(exabgp):
    Neighbor, neighbor, parse = exabgp
    n = neighbor("10.1.0.12")
    [change] = parse("attributes next-hop 10.1.0.99 nlri 10.65.0.1/32")
    want = Neighbor.remove_self(n, change)
    assert launcher.install() == []
    got = Neighbor.remove_self(n, change)
    assert got.extensive() == want.extensive() == "10.65.0.1/32 next-hop 10.1.0.99"
    assert got is not change


def test_the_reactor_runs_more_api_steps_per_turn(exabgp):
    from exabgp.reactor.asynchronous import ASYNC
    assert ASYNC.LIMIT == 50
    assert launcher.install() == []
    assert ASYNC.LIMIT == launcher.API_STEPS == 500


def test_the_routes_of_an_update_keep_exabgps_order_for_fewer_comparisons(exabgp,
                                                                         monkeypatch):
    from exabgp.bgp.message.update import Update
    from exabgp.bgp.message import Action
    from exabgp.bgp.message.update.nlri.nlri import NLRI
    from exabgp.protocol.family import AFI, SAFI
    Neighbor, neighbor, parse = exabgp
    prefixes = [f"10.{i % 7}.{i % 251}.{i % 13}/32" for i in range(300)]
    random.Random(5).shuffle(prefixes)
    tor = neighbor("10.1.0.12")
    parsed = parse("attributes next-hop self nlri " + " ".join(prefixes))
    for c in parsed:
        c.nlri.action = Action.ANNOUNCE          # as ExaBGP's announce command does
    changes = [Neighbor.remove_self(tor, c) for c in parsed]
    negotiated = types.SimpleNamespace(families=[(AFI.ipv4, SAFI.unicast)])

    compared = [0]
    lt = NLRI.__lt__

    def counting_lt(a, b):
        compared[0] += 1
        return lt(a, b)
    monkeypatch.setattr(NLRI, "__lt__", counting_lt)

    def order():
        compared[0] = 0
        update = Update([c.nlri for c in changes], changes[0].attributes)
        nlris, mp = update._split_nlris(negotiated)
        assert mp == {}
        return [n.index() for n in nlris], compared[0]
    want, before = order()
    assert launcher.install() == []
    got, after = order()
    assert got == want and len(want) == 300 and want == sorted(want)
    assert before > 1500 and after < 300      # ExaBGP's sort finds them in order


def test_what_exabgp_changed_is_left_alone(exabgp, monkeypatch):
    from exabgp.bgp.message.update import Update
    from exabgp.reactor.asynchronous import ASYNC
    Neighbor, _, _ = exabgp
    before, split = Neighbor.remove_self, Update._split_nlris
    monkeypatch.setattr(launcher, "ORIGINAL", launcher.ORIGINAL.replace("deepcopy", "copy"))
    monkeypatch.setattr(ASYNC, "LIMIT", 64)
    monkeypatch.setattr(launcher, "SORTED_NLRIS", "for nlri in self.nlris:")
    problems = launcher.install()
    assert len(problems) == 3
    assert "Neighbor.remove_self is not the one this launcher replaces" in problems[0]
    assert "runs 64 API steps per turn, not 50" in problems[1]
    assert "Update._split_nlris does not sort as this launcher expects" in problems[2]
    assert Neighbor.remove_self is before and ASYNC.LIMIT == 64
    assert Update._split_nlris is split


def test_the_installed_exabgp_runs_with_every_change():
    r = subprocess.run(launcher_argv() + ["version"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "ExaBGP : 5.0." in r.stdout
    assert launcher.WARNING_TAG not in r.stderr


def test_a_spare_runs_exabgp_as_it_is_told_later():
    spare = Spare()
    time.sleep(0.5)                              # ExaBGP imported meanwhile, waiting
    proc = spare.take(["env"], {"exabgp.tcp.bind": "10.9.9.9"}, "/")
    out = proc.stdout.read().decode()
    assert proc.wait(60) == 0
    assert "bind = '10.9.9.9'" in out            # the environment it was given
    assert launcher.WARNING_TAG not in out       # and every change made
    assert spare.take(["env"], {}, "/") is None  # one process, taken once


def test_a_spare_never_needed_ends_when_let_go_or_when_its_agent_goes():
    spare = Spare()
    proc = spare.proc
    spare.close()
    assert proc.returncode is not None and spare.proc is None
    assert spare.take(["version"], {}, "/") is None
    # The agent gone without a word (its end of the pipe closed): the spare exits by itself.
    orphan = subprocess.Popen(launcher_argv() + ["--spare"], stdin=subprocess.PIPE)
    orphan.stdin.close()
    assert orphan.wait(60) == 0
