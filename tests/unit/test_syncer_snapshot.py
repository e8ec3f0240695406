"""The syncer's snapshot against a stand-in client: what reaches the sink when a read fails
half-way, and when its records are kept out of the cyclic collector."""

import gc
import json
from types import SimpleNamespace

import pytest

from felix_py.datastore.client import DatastoreUnavailable
from felix_py.datastore.keys import KeyLayout
from felix_py.datastore.syncer import Syncer, Updates

LAYOUT = KeyLayout("/calico")


@pytest.fixture(autouse=True)
def unfrozen():
    """The rest of the test run keeps its objects collectable."""
    yield
    gc.unfreeze()


def kv(i, rev=1):
    key = f"/calico/v1/host/h1/workload/k8s/w{i}/endpoint/eth0"
    value = json.dumps({"name": f"cali{i}", "ipv4_nets": [f"10.65.{i // 256}.{i % 256}/32"]})
    return SimpleNamespace(key=key.encode(), value=value.encode(), mod_revision=rev)


class Client:
    """Pages of 250; the first read fails after ``fail_after`` pages."""

    def __init__(self, kvs, fail_after=None):
        self.kvs, self.fail_after = kvs, fail_after

    def iter_prefix(self, prefix, revision=None):
        for n, start in enumerate(range(0, len(self.kvs), 250)):
            if self.fail_after is not None and n == self.fail_after:
                self.fail_after = None
                raise DatastoreUnavailable("etcd went away")
            yield self.kvs[start:start + 250], 9


def test_keys_read_before_a_failed_page_are_delivered_by_the_retry():
    got = []
    # 500 keys go in one batch; the next 250 wait in the following one when the read fails.
    syncer = Syncer(Client([kv(i) for i in range(900)], fail_after=3), LAYOUT, ["/calico/"],
                    lambda m: got.extend(u.key for u in m.items) if isinstance(m, Updates)
                    else None)
    try:
        syncer._snapshot()
    except DatastoreUnavailable:
        pass
    syncer._snapshot()
    assert len(set(got)) == 900


def collectable(records):
    """How many of ``records`` the cyclic collector still looks at (not frozen)."""
    ids = {id(o) for o in gc.get_objects()}
    return sum(id(r) in ids for r in records)


def test_only_a_first_snapshot_that_completes_freezes_its_records():
    held = []                           # a consumer keeps its records
    syncer = Syncer(Client([kv(i) for i in range(300)], fail_after=1), LAYOUT, ["/calico/"],
                    held.append)
    frozen = gc.get_freeze_count()
    try:
        syncer._snapshot()
    except DatastoreUnavailable:
        pass
    assert gc.get_freeze_count() == frozen and gc.isenabled()       # failed: nothing frozen
    syncer._snapshot()                  # a first snapshot still: nothing reached the sink
    first = [u.record for m in held if isinstance(m, Updates) for u in m.items]
    assert len(first) == 300 and collectable(first) == 0 and gc.isenabled()
    syncer.client = Client([kv(i, rev=2) for i in range(300)])
    held.clear()
    syncer._snapshot()                  # a resync: its new records stay collectable
    again = [u.record for m in held if isinstance(m, Updates) for u in m.items]
    assert len(again) == 300 and collectable(again) == 300 and gc.isenabled()
