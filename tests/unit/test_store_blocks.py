"""The store's index of this host's IPAM blocks (``Store.blocks.mine``), as block records
arrive through the syncer, change host, turn invalid and go; and ``owned_blocks`` on it."""

import copy
import ipaddress
import json
import pickle
import random

import pytest

from felix_py.calc.routes import blackhole_routes, owned_blocks
from felix_py.calc.store import Blocks, Store
from felix_py.datastore.keys import Kind
from felix_py.ipam.blocks import new_block
from policy.testing import Feeder

A, B, C = "10.65.0.0/26", "10.65.0.64/26", "10.65.1.0/26"
V6 = "fd00:65::/122"


def scan(store):
    """What owned_blocks returned before the index: every block of the cluster looked at."""
    return sorted(c for c, b in store.blocks.items() if b.host == store.hostname)


def feeder(host="h1"):
    store = Store(host)
    return store, Feeder(store)


def block_key(f, cidr):
    return f.layout.build(Kind.IPAM_BLOCK, version=ipaddress.ip_network(cidr).version,
                          cidr=cidr)


def put(f, cidr, host):
    """A block record for ``cidr`` affine to ``host`` (None: no affinity), as etcd holds it."""
    f.put(block_key(f, cidr), json.loads(new_block(cidr, host, False).to_json()))


def owned(store):
    got = owned_blocks(store)
    assert got == scan(store)         # the index agrees with a pass over all blocks
    return got


def test_a_block_for_this_host_is_owned_and_one_for_another_is_not():
    store, f = feeder()
    put(f, B, "h2")
    assert owned(store) == [] and set(store.blocks) == {B}
    put(f, V6, "h1")
    put(f, A, "h1")
    put(f, C, "h3")
    assert owned(store) == [A, V6]
    assert set(blackhole_routes(store)) == {A, V6}
    assert store.drain().ipam


def test_a_block_whose_affinity_moves_here_and_away_again():
    store, f = feeder()
    put(f, A, "h2")
    put(f, B, "h1")
    assert owned(store) == [B]
    put(f, A, "h1")                   # moved here
    assert owned(store) == [A, B]
    put(f, A, "h3")                   # and away
    assert owned(store) == [B]
    put(f, A, "h1")
    put(f, A, None)                   # affinity removed: nobody's
    assert owned(store) == [B]
    put(f, B, "h1x")                  # a host whose name only starts like ours
    assert owned(store) == []
    assert set(store.blocks) == {A, B}


def test_a_deleted_block_is_no_longer_owned():
    store, f = feeder()
    put(f, A, "h1")
    put(f, B, "h1")
    put(f, C, "h2")
    f.delete(block_key(f, A))
    assert owned(store) == [B] and set(store.blocks) == {B, C}
    f.delete(block_key(f, C))         # another host's
    f.delete(block_key(f, V6))        # never there
    assert owned(store) == [B] and set(store.blocks) == {B}
    f.delete(block_key(f, B))
    assert owned(store) == [] and store.blocks == {}


@pytest.mark.parametrize("bad", [
    "{not json",
    {"cidr": A, "affinity": "host:h1", "allocations": [None], "unallocated": [0]},
    {"cidr": C, "affinity": "host:h1", "allocations": [None] * 64,       # not the key's
     "unallocated": list(range(64))},
], ids=["malformed", "inconsistent", "other-cidr"])
def test_an_invalid_value_replacing_a_valid_one_drops_the_block(bad):
    store, f = feeder()
    put(f, A, "h1")
    put(f, B, "h1")
    store.drain()
    f.put(block_key(f, A), bad)
    assert block_key(f, A) in store.errors
    assert owned(store) == [B] and set(store.blocks) == {B}
    assert store.drain().ipam
    put(f, A, "h1")                   # valid again
    assert owned(store) == [A, B] and block_key(f, A) not in store.errors


def test_blocks_written_directly_keep_the_index():
    store = Store("h1")
    blocks = store.blocks
    blocks[A] = new_block(A, "h1", False)
    blocks.update({B: new_block(B, "h1", False), C: new_block(C, "h2", False)})
    assert owned(store) == [A, B]
    blocks.update([(C, new_block(C, "h1", False))], **{V6: new_block(V6, "h1", False)})
    assert owned(store) == [A, B, C, V6]
    del blocks[A]
    assert blocks.pop(B).host == "h1" and blocks.pop(B, None) is None
    assert owned(store) == [C, V6]
    blocks |= {C: new_block(C, "h2", False)}
    assert blocks is store.blocks and owned(store) == [V6]
    assert blocks.setdefault(V6, new_block(V6, "h2", False)).host == "h1"    # kept
    assert blocks.setdefault(A, new_block(A, "h1", False)).host == "h1"
    assert owned(store) == [A, V6]
    assert blocks.popitem()[0] == A   # the last one put
    assert owned(store) == [V6]
    blocks.clear()
    assert owned(store) == []
    with pytest.raises(KeyError):
        del blocks[A]
    with pytest.raises(AttributeError):
        blocks[A] = None              # not a block: nothing changes
    assert blocks == {} and owned(store) == []


def test_a_dict_put_in_place_of_the_stores_blocks_is_gone_through():
    store, f = feeder()
    put(f, A, "h1")
    store.blocks = {B: new_block(B, "h1", False), C: new_block(C, "h2", False)}
    assert owned_blocks(store) == [B]
    put(f, C, "h1")                   # the syncer's updates land in the new dict
    f.delete(block_key(f, B))
    assert owned_blocks(store) == [C]
    store.blocks = Blocks("h2", {A: new_block(A, "h1", False), B: new_block(B, "h2", False)})
    assert owned_blocks(store) == [A]  # an index for another host is not ours
    store.blocks = Blocks("h1")
    store.blocks[B] = new_block(B, "h1", False)
    store.hostname = "h2"
    assert owned_blocks(store) == []


def test_owned_blocks_does_not_go_through_the_clusters_blocks(monkeypatch):
    store, f = feeder()
    put(f, A, "h1")
    for i in range(1, 50):
        put(f, f"10.66.{i}.0/26", f"h{i + 1}")

    def everything():
        raise AssertionError("went through every block")
    monkeypatch.setattr(store.blocks, "items", everything)
    assert owned_blocks(store) == [A]
    assert set(blackhole_routes(store)) == {A}


def test_a_copy_has_its_own_index():
    store, f = feeder()
    put(f, A, "h1")
    for twin in (copy.copy(store.blocks), copy.deepcopy(store.blocks),
                 pickle.loads(pickle.dumps(store.blocks))):
        assert type(twin) is Blocks and twin.host == "h1" and twin.mine == {A}
        twin[B] = new_block(B, "h1", False)
        del twin[A]
        assert twin.mine == {B}
    assert store.blocks.mine == {A} and owned(store) == [A]


def test_the_index_follows_any_sequence_of_updates():
    rng = random.Random(7)
    store, f = feeder()
    cidrs = [f"10.67.{i}.0/26" for i in range(12)]
    for _ in range(600):
        cidr, op = rng.choice(cidrs), rng.random()
        if op < 0.5:
            put(f, cidr, rng.choice(["h1", "h2", "h3", None]))
        elif op < 0.7:
            f.delete(block_key(f, cidr))
        elif op < 0.8:
            f.put(block_key(f, cidr), {"cidr": cidr, "allocations": []})      # invalid
        elif op < 0.9:
            store.blocks[cidr] = new_block(cidr, rng.choice(["h1", "h2"]), False)
        else:
            store.blocks.pop(cidr, None)
        assert store.blocks.mine == set(scan(store))
    assert owned(store) == sorted(store.blocks.mine)
