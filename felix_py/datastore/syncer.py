"""The syncer: a snapshot of the datastore at revision N, then a watch from N+1.

It runs in its own thread and hands everything to a ``sink`` callable:

- ``Updates([...])``: batches of decoded keys, in etcd's order per key.  A value that does
  not parse or validate arrives as an Update with ``error`` set (and no record), so the
  consumer drops whatever it held for that key; the rest of the data keeps arriving.
- ``InSync(revision, ...)``: after every snapshot, once its updates have been handed over.
- ``Unavailable(message)``: etcd cannot be reached; the syncer keeps retrying with backoff.

On any watch error, a compacted revision or a lost connection, the syncer backs off and
reads a full snapshot again; it reports the keys that changed meanwhile, including the
deletions it missed, by comparing with the revisions it has seen.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from pyetcd import exceptions as etcd_exc
from pyetcd.watch import WatchResponse
from tenacity import (RetryError, Retrying, retry_if_exception_type, stop_never,
                      wait_exponential_jitter)

from felix_py import model
from felix_py.datastore.client import DatastoreUnavailable, EtcdClient, key_of
from felix_py.datastore.keys import KeyLayout, KeyLayoutError, ParsedKey, _tuple_new

log = logging.getLogger(__name__)

BATCH = 500


class Update(NamedTuple):
    key: str
    parsed: ParsedKey | None      # None when the key itself is not part of the layout
    record: Any = None            # the decoded record; None for a delete or an error
    error: Exception | None = None
    deleted: bool = False


@dataclass(frozen=True)
class Updates:
    items: list[Update]


@dataclass(frozen=True)
class InSync:
    revision: int
    keys: int
    errors: int
    changed: int
    deleted: int
    seconds: float


@dataclass(frozen=True)
class Unavailable:
    message: str


class _WatchBroken(Exception):
    pass


@contextmanager
def gc_paused(freeze: bool = False):
    """No cyclic garbage collection inside.  With ``freeze``, for a first snapshot: once
    it went well, every object of the process is kept out of later collections
    (``gc.freeze``), and a collection first clears what is garbage already, so that none
    is frozen.  A snapshot's records all stay alive until replaced and are freed by
    reference counting (records hold no cycles), yet every collection would scan them
    again: the first one after loading 10,000 endpoints takes 10-40 ms here, and each
    later full collection as long."""
    enabled = gc.isenabled()
    if freeze:
        gc.collect()
    gc.disable()
    completed = False
    try:
        yield
        completed = True
    finally:
        if freeze and completed:
            gc.freeze()
        if enabled:
            gc.enable()


def decode_kv(layout: KeyLayout, key: str, value: bytes) -> Update:
    try:
        pk = layout.parse(key)
    except KeyLayoutError as e:
        return Update(key, None, error=e)
    try:
        return _tuple_new(Update, (key, pk, model.decode(pk, value), None, False))
    except model.ModelError as e:
        return Update(key, pk, error=e)


def decode_delete(layout: KeyLayout, key: str) -> Update:
    try:
        pk = layout.parse(key)
    except KeyLayoutError:
        pk = None
    return Update(key, pk, deleted=True)


@dataclass
class SyncerStats:
    resyncs: int = 0
    updates: int = 0
    errors: int = 0
    last_revision: int = 0
    in_sync: bool = False


class Syncer:
    """Keeps ``sink`` in step with everything under ``prefixes``."""

    def __init__(self, client: EtcdClient, layout: KeyLayout, prefixes: list[str],
                 sink: Callable[[object], None], idle_check: float = 3.0,
                 max_backoff: float = 5.0):
        self.client = client
        self.layout = layout
        self.prefixes = prefixes
        self.sink = sink
        self.idle_check = idle_check
        self.max_backoff = max_backoff
        self.stats = SyncerStats()
        self._seen: dict[str, int] = {}     # key -> mod_revision the sink has
        self._frozen = False                # a first snapshot's records are out of the gc
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: queue.Queue = queue.Queue()
        self._watch_ids: list[int] = []

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Syncer":
        self._thread = threading.Thread(target=self._run, name="felix-syncer", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._events.put(None)
        if self._thread:
            self._thread.join(timeout)
        self._cancel_watches()

    def _run(self) -> None:
        retrying = Retrying(wait=wait_exponential_jitter(multiplier=0.2, max=self.max_backoff, jitter=0.2),
                            retry=retry_if_exception_type((DatastoreUnavailable, _WatchBroken)),
                            stop=stop_never, before_sleep=self._on_retry, reraise=True)
        while not self._stop.is_set():
            try:
                revision = retrying(self._snapshot)
            except _Stopped:
                return
            except RetryError:  # pragma: no cover - stop_never
                continue
            try:
                self._watch(revision + 1)
            except _Stopped:
                return
            except (DatastoreUnavailable, _WatchBroken, etcd_exc.Etcd3Exception) as e:
                log.warning("watch from revision %d ended (%s); resyncing", revision + 1,
                            e or type(e).__name__)
            self.stats.in_sync = False
            self.stats.resyncs += 1

    def _on_retry(self, state) -> None:
        err = state.outcome.exception()
        self.stats.in_sync = False
        log.warning("datastore unavailable (%s); retrying in %.1fs", err,
                    state.next_action.sleep)
        self.sink(Unavailable(str(err)))

    # -- snapshot ------------------------------------------------------------------------
    def _snapshot(self) -> int:
        if self._stop.is_set():
            raise _Stopped()
        t0 = time.monotonic()
        revision = None
        present: set[str] = set()
        batch: list[Update] = []
        changed = errors = total = 0
        seen, layout = self._seen, self.layout
        resync = bool(seen)     # only a resync compares with what the sink already has
        # What the sink has is recorded once a batch is handed over: a read that fails
        # half-way leaves the rest to the next attempt, not marked as delivered.
        mods: list[int] = []                # the batch's mod revisions, in its order
        with gc_paused(freeze=not self._frozen):
            for prefix in self.prefixes:
                for kvs, revision in self.client.iter_prefix(prefix, revision):
                    total += len(kvs)
                    for kv in kvs:
                        key = key_of(kv)
                        mod = kv.mod_revision
                        if resync:
                            present.add(key)
                            if seen.get(key) == mod:
                                continue
                        mods.append(mod)
                        upd = decode_kv(layout, key, kv.value)
                        if upd.error:
                            errors += 1
                            log.error("skipping %s", upd.error)
                        batch.append(upd)
                        if len(batch) >= BATCH:
                            changed += len(batch)
                            self.sink(Updates(batch))
                            seen.update(zip([u.key for u in batch], mods))
                            batch, mods = [], []
        self._frozen = True
        changed += len(batch)
        delivered = list(zip([u.key for u in batch], mods))
        gone = [k for k in seen if k not in present] if resync else []
        for key in gone:
            del seen[key]
            batch.append(decode_delete(layout, key))
        if batch:
            self.sink(Updates(batch))
        seen.update(delivered)
        elapsed = time.monotonic() - t0
        self.stats.in_sync = True
        self.stats.last_revision = revision
        self.stats.updates += changed + len(gone)
        self.stats.errors += errors
        log.info("resync at revision %d: %d keys (%d changed, %d deleted, %d invalid) in "
                 "%.3fs", revision, total, changed, len(gone), errors, elapsed)
        self.sink(InSync(revision, total, errors, changed, len(gone), elapsed))
        return revision

    # -- watch ---------------------------------------------------------------------------
    def _watch(self, start_revision: int) -> None:
        self._events = q = queue.Queue()
        self._cancel_watches()
        for prefix in self.prefixes:
            try:
                self._watch_ids.append(self.client.add_watch(prefix, q.put, start_revision))
            except etcd_exc.RevisionCompactedError as e:
                raise _WatchBroken(f"revision {start_revision} was compacted "
                                   f"(compacted up to {e.compacted_revision})") from None
            except etcd_exc.WatchTimedOut:
                raise _WatchBroken("creating the watch timed out") from None
        try:
            while not self._stop.is_set():
                try:
                    resp = q.get(timeout=self.idle_check)
                except queue.Empty:
                    self.client.ping()     # a silent stream may be a dead one
                    continue
                if resp is None:
                    raise _Stopped()
                if not isinstance(resp, WatchResponse):
                    raise _WatchBroken(str(resp) or type(resp).__name__)
                batch = [resp]
                while len(batch) < 64:
                    try:
                        more = q.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(more, WatchResponse):
                        q.put(more)        # handle the error on the next round
                        break
                    batch.append(more)
                self._deliver(batch)
            raise _Stopped()
        finally:
            self._cancel_watches()

    def _deliver(self, responses: list[WatchResponse]) -> None:
        out: list[Update] = []
        for resp in responses:
            for ev in resp.events:
                key = key_of(ev)
                if type(ev).__name__ == "DeleteEvent":
                    if self._seen.pop(key, None) is None:
                        continue
                    out.append(decode_delete(self.layout, key))
                else:
                    self._seen[key] = ev.mod_revision
                    upd = decode_kv(self.layout, key, ev.value)
                    if upd.error:
                        self.stats.errors += 1
                        log.error("skipping %s", upd.error)
                    out.append(upd)
            self.stats.last_revision = max(self.stats.last_revision, resp.header.revision)
        if out:
            self.stats.updates += len(out)
            self.sink(Updates(out))

    def _cancel_watches(self) -> None:
        for wid in self._watch_ids:
            self.client.cancel_watch(wid)
        self._watch_ids = []


class _Stopped(Exception):
    pass


class View:
    """Every key's latest record, kept from a syncer's messages (tests, tools, the agent)."""

    def __init__(self):
        self.records: dict[str, Any] = {}
        self.errors: dict[str, Exception] = {}
        self.in_sync = threading.Event()
        self.syncs: list[InSync] = []
        self.lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self.lock:
            if isinstance(msg, Updates):
                for u in msg.items:
                    self.records.pop(u.key, None)
                    self.errors.pop(u.key, None)
                    if u.error is not None:
                        self.errors[u.key] = u.error
                    elif not u.deleted:
                        self.records[u.key] = u.record
            elif isinstance(msg, InSync):
                self.syncs.append(msg)
                self.in_sync.set()

    def keys(self) -> set[str]:
        with self.lock:
            return set(self.records) | set(self.errors)
