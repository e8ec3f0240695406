"""Allocating and releasing addresses in etcd, the way Calico's IPAM does.

Pools (``/calico/v1/ipam/v4/pool/...``) are cut into blocks (``/calico/ipam/v2/assignment/
ipv4/block/<cidr>``), each claimed by one host (``/calico/ipam/v2/host/<host>/ipv4/block/
<cidr>``).  A host allocates from its own blocks first, claims a free block when they are
full, and only then borrows single addresses from other hosts' blocks, never when strict
affinity is on (``/calico/ipam/v2/config``) or the block is marked strict.  Handles
(``/calico/ipam/v2/handle/<id>``) count what each owner holds per block, so that a release
by handle frees exactly its addresses.  A host that is gone gives up its claims
(``release_affinity``): an empty block is deleted, one still holding addresses may be kept
without an owner, and is deleted when its last address is released.

Every change is one etcd transaction that compares the ``mod_revision`` of each key it read
(the block, the handles, or their absence) and is retried from a fresh read when another
writer got there first; so concurrent allocators never hand out one address twice.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

import tenacity

from felix_py import model
from felix_py.datastore.client import Conflict, EtcdClient
from felix_py.datastore.keys import Kind, KeyLayout, KeyLayoutError
from felix_py.ipam import blocks
from felix_py.ipam.errors import (AddressInUse, HandleInUse, InvalidHandle, IpamError, NoPool,
                                  PoolExhausted)

log = logging.getLogger(__name__)

HANDLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,511}$")
# Attributes every allocation carries besides the caller's own ...
ATTR_HOST = "host"
ATTR_TIMESTAMP = "timestamp"
# ... and the one that ties it to its workload, for garbage collection (ipam/gc.py).
ATTR_ENDPOINT = "endpoint"


@dataclass(frozen=True)
class Allocation:
    """One address in use, as its block records it."""
    ip: str
    block: str
    handle_id: str | None
    attrs: dict[str, str]
    block_host: str | None          # the host the block is affine to

    @property
    def borrowed(self) -> bool:
        return self.attrs.get(ATTR_HOST) not in (None, self.block_host)


@dataclass
class _HandleGuard:
    """For an exclusive allocation (a CNI ADD): the handle must not exist before this call
    created it, so a repeated ADD is refused instead of silently adding addresses."""
    handle_id: str
    exclusive: bool
    owned: bool = False


@dataclass
class _Read:
    value: bytes | None
    revision: int                   # mod_revision; 0 when the key is absent


@dataclass
class _BlockChange:
    block: model.Block | None                     # the new value; None: nothing to write
    result: object = None
    handles: dict[str, int | None] = field(default_factory=dict)   # id -> delta; None: clear


def check_handle(handle_id: str) -> str:
    if not isinstance(handle_id, str) or not HANDLE_RE.match(handle_id):
        raise InvalidHandle(f"handle {handle_id!r} is not valid: use letters, digits, "
                            "_ . : - (starting with a letter or digit), at most 512")
    return handle_id


def now_timestamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ipam:
    """IPAM for one host (``hostname``) over one datastore."""

    def __init__(self, client: EtcdClient, layout: KeyLayout, hostname: str,
                 timeout: float = 30.0):
        self.client = client
        self.layout = layout
        self.hostname = hostname
        self.timeout = timeout

    # -- etcd primitives -------------------------------------------------------------------
    def _read_many(self, keys: list[str]) -> dict[str, _Read]:
        """Several keys at one revision, in one round trip."""
        return {k: _Read(v, rev) for k, (v, rev) in self.client.read(keys).items()}

    def _read(self, key: str) -> _Read:
        return self._read_many([key])[key]

    def _decode(self, key: str, raw: bytes):
        return model.decode(self.layout.parse(key), raw)

    def _retrying(self) -> tenacity.Retrying:
        # Jittered, growing pauses: two writers that collided do not collide again in step.
        return tenacity.Retrying(retry=tenacity.retry_if_exception_type(Conflict),
                                 stop=tenacity.stop_after_delay(self.timeout),
                                 wait=tenacity.wait_random_exponential(multiplier=0.002,
                                                                       max=0.1),
                                 reraise=True)

    def _txn(self, compare: list, success: list) -> None:
        if not self.client.txn(compare, success):
            raise Conflict("an IPAM record changed while it was being written")

    def handle_key(self, handle_id: str) -> str:
        return self.layout.build(Kind.IPAM_HANDLE, handle=handle_id)

    def _handle_ops(self, changes: dict[str, int | None], cidr: str,
                    guard: _HandleGuard | None, known: dict[str, _Read] | None = None):
        """(compares, writes) that apply per-handle count changes for block ``cidr``;
        ``known`` holds handles already read (at the block's revision)."""
        t = self.client.transactions
        keys = {h: self.handle_key(h) for h in changes}
        known = known or {}
        reads = {**known, **self._read_many([k for k in keys.values() if k not in known])}
        compare, ops = [], []
        for h, delta in changes.items():
            key, read = keys[h], reads[keys[h]]
            if guard and h == guard.handle_id and guard.exclusive and not guard.owned \
                    and read.value is not None:
                raise HandleInUse(f"handle {h} already holds addresses (a repeated ADD?); "
                                  "release it first")
            counts = dict(self._decode(key, read.value).block) if read.value else {}
            counts[cidr] = 0 if delta is None else counts.get(cidr, 0) + delta
            if counts[cidr] <= 0:
                del counts[cidr]
            compare.append(t.mod(key) == read.revision if read.value else t.version(key) == 0)
            if counts:
                ops.append(t.put(key, model.Handle(block=counts).to_json()))
            elif read.value:
                ops.append(t.delete(key))
        return compare, ops

    def _update_block(self, key: str, change: Callable[[model.Block], _BlockChange],
                      guard: _HandleGuard | None = None):
        """Read-modify-write one block and the handles it affects, as one transaction,
        retried from a fresh read on conflict.  Returns the change's result (None when the
        block does not exist)."""
        t = self.client.transactions
        # The allocating handle is read with the block: one round trip less per attempt.
        extra = [self.handle_key(guard.handle_id)] if guard else []
        for attempt in self._retrying():
            with attempt:
                reads = self._read_many([key] + extra)
                read = reads.pop(key)
                if read.value is None:
                    return None
                done = change(self._decode(key, read.value))
                if done.block is None:
                    return done.result
                cidr = done.block.cidr
                compare, ops = self._handle_ops(done.handles, cidr, guard, reads)
                # A block without an owner (its host gave it up while it held addresses)
                # goes with its last address, as in Calico.
                gone = done.block.affinity is None and not blocks.used_count(done.block)
                write = t.delete(key) if gone else t.put(key, done.block.to_json())
                self._txn([t.mod(key) == read.revision] + compare, [write] + ops)
                if guard:
                    guard.owned = True
                return done.result

    # -- reading the IPAM state ------------------------------------------------------------
    def block_key(self, cidr: str) -> str:
        net = ipaddress.ip_network(cidr)
        return self.layout.build(Kind.IPAM_BLOCK, version=net.version, cidr=str(net))

    def affinity_key(self, host: str, cidr: str) -> str:
        net = ipaddress.ip_network(cidr)
        return self.layout.build(Kind.IPAM_AFFINITY, host=host, version=net.version,
                                 cidr=str(net))

    def config(self) -> model.IpamConfig:
        key = self.layout.build(Kind.IPAM_CONFIG)
        raw = self.client.get(key)
        return self._decode(key, raw) if raw is not None else model.IpamConfig()

    def set_config(self, **changes) -> model.IpamConfig:
        key = self.layout.build(Kind.IPAM_CONFIG)
        t = self.client.transactions
        for attempt in self._retrying():
            with attempt:
                read = self._read(key)
                current = self._decode(key, read.value) if read.value else model.IpamConfig()
                new = model.IpamConfig.model_validate({**current.model_dump(), **changes})
                cmp = t.mod(key) == read.revision if read.value else t.version(key) == 0
                self._txn([cmp], [t.put(key, new.to_json())])
                return new

    def pools(self, version: int, only: Iterable[str] | None = None,
              include_disabled: bool = False) -> list[model.Pool]:
        """The pools of one IP version; ``only`` restricts to those CIDRs (each must exist
        and be enabled)."""
        found = []
        for key, raw, _ in self.client.get_prefix(self.layout.dir("v1/ipam", f"v{version}",
                                                                  "pool"))[0]:
            try:
                pk = self.layout.parse(key)
                if pk.kind is Kind.POOL:
                    found.append(model.decode(pk, raw))
            except (KeyLayoutError, model.ModelError) as e:
                log.warning("skipping pool %s: %s", key, e)
        if only is None:
            return [p for p in found if include_disabled or not p.disabled]
        by_net = {ipaddress.ip_network(p.cidr): p for p in found}
        out = []
        for text in only:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise NoPool(f"{text!r} is not a pool CIDR") from None
            pool = by_net.get(net)
            if pool is None or net.version != version:
                raise NoPool(f"IPv{version} pool {text} does not exist; add it with "
                             f"`felixctl pool add {text}` or fix the pool list")
            if pool.disabled and not include_disabled:
                raise NoPool(f"pool {pool.cidr} is disabled; enable it or use another pool")
            out.append(pool)
        return out

    def affine_blocks(self, host: str, version: int) -> list[str]:
        prefix = self.layout.dir("ipam/v2/host", host, f"ipv{version}", "block")
        out = []
        for key, _, _ in self.client.get_prefix(prefix)[0]:
            try:
                out.append(self.layout.parse(key).parts["cidr"])
            except KeyLayoutError:
                log.warning("skipping unparsable affinity key %s", key)
        return sorted(out, key=ipaddress.ip_network)

    def blocks(self, version: int | None = None) -> Iterator[tuple[str, model.Block]]:
        """Every block that decodes (those that do not are logged and skipped)."""
        for v in (4, 6) if version is None else (version,):
            for key, raw, _ in self.client.get_prefix(
                    self.layout.dir("ipam/v2/assignment", f"ipv{v}", "block"))[0]:
                try:
                    block = self._decode(key, raw)
                except (KeyLayoutError, model.ModelError) as e:
                    log.warning("skipping block %s: %s", key, e)
                    continue
                yield block.cidr, block

    def allocations(self, version: int | None = None) -> Iterator[Allocation]:
        for cidr, block in self.blocks(version):
            for o, attr in blocks.allocated(block):
                yield Allocation(blocks.address(block, o), cidr, attr.handle_id,
                                 dict(attr.secondary), block.host)

    def handle(self, handle_id: str) -> model.Handle | None:
        key = self.handle_key(check_handle(handle_id))
        raw = self.client.get(key)
        return self._decode(key, raw) if raw is not None else None

    def ips_by_handle(self, handle_id: str) -> list[str]:
        handle = self.handle(handle_id)
        if handle is None:
            return []
        keys = [self.block_key(c) for c in handle.block]
        out = []
        for key, read in self._read_many(keys).items():
            if read.value is not None:
                block = self._decode(key, read.value)
                out += [blocks.address(block, o) for o in blocks.handle_ordinals(block, handle_id)]
        return sorted(out, key=ipaddress.ip_address)

    def _block_key_of(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """The key of the existing block that holds ``ip``, if any."""
        for pool in self.pools(ip.version, include_disabled=True):
            if ip in ipaddress.ip_network(pool.cidr):
                key = self.block_key(str(blocks.block_of(pool, ip)))
                if self.client.get(key) is not None:
                    return key
        # A block cut with an earlier block size, or whose pool was removed.
        for cidr, _ in self.blocks(ip.version):
            if ip in ipaddress.ip_network(cidr):
                return self.block_key(cidr)
        return None

    def lookup(self, ip: str) -> Allocation | None:
        addr = ipaddress.ip_address(ip)
        key = self._block_key_of(addr)
        raw = self.client.get(key) if key else None
        if raw is None:
            return None
        block = self._decode(key, raw)
        attr = blocks.holder(block, blocks.ordinal(block, addr))
        if attr is None:
            return None
        return Allocation(str(addr), block.cidr, attr.handle_id, dict(attr.secondary),
                          block.host)

    # -- allocation ------------------------------------------------------------------------
    def _secondary(self, attrs: dict[str, str] | None) -> dict[str, str]:
        out = {ATTR_HOST: self.hostname, ATTR_TIMESTAMP: now_timestamp()}
        out.update({str(k): str(v) for k, v in (attrs or {}).items()})
        return out

    def auto_assign(self, handle_id: str, num4: int = 1, num6: int = 0,
                    attrs: dict[str, str] | None = None, pools4: Iterable[str] | None = None,
                    pools6: Iterable[str] | None = None, exclusive: bool = False) -> list[str]:
        """``num4`` IPv4 and ``num6`` IPv6 addresses for ``handle_id``; all or nothing.

        ``exclusive``: fail with HandleInUse if the handle already holds addresses."""
        guard = _HandleGuard(check_handle(handle_id), exclusive)
        secondary = self._secondary(attrs)
        got: list[str] = []
        try:
            for version, count, only in ((4, num4, pools4), (6, num6, pools6)):
                if count > 0:
                    self._assign_version(version, count, guard, secondary, only, got)
        except BaseException:
            self._roll_back(got, handle_id)
            raise
        return got

    def _roll_back(self, ips: list[str], handle_id: str) -> None:
        if not ips:
            return
        try:
            self.release_ips(ips, handle_id=handle_id)
        except Exception as e:      # the caller's error matters more; GC finds the rest
            log.error("could not give back %s after a failed allocation: %s", ips, e)

    def _assign_version(self, version: int, count: int, guard: _HandleGuard,
                        secondary: dict[str, str], only, got: list[str]) -> None:
        cfg = self.config()
        pools = self.pools(version, only)
        if not pools:
            raise NoPool(f"no enabled IPv{version} pool to allocate from; add one with "
                         "`felixctl pool add CIDR`")
        nets = [ipaddress.ip_network(p.cidr) for p in pools]

        def in_pools(cidr: str) -> bool:
            net = ipaddress.ip_network(cidr)
            return any(net.subnet_of(p) for p in nets)

        want = len(got) + count
        deadline = time.monotonic() + self.timeout
        while len(got) < want:
            own = [c for c in self.affine_blocks(self.hostname, version) if in_pools(c)]
            self._assign_from(self._with_free(own), want - len(got), guard, secondary, got,
                              borrow=False)
            if len(got) >= want:
                return
            if not cfg.auto_allocate_blocks or \
                    (cfg.max_blocks_per_host and len(own) >= cfg.max_blocks_per_host):
                break
            try:
                if not self._claim_block(pools, cfg, want - len(got), guard, secondary, got,
                                         set(own)):
                    break               # no unclaimed block left in these pools
            except Conflict:
                # Someone claimed that block first (perhaps this host's other allocator,
                # whose block is now ours to use): look again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.001)
        if len(got) < want and not cfg.strict_affinity:
            # Borrow from the emptiest blocks first: filling one block would leave its
            # own host short and make it borrow in turn.
            others = [c for c, b in sorted(self.blocks(version),
                                           key=lambda cb: -blocks.free_count(cb[1]))
                      if b.host != self.hostname and in_pools(c) and b.unallocated
                      and not b.strict_affinity]
            self._assign_from(others, want - len(got), guard, secondary, got, borrow=True)
        if len(got) < want:
            why = ("strict affinity forbids borrowing from other hosts' blocks"
                   if cfg.strict_affinity else "every block is full")
            raise PoolExhausted(
                f"IPv{version} pools {', '.join(p.cidr for p in pools)} have no free "
                f"address for host {self.hostname} ({why}); add a pool or release addresses "
                "(`felixctl ipam gc`)")

    def _with_free(self, cidrs: list[str]) -> list[str]:
        """Those of the blocks that have a free address now (read in one round trip)."""
        reads = self._read_many([self.block_key(c) for c in cidrs])
        out = []
        for cidr in cidrs:
            key = self.block_key(cidr)
            value = reads[key].value
            try:
                if value is not None and self._decode(key, value).unallocated:
                    out.append(cidr)
            except model.ModelError as e:       # unusable until fixed; the others are not
                log.warning("skipping block %s: %s", cidr, e)
        return out

    def _assign_from(self, cidrs: list[str], count: int, guard: _HandleGuard,
                     secondary: dict[str, str], got: list[str], borrow: bool) -> None:
        """Take up to ``count`` addresses from the given blocks, one transaction each."""
        want = len(got) + count
        for cidr in cidrs:
            if len(got) >= want:
                return

            def change(block: model.Block, n: int = want - len(got)) -> _BlockChange:
                if borrow and (block.strict_affinity or block.host == self.hostname):
                    return _BlockChange(None, [])      # claimed or made strict meanwhile
                new, ordinals = blocks.assign(block, n, guard.handle_id, secondary)
                if not ordinals:
                    return _BlockChange(None, [])
                return _BlockChange(new, [blocks.address(new, o) for o in ordinals],
                                    {guard.handle_id: len(ordinals)})

            got.extend(self._update_block(self.block_key(cidr), change, guard) or [])

    def _claim_block(self, pools: list[model.Pool], cfg: model.IpamConfig, count: int,
                     guard: _HandleGuard, secondary: dict[str, str], got: list[str],
                     seen_own: set[str]) -> bool:
        """Claim the first unclaimed block of the pools for this host and take up to
        ``count`` addresses from it, in one transaction.  False when there is none; raises
        Conflict when another writer got there first."""
        version = ipaddress.ip_network(pools[0].cidr).version
        existing = {ipaddress.ip_network(c) for c, _ in self._block_keys(version)}
        # Blocks and affinities are written together, so affinities read after the blocks
        # include every block of this host in ``existing``.  One claimed since the caller
        # looked (by this host's other allocator) may have room: look again rather than
        # claim a second block next to it.
        nets = [ipaddress.ip_network(p.cidr) for p in pools]
        now_own = {c for c in self.affine_blocks(self.hostname, version)
                   if any(ipaddress.ip_network(c).subnet_of(n) for n in nets)}
        if now_own != seen_own:
            raise Conflict(f"host {self.hostname} claimed a block meanwhile")
        for pool in pools:
            for net in blocks.candidate_blocks(pool, self.hostname):
                if net in existing:
                    continue
                block = blocks.new_block(net, self.hostname, cfg.strict_affinity)
                block, ordinals = blocks.assign(block, count, guard.handle_id, secondary)
                key, aff = self.block_key(str(net)), self.affinity_key(self.hostname, str(net))
                t = self.client.transactions
                compare, ops = self._handle_ops({guard.handle_id: len(ordinals)}, block.cidr,
                                                guard)
                self._txn([t.version(key) == 0, t.version(aff) == 0] + compare,
                          [t.put(key, block.to_json()),
                           t.put(aff, model.Affinity().to_json())] + ops)
                guard.owned = True
                log.info("host %s claimed block %s", self.hostname, block.cidr)
                got.extend(blocks.address(block, o) for o in ordinals)
                return True
        return False

    def _block_keys(self, version: int) -> list[tuple[str, str]]:
        """(cidr, key) of every block of one version, from the keys alone."""
        out = []
        for key, _, _ in self.client.get_prefix(
                self.layout.dir("ipam/v2/assignment", f"ipv{version}", "block"))[0]:
            try:
                out.append((self.layout.parse(key).parts["cidr"], key))
            except KeyLayoutError:
                continue
        return out

    def assign_ip(self, ip: str, handle_id: str, attrs: dict[str, str] | None = None,
                  exclusive: bool = False) -> str:
        """Take one given address (a static IP).  Its block is claimed for this host if
        nobody holds it yet."""
        guard = _HandleGuard(check_handle(handle_id), exclusive)
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise IpamError(f"{ip!r} is not an IP address") from None
        pool = next((p for p in self.pools(addr.version)
                     if addr in ipaddress.ip_network(p.cidr)), None)
        if pool is None:
            raise NoPool(f"{addr} is in no enabled IPv{addr.version} pool; add a pool that "
                         "holds it first")
        secondary = self._secondary(attrs)
        cfg = self.config()
        net = blocks.block_of(pool, addr)
        key = self.block_key(str(net))
        t = self.client.transactions

        def change(block: model.Block) -> _BlockChange:
            o = blocks.ordinal(block, addr)
            if cfg.strict_affinity and block.host not in (None, self.hostname):
                raise AddressInUse(f"{addr} is in block {block.cidr} of host {block.host} and "
                                   "strict affinity forbids borrowing it")
            new = blocks.assign_ordinal(block, o, handle_id, secondary)
            if new is None:
                holder = blocks.holder(block, o)
                raise AddressInUse(f"{addr} is already held by handle {holder.handle_id}")
            return _BlockChange(new, str(addr), {handle_id: 1})

        for attempt in self._retrying():
            with attempt:
                if self._update_block(key, change, guard) is not None:
                    return str(addr)
                # No block yet: claim it for this host with the address taken.
                block = blocks.assign_ordinal(
                    blocks.new_block(net, self.hostname, cfg.strict_affinity),
                    int(addr) - int(net.network_address), handle_id, secondary)
                aff = self.affinity_key(self.hostname, str(net))
                compare, ops = self._handle_ops({handle_id: 1}, block.cidr, guard)
                self._txn([t.version(key) == 0, t.version(aff) == 0] + compare,
                          [t.put(key, block.to_json()),
                           t.put(aff, model.Affinity().to_json())] + ops)
                guard.owned = True
                return str(addr)

    # -- release ---------------------------------------------------------------------------
    def release_ips(self, ips: Iterable[str], handle_id: str | None = None) -> list[str]:
        """Free the given addresses (only those held by ``handle_id`` when it is given);
        returns those that were freed.  Addresses not in use are ignored."""
        by_block: dict[str, list] = {}
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            key = self._block_key_of(addr)
            if key:
                by_block.setdefault(key, []).append(addr)
        freed: list[str] = []
        for key, addrs in by_block.items():
            def change(block: model.Block, addrs=addrs) -> _BlockChange:
                picked, deltas = [], {}
                for a in addrs:
                    o = blocks.ordinal(block, a)
                    attr = blocks.holder(block, o)
                    if attr is None or (handle_id is not None and attr.handle_id != handle_id):
                        continue
                    picked.append(o)
                    if attr.handle_id:
                        deltas[attr.handle_id] = deltas.get(attr.handle_id, 0) - 1
                if not picked:
                    return _BlockChange(None, [])
                return _BlockChange(blocks.release(block, picked),
                                    [blocks.address(block, o) for o in picked], deltas)
            freed += self._update_block(key, change) or []
        return freed

    def release_by_handle(self, handle_id: str) -> list[str]:
        """Free every address the handle holds and remove the handle; [] if it holds none."""
        handle = self.handle(handle_id)
        if handle is None:
            return []

        def change(block: model.Block) -> _BlockChange:
            ordinals = blocks.handle_ordinals(block, handle_id)
            new = blocks.release(block, ordinals) if ordinals else block
            # Written even when nothing is held here, to clear a stale count in the handle.
            return _BlockChange(new, [blocks.address(block, o) for o in ordinals],
                                {handle_id: None})

        freed: list[str] = []
        for cidr in handle.block:
            got = self._update_block(self.block_key(cidr), change)
            if got is None:             # the block is gone: only the count is left
                self._clear_handle_block(handle_id, cidr)
            else:
                freed += got
        return freed

    def _clear_handle_block(self, handle_id: str, cidr: str) -> None:
        for attempt in self._retrying():
            with attempt:
                compare, ops = self._handle_ops({handle_id: None}, cidr, None)
                if ops:
                    self._txn(compare, ops)

    def host_blocks(self, host: str) -> dict[str, model.Block | None]:
        """The blocks ``host`` claims (its affinity keys), each with its record (None: the
        block does not exist), read in one round trip."""
        keys = {c: self.block_key(c) for v in (4, 6) for c in self.affine_blocks(host, v)}
        reads = self._read_many(list(keys.values()))
        return {c: None if reads[k].value is None else self._decode(k, reads[k].value)
                for c, k in keys.items()}

    def release_affinity(self, host: str, cidr: str, unassign_in_use: bool = False) -> str:
        """Give up ``host``'s claim on block ``cidr`` in one transaction; returns what was
        done (``blocks.affinity_release``): an empty block is deleted with the claim; one
        that holds addresses is left alone, or with ``unassign_in_use`` kept without an
        owner (its addresses stay allocated; it is deleted when the last is released)."""
        key, aff = self.block_key(cidr), self.affinity_key(host, cidr)
        t = self.client.transactions
        for attempt in self._retrying():
            with attempt:
                read = self._read(key)
                block = self._decode(key, read.value) if read.value is not None else None
                outcome = blocks.affinity_release(block, host, unassign_in_use)
                if outcome == blocks.IN_USE:
                    return outcome
                ops = [t.delete(aff)]
                if outcome == blocks.RELEASED:
                    ops.append(t.delete(key))
                elif outcome == blocks.UNASSIGNED:
                    ops.append(t.put(key, blocks.unassigned(block).to_json()))
                cmp = t.mod(key) == read.revision if block else t.version(key) == 0
                self._txn([cmp], ops)
                if outcome != blocks.STALE:
                    log.info("host %s gave up block %s (%s)", host, cidr, outcome)
                return outcome
