"""Block arithmetic and the IPAM records in Calico's etcd format."""

import ipaddress
import json

import pytest

from felix_py import model
from felix_py.datastore.keys import Kind, KeyLayout
from felix_py.ipam import blocks
from felix_py.ipam.errors import IpamError

L = KeyLayout()


def decode(kind, value, **parts):
    key = L.build(kind, **parts)
    return model.decode(L.parse(key), json.dumps(value).encode())


def pool(cidr, size=None):
    return model.Pool(cidr=cidr, block_size=size)


# -- records ---------------------------------------------------------------------------------

def test_block_reads_calicos_format_and_writes_it_back():
    calico = {"cidr": "10.65.0.0/30", "affinity": "host:h1", "strictAffinity": True,
              "allocations": [0, None, 1, None], "unallocated": [1, 3],
              "attributes": [{"handle_id": "a", "secondary": None},
                             {"handle_id": "b", "secondary": {"host": "h2"}}],
              "deleted": False}
    b = decode(Kind.IPAM_BLOCK, calico, version=4, cidr="10.65.0.0/30")
    assert b.host == "h1" and b.strict_affinity
    assert b.attributes[0].secondary == {}
    assert json.loads(b.to_json())["strictAffinity"] is True
    assert json.loads(b.to_json())["allocations"] == [0, None, 1, None]


@pytest.mark.parametrize("change, field_msg", [
    ({"allocations": [None] * 3}, "3 entries for a block of 4"),
    ({"unallocated": [0, 1, 2]}, "unallocated must list each free ordinal"),
    ({"unallocated": [1, 1, 3]}, "exactly once"),
    ({"allocations": [5, None, None, None], "unallocated": [1, 2, 3]}, "attribute 5"),
])
def test_inconsistent_block_is_rejected_with_its_key(change, field_msg):
    value = {"cidr": "10.65.0.0/30", "allocations": [None] * 4, "unallocated": [0, 1, 2, 3],
             "attributes": [], **change}
    with pytest.raises(model.ModelError) as e:
        decode(Kind.IPAM_BLOCK, value, version=4, cidr="10.65.0.0/30")
    assert field_msg in str(e.value)
    assert "/calico/ipam/v2/assignment/ipv4/block/10.65.0.0-30" in str(e.value)


def test_block_cidr_must_match_its_key():
    value = {"cidr": "10.65.0.4/30", "allocations": [None] * 4, "unallocated": [0, 1, 2, 3]}
    with pytest.raises(model.ModelError, match="does not match"):
        decode(Kind.IPAM_BLOCK, value, version=4, cidr="10.65.0.0/30")


def test_handle_affinity_and_config_in_calicos_format():
    h = decode(Kind.IPAM_HANDLE, {"block": {"10.65.0.0/26": 2}, "deleted": False}, handle="x")
    assert h.block == {"10.65.0.0/26": 2}
    a = decode(Kind.IPAM_AFFINITY, {"state": "confirmed", "deleted": False}, host="h",
               version=4, cidr="10.65.0.0/26")
    assert a.state == "confirmed"
    c = decode(Kind.IPAM_CONFIG, {"strict_affinity": True, "auto_allocate_blocks": True,
                                  "maxBlocksPerHost": 4})
    assert c.strict_affinity and c.max_blocks_per_host == 4


# -- block sizes and candidates --------------------------------------------------------------

def test_default_block_sizes_are_calicos():
    assert blocks.block_size(pool("10.65.0.0/16")) == 26
    assert blocks.block_size(pool("fd00:65::/64")) == 122
    assert blocks.block_size(pool("10.65.0.0/16", 24)) == 24


@pytest.mark.parametrize("cidr, size, msg", [
    ("10.65.0.0/16", 16, "outside 20-32"),
    ("fd00::/64", 100, "outside 116-128"),
    ("10.65.0.0/28", None, "larger than the pool"),
])
def test_unusable_block_size_is_an_ipam_error(cidr, size, msg):
    with pytest.raises(IpamError, match=msg):
        blocks.block_size(pool(cidr, size))


def test_candidates_cover_every_block_once_from_a_per_host_offset():
    p = pool("10.65.0.0/24", 28)
    a = list(blocks.candidate_blocks(p, "host-a"))
    b = list(blocks.candidate_blocks(p, "host-b"))
    assert sorted(a) == sorted(b) == list(ipaddress.ip_network("10.65.0.0/24").subnets(new_prefix=28))
    assert a[0] != b[0]                       # different hosts start in different places
    assert a == list(blocks.candidate_blocks(p, "host-a"))   # and always the same place


def test_candidates_in_a_small_ipv6_pool_stay_ipv6():
    got = list(blocks.candidate_blocks(pool("::/120", 122), "h"))
    assert {n.version for n in got} == {6} and len(got) == 4


def test_block_of_uses_the_pools_block_size():
    assert str(blocks.block_of(pool("10.65.0.0/16"), ipaddress.ip_address("10.65.3.77"))) \
        == "10.65.3.64/26"


# -- assign and release ----------------------------------------------------------------------

def test_assign_takes_free_addresses_in_order_and_records_the_holder():
    b = blocks.new_block("10.65.0.0/29", "h1", False)
    b, got = blocks.assign(b, 3, "c1", {"host": "h1"})
    assert got == [0, 1, 2]
    assert [blocks.address(b, o) for o in got] == ["10.65.0.0", "10.65.0.1", "10.65.0.2"]
    assert blocks.used_count(b) == 3 and blocks.free_count(b) == 5
    assert blocks.holder(b, 1).handle_id == "c1"
    b, got = blocks.assign(b, 10, "c2", {})
    assert got == [3, 4, 5, 6, 7] and blocks.free_count(b) == 0
    assert blocks.assign(b, 1, "c3", {}) == (b, [])


def test_release_frees_exactly_the_handles_addresses_and_reuses_them_last():
    b = blocks.new_block("10.65.0.0/29", "h1", False)
    b, _ = blocks.assign(b, 2, "c1", {})
    b, _ = blocks.assign(b, 2, "c2", {})
    b = blocks.release(b, blocks.handle_ordinals(b, "c1"))
    assert blocks.handle_ordinals(b, "c1") == []
    assert blocks.handle_ordinals(b, "c2") == [2, 3]
    assert b.unallocated == [4, 5, 6, 7, 0, 1]
    # The released holder's attribute is gone and the rest renumbered.
    assert [a.handle_id for a in b.attributes] == ["c2"]
    assert b.allocations[2] == 0
    assert blocks.release(b, [0]) == b        # already free: no change


def test_assign_ordinal_takes_one_given_address_or_refuses():
    b = blocks.new_block("10.65.0.0/29", None, False)
    b = blocks.assign_ordinal(b, 5, "static", {})
    assert blocks.holder(b, 5).handle_id == "static"
    assert 5 not in b.unallocated
    assert blocks.assign_ordinal(b, 5, "other", {}) is None


def test_allocations_with_equal_attributes_share_one_entry():
    b = blocks.new_block("10.65.0.0/29", "h1", False)
    b, _ = blocks.assign(b, 1, "c1", {"k": "v"})
    b, _ = blocks.assign(b, 1, "c1", {"k": "v"})
    assert len(b.attributes) == 1 and b.allocations[:2] == [0, 0]


def test_ordinal_outside_the_block_is_refused():
    b = blocks.new_block("10.65.0.0/29", None, False)
    assert blocks.ordinal(b, "10.65.0.7") == 7
    with pytest.raises(ValueError, match="not in block"):
        blocks.ordinal(b, "10.65.0.8")


def test_giving_up_a_claim_depends_on_what_the_block_holds():
    empty = blocks.new_block("10.65.0.0/29", "h1", True)
    held, _ = blocks.assign(empty, 2, "wl", {"host": "h2"})
    assert blocks.affinity_release(empty, "h1", False) == blocks.RELEASED
    assert blocks.affinity_release(held, "h1", False) == blocks.IN_USE
    assert blocks.affinity_release(held, "h1", True) == blocks.UNASSIGNED
    # Only the claim key is left to remove: the block is gone, or another host's.
    assert blocks.affinity_release(None, "h1", True) == blocks.STALE
    assert blocks.affinity_release(empty, "h9", False) == blocks.STALE
    kept = blocks.unassigned(held)
    assert kept.host is None and "affinity" not in json.loads(kept.to_json())
    assert kept.allocations == held.allocations and kept.strict_affinity
