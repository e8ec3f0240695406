"""The syncer against a real etcd: order, compaction, outages, big transactions."""

import gc
import json
import threading
import time
import weakref

import pytest

from felix_py.datastore.client import DatastoreUnavailable, EtcdClient
from felix_py.datastore.embedded import EmbeddedEtcd
from felix_py.datastore.keys import EndpointId, KeyLayout
from felix_py.datastore.registration import Registry
from felix_py.datastore.syncer import InSync, Syncer, Updates, View
from felix_py.lab.netns import wait_for


def etcd_contents(client, prefix):
    return {k for k, _, _ in client.get_prefix(prefix + "/")[0]}


def endpoint(i):
    return {"name": f"cali{i}", "ipv4_nets": [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}/32"]}


class Recorder(View):
    """A View that also keeps every update in the order it arrived."""

    def __init__(self):
        super().__init__()
        self.log = []

    def __call__(self, msg):
        if isinstance(msg, Updates):
            self.log.extend(("del" if u.deleted else "put", u.key) for u in msg.items)
        super().__call__(msg)


def test_snapshot_then_watch_in_order(client, layout, registry, prefix):
    eids = [EndpointId("h1", "k8s", f"w{i}", "eth0") for i in range(5)]
    for e in eids[:3]:
        registry.register_endpoint(e, endpoint(1))
    rec = Recorder()
    syncer = Syncer(client, layout, [prefix + "/"], rec).start()
    try:
        assert rec.in_sync.wait(10)
        assert len(rec.records) == 3
        registry.register_endpoint(eids[3], endpoint(3))
        registry.remove_endpoint(eids[0])
        registry.register_endpoint(eids[4], endpoint(4))
        registry.update_endpoint(eids[4], state="inactive")
        wait_for(lambda: len(rec.log) >= 7, what="watch events")
        assert rec.log[3:] == [("put", layout.endpoint(eids[3])),
                               ("del", layout.endpoint(eids[0])),
                               ("put", layout.endpoint(eids[4])),
                               ("put", layout.endpoint(eids[4]))]
        assert rec.records[layout.endpoint(eids[4])].state == "inactive"
        assert set(rec.records) == etcd_contents(client, prefix)
    finally:
        syncer.stop()


def test_bad_values_are_skipped_and_reported(client, layout, registry, prefix):
    good = EndpointId("h1", "k8s", "good", "eth0")
    registry.register_endpoint(good, endpoint(1))
    client.put(layout.endpoint(EndpointId("h1", "k8s", "bad", "eth0")), "{oops")
    client.put(prefix + "/v1/host/h1/workload/short", "{}")
    client.put(prefix + "/v1/policy/profile/p/rules", json.dumps(
        {"inbound_rules": [{"protocol": "tcp", "dst_ports": [70000]}]}))
    client.put(layout.endpoint(EndpointId("h1", "k8s", "huge", "eth0")), "x" * (1024 * 1024))
    view = View()
    syncer = Syncer(client, layout, [prefix + "/"], view).start()
    try:
        assert view.in_sync.wait(10)
        assert set(view.records) == {layout.endpoint(good)}
        assert len(view.errors) == 4
        assert "dst_ports" in str(view.errors[prefix + "/v1/policy/profile/p/rules"])
        # A value that becomes good later arrives as a record.
        registry.register_endpoint(EndpointId("h1", "k8s", "bad", "eth0"), endpoint(2))
        wait_for(lambda: len(view.records) == 2, what="fixed value")
    finally:
        syncer.stop()


def test_compaction_past_the_watch_forces_a_resync(client, layout, registry, prefix):
    eids = [EndpointId("h1", "k8s", f"c{i}", "eth0") for i in range(6)]
    for e in eids[:3]:
        registry.register_endpoint(e, endpoint(1))

    class LateWatcher(Syncer):
        """Between its first snapshot and its watch, the world moves on and etcd compacts
        the history the watch would start from (as when a slow syncer falls behind)."""
        done = False

        def _snapshot(self):
            rev = super()._snapshot()
            if not LateWatcher.done:
                LateWatcher.done = True
                registry.remove_endpoint(eids[0])
                for e in eids[3:]:
                    registry.register_endpoint(e, endpoint(2))
                self.client.compact(self.client.header_revision())
            return rev

    view = View()
    syncer = LateWatcher(client, layout, [prefix + "/"], view).start()
    try:
        wait_for(lambda: len(view.syncs) >= 2, what="a second snapshot")
        assert view.syncs[1].deleted == 1          # the missed deletion is reported
        assert view.syncs[1].changed == 3
        assert set(view.records) == etcd_contents(client, prefix)
        assert syncer.stats.resyncs >= 1
        registry.remove_endpoint(eids[5])         # and the watch runs again afterwards
        wait_for(lambda: set(view.records) == etcd_contents(client, prefix), what="watch")
    finally:
        syncer.stop()


def test_etcd_restart_mid_stream_loses_nothing(tmp_path, prefix):
    server = EmbeddedEtcd(data_dir=str(tmp_path / "etcd")).start()
    client = EtcdClient(server.endpoint, timeout=2)
    layout = KeyLayout(prefix)
    registry = Registry(client, layout)
    view = View()
    syncer = Syncer(client, layout, [prefix + "/"], view, idle_check=1).start()
    stop = threading.Event()
    written = []

    def writer():
        i = 0
        while not stop.is_set():
            e = EndpointId("h1", "k8s", f"s{i}", "eth0")
            try:
                registry.register_endpoint(e, endpoint(i))
                if i % 3 == 0:
                    registry.remove_endpoint(e)
                written.append(i)
                i += 1
            except DatastoreUnavailable:
                time.sleep(0.2)     # a real orchestrator retries
            time.sleep(0.02)

    t = threading.Thread(target=writer)
    try:
        assert view.in_sync.wait(10)
        t.start()
        time.sleep(1)
        server.stop()
        time.sleep(10)
        server.start()
        time.sleep(2)
        stop.set()
        t.join(10)
        wait_for(lambda: set(view.records) == etcd_contents(client, prefix), timeout=30,
                 what="view equal to etcd after the outage")
        assert len(view.syncs) >= 2, "the syncer must have resynced after the outage"
        assert len(written) > 20
    finally:
        stop.set()
        syncer.stop()
        client.close()
        server.destroy()


def test_thousand_endpoints_in_one_transaction(client, layout, registry, prefix):
    view = View()
    syncer = Syncer(client, layout, [prefix + "/"], view).start()
    try:
        assert view.in_sync.wait(10)
        rev_before = client.header_revision()
        registry.register_endpoints([(EndpointId("h1", "k8s", f"t{i}", "eth0"), endpoint(i))
                                     for i in range(1000)])
        assert client.header_revision() == rev_before + 1     # one transaction
        wait_for(lambda: len(view.records) == 1000, what="1000 endpoints")
        assert not view.errors
    finally:
        syncer.stop()


def test_paged_read_is_one_revision_and_misses_nothing(client, layout, registry, prefix):
    registry.register_endpoints([(EndpointId("h1", "k8s", f"p{i:04d}", "eth0"), endpoint(i))
                                 for i in range(2345)])
    expected = sorted(etcd_contents(client, prefix))
    pages, revisions, seen = 0, set(), []
    for chunk, revision in client.iter_prefix(prefix + "/", page=700):
        if pages == 0:      # written after the first page: not part of this read
            registry.register_endpoint(EndpointId("h1", "k8s", "late", "eth0"), endpoint(9999))
            registry.remove_endpoint(EndpointId("h1", "k8s", "p2000", "eth0"))
        pages += 1
        revisions.add(revision)
        seen.extend(kv.key.decode() for kv in chunk)
    assert seen == expected and len(seen) == 2345
    assert pages >= 4 and len(revisions) == 1


def test_unreachable_etcd_names_the_endpoint():
    client = EtcdClient("http://127.0.0.1:1", timeout=1)
    with pytest.raises(DatastoreUnavailable, match=r"127\.0\.0\.1:1"):
        client.get("/calico/v1/Ready")
    messages = []
    syncer = Syncer(client, KeyLayout(), ["/calico/"], messages.append, max_backoff=0.5).start()
    try:
        wait_for(lambda: len([m for m in messages if not isinstance(m, InSync)]) >= 2,
                 what="retries reported")
        assert "127.0.0.1:1" in messages[0].message
    finally:
        syncer.stop()
        client.close()


def test_bad_writes_are_refused_and_nothing_is_written(client, layout, registry, prefix):
    from felix_py.model import ModelError
    items = [(EndpointId("h1", "k8s", f"b{i}", "eth0"), endpoint(i)) for i in range(5)]
    items.append((EndpointId("h1", "k8s", "bad", "eth0"), {"name": "x", "ipv4_nets": ["1.2.3.0/24"]}))
    with pytest.raises(ModelError, match="ipv4_nets"):
        registry.register_endpoints(items)
    assert etcd_contents(client, prefix) == set()


def test_snapshot_records_are_freed_when_the_consumer_drops_them(client, layout, registry,
                                                                  prefix):
    """The snapshot keeps its records out of the cyclic collector (gc.freeze), so only
    reference counting can free them: nothing may keep them alive or in a cycle."""
    registry.register_endpoints([(EndpointId("h1", "k8s", f"f{i}", "eth0"), endpoint(i))
                                 for i in range(300)])
    frozen_before = gc.get_freeze_count()
    view = View()
    syncer = Syncer(client, layout, [prefix + "/"], view).start()
    try:
        assert view.in_sync.wait(10)
    finally:
        syncer.stop()
    refs = [weakref.ref(r) for r in view.records.values()]
    assert len(refs) == 300
    assert gc.get_freeze_count() > frozen_before
    del view, syncer
    try:
        assert [r for r in refs if r() is not None] == []
    finally:
        gc.unfreeze()                   # the rest of the test run stays collectable
