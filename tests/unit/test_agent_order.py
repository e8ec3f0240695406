"""The agent's apply order: every batch's, a fresh host's first batch's, and the wiring
that makes workload routes wait for the policy guard."""

import tempfile

import pytest

from felix_py import config as config_mod
from felix_py.agent import ApplyOrder, Context, build_managers
from felix_py.datastore.keys import KeyLayout

EVERY_BATCH = ["bgp", "policy-guard", "interfaces", "policy", "routes", "bgp-announce"]
FRESH_HOST = ["bgp", "policy-guard", "routes", "bgp-announce", "interfaces", "policy"]


class Manager:
    def __init__(self, name, applied):
        self.name, self.applied = name, applied

    def apply(self):
        self.applied.append(self.name)


class Guard(Manager):
    """As PolicyGuard: whether the host is fresh is known once it has applied."""

    def __init__(self, applied, finds_chains):
        super().__init__("policy-guard", applied)
        self.finds_chains = finds_chains
        self.fresh_host = False

    def apply(self):
        super().apply()
        self.fresh_host = not self.finds_chains


def order_of(finds_chains: bool) -> tuple[ApplyOrder, list]:
    applied = []
    m = {n: Manager(n, applied) for n in EVERY_BATCH if n != "policy-guard"}
    guard = Guard(applied, finds_chains)
    head = (m["bgp"], guard)
    rest = (m["interfaces"], m["policy"])
    early = (m["routes"], m["bgp-announce"])
    return ApplyOrder(head, rest, early), applied


def run(order: ApplyOrder, first: bool) -> None:
    for m in order.batch(first):
        m.apply()


def test_a_fresh_host_routes_and_announces_before_policy_on_its_first_batch_only():
    order, applied = order_of(finds_chains=False)
    run(order, first=True)
    assert applied == FRESH_HOST
    applied.clear()
    run(order, first=False)             # later batches: policy before routes again
    assert applied == EVERY_BATCH


def test_a_host_with_chains_keeps_policy_before_routes_from_the_first_batch():
    order, applied = order_of(finds_chains=True)
    run(order, first=True)
    assert applied == EVERY_BATCH


@pytest.fixture
def ctx(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))      # BGP's run directory
    return Context(config_mod.load(env={}), "h1", lambda msg: None, client=None,
                   layout=KeyLayout())


def test_build_managers_orders_the_real_managers_and_gates_routes_on_the_guard(ctx):
    order = build_managers(ctx)
    try:
        assert [m.name for m in order.managers] == EVERY_BATCH
        assert [m.name for m in order.fresh_host] == FRESH_HOST
        assert order.guard is order.managers[1] and ctx.routes in order.managers
        assert not ctx.routes.gate()        # no workload route before the chains' skeleton
        order.guard.done = True
        assert ctx.routes.gate()
    finally:
        for m in order.managers:
            m.close()
