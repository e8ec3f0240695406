"""Block arithmetic: which blocks a pool holds, and handing out and taking back addresses
inside one block record.  Pure functions over ``model.Block``; nothing here touches etcd.

A block's addresses are numbered by *ordinal* (offset from the block's first address).
``allocations[ordinal]`` indexes ``attributes`` (who holds it) or is None when free, and
``unallocated`` lists the free ordinals in the order they are handed out: a released
address goes to the back, so it is the last to be reused.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Iterator

from felix_py import model
from felix_py.ipam.errors import IpamError

# Calico's defaults and limits: a /26 (/122) holds 64 addresses; a block must be small
# enough for one etcd value and large enough to aggregate routes.
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_LIMITS = {4: (20, 32), 6: (116, 128)}

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockSizeError(IpamError):
    """A pool whose block size cannot work."""


def block_size(pool: model.Pool) -> int:
    """The prefix length of the pool's blocks (its ``block_size``, or Calico's default)."""
    net = ipaddress.ip_network(pool.cidr)
    size = pool.block_size if pool.block_size is not None else DEFAULT_BLOCK_SIZE[net.version]
    low, high = BLOCK_SIZE_LIMITS[net.version]
    if not low <= size <= high:
        raise BlockSizeError(f"pool {pool.cidr}: block_size {size} is outside {low}-{high} "
                             f"for IPv{net.version}; set the pool's block_size in that range")
    if size < net.prefixlen:
        raise BlockSizeError(f"pool {pool.cidr}: block_size {size} is larger than the pool; "
                             f"use a block_size of at least {net.prefixlen}")
    return size


def block_of(pool: model.Pool, ip: IpAddress) -> IpNetwork:
    """The block of ``pool`` that holds ``ip``."""
    return ipaddress.ip_network(f"{ip}/{block_size(pool)}", strict=False)


def candidate_blocks(pool: model.Pool, hostname: str) -> Iterator[IpNetwork]:
    """Every block of the pool, starting at an offset derived from the host name so that
    hosts claiming blocks at the same moment rarely race for the same one."""
    net = ipaddress.ip_network(pool.cidr)
    size = block_size(pool)
    count = 1 << (size - net.prefixlen)
    step = 1 << (net.max_prefixlen - size)
    start = int.from_bytes(hashlib.sha1(hostname.encode()).digest()[:8], "big") % count
    base = int(net.network_address)
    for i in range(count):
        first = base + ((start + i) % count) * step
        yield type(net)((first, size))


def new_block(cidr: IpNetwork | str, host: str | None, strict_affinity: bool) -> model.Block:
    net = ipaddress.ip_network(cidr)
    return model.Block(cidr=str(net), affinity=f"host:{host}" if host else None,
                       strict_affinity=strict_affinity,
                       allocations=[None] * net.num_addresses,
                       unallocated=list(range(net.num_addresses)), attributes=[])


def address(block: model.Block, ordinal: int) -> str:
    return str(ipaddress.ip_network(block.cidr).network_address + ordinal)


def ordinal(block: model.Block, ip: IpAddress | str) -> int:
    net = ipaddress.ip_network(block.cidr)
    ip = ipaddress.ip_address(ip)
    if ip not in net:
        raise ValueError(f"{ip} is not in block {block.cidr}")
    return int(ip) - int(net.network_address)


def free_count(block: model.Block) -> int:
    return len(block.unallocated)


def used_count(block: model.Block) -> int:
    return len(block.allocations) - len(block.unallocated)


def _rebuild(block: model.Block, allocations: list, unallocated: list,
             attributes: list[model.BlockAttribute]) -> model.Block:
    # Drop attributes nothing refers to any more and renumber the rest, as Calico does, so
    # a block's value does not grow with every container that ever lived in it.
    used = sorted({a for a in allocations if a is not None})
    remap = {old: new for new, old in enumerate(used)}
    return model.Block(cidr=block.cidr, affinity=block.affinity,
                       strict_affinity=block.strict_affinity,
                       allocations=[None if a is None else remap[a] for a in allocations],
                       unallocated=unallocated, attributes=[attributes[i] for i in used])


def assign(block: model.Block, count: int, handle_id: str | None,
           secondary: dict[str, str]) -> tuple[model.Block, list[int]]:
    """Take up to ``count`` free addresses for ``handle_id``: (new block, their ordinals)."""
    take = block.unallocated[:max(count, 0)]
    if not take:
        return block, []
    attributes = list(block.attributes)
    attr = model.BlockAttribute(handle_id=handle_id, secondary=secondary)
    try:
        index = attributes.index(attr)
    except ValueError:
        attributes.append(attr)
        index = len(attributes) - 1
    allocations = list(block.allocations)
    for o in take:
        allocations[o] = index
    return _rebuild(block, allocations, block.unallocated[len(take):], attributes), take


def assign_ordinal(block: model.Block, o: int, handle_id: str | None,
                   secondary: dict[str, str]) -> model.Block | None:
    """Take one given address; None when it is already held."""
    if block.allocations[o] is not None:
        return None
    rest = [x for x in block.unallocated if x != o]
    moved = model.Block(cidr=block.cidr, affinity=block.affinity,
                        strict_affinity=block.strict_affinity, allocations=block.allocations,
                        unallocated=[o] + rest, attributes=block.attributes)
    return assign(moved, 1, handle_id, secondary)[0]


def holder(block: model.Block, o: int) -> model.BlockAttribute | None:
    index = block.allocations[o]
    return None if index is None else block.attributes[index]


def release(block: model.Block, ordinals: list[int]) -> model.Block:
    """Free the given ordinals (those already free are ignored)."""
    allocations = list(block.allocations)
    freed = []
    for o in ordinals:
        if allocations[o] is not None:
            allocations[o] = None
            freed.append(o)
    if not freed:
        return block
    return _rebuild(block, allocations, list(block.unallocated) + freed,
                    list(block.attributes))


def handle_ordinals(block: model.Block, handle_id: str) -> list[int]:
    held = {i for i, a in enumerate(block.attributes) if a.handle_id == handle_id}
    return [o for o, a in enumerate(block.allocations) if a is not None and a in held]


# What giving up a host's claim on a block does (``affinity_release``).
RELEASED = "released"        # the block was empty: deleted with the claim
IN_USE = "in use"            # it holds addresses: left as it is
UNASSIGNED = "unassigned"    # it holds addresses: kept, without an owner (forced)
STALE = "stale"              # the block is gone or another host's: only the claim key goes


def affinity_release(block: model.Block | None, host: str, unassign_in_use: bool) -> str:
    """What giving up ``host``'s claim on ``block`` (None: it does not exist) does."""
    if block is None or block.host != host:
        return STALE
    if not used_count(block):
        return RELEASED
    return UNASSIGNED if unassign_in_use else IN_USE


def unassigned(block: model.Block) -> model.Block:
    """The block without an owner: nobody claims it again; it goes with its last address."""
    return block.model_copy(update={"affinity": None})


def allocated(block: model.Block) -> Iterator[tuple[int, model.BlockAttribute]]:
    """(ordinal, holder) of every address in use."""
    for o, a in enumerate(block.allocations):
        if a is not None:
            yield o, block.attributes[a]
