"""The etcd client felix-py uses everywhere: pyetcd behind errors that name the endpoint.

``connect()`` turns ``--etcd-endpoints`` (or the embedded etcd's record) into an
``EtcdClient``.  Every call that cannot reach etcd raises ``DatastoreUnavailable`` naming
the endpoints and what to do; range reads are paged so that a large prefix never meets
gRPC's message size limit.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from urllib.parse import urlparse

import grpc
import pyetcd
from pyetcd import exceptions as etcd_exc
from pyetcd.utils import prefix_range_end, to_bytes

log = logging.getLogger(__name__)

PAGE_SIZE = 4000
FIRST_PAGE_SIZE = 500
# gRPC backs off reconnecting up to two minutes by default: an etcd that comes back would
# go unnoticed that long.  Keepalives find a silently dead connection.
GRPC_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
                ("grpc.keepalive_time_ms", 10000),
                ("grpc.keepalive_timeout_ms", 5000),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
STATE_DIR = os.environ.get("FELIX_STATE_DIR", "/run/felix-py")
EMBEDDED_RECORD = os.path.join(STATE_DIR, "etcd-endpoint")


def key_of(kv) -> str:
    """The key of an etcd key-value or watch event, as text."""
    return kv.key.decode("utf-8", "replace")


def _items(kvs) -> list[tuple[str, bytes, int]]:
    return [(key_of(kv), kv.value, kv.mod_revision) for kv in kvs]


class DatastoreError(Exception):
    """Base of the datastore's errors."""


class DatastoreUnavailable(DatastoreError):
    """etcd could not be reached."""


class Conflict(DatastoreError):
    """A transaction's comparison failed: someone else changed the data first."""


@dataclass(frozen=True)
class TlsFiles:
    ca: str = ""
    cert: str = ""
    key: str = ""

    def __bool__(self) -> bool:
        return bool(self.ca or self.cert or self.key)


class _UnixEndpoint(pyetcd.Endpoint):
    """etcd on a unix socket: reachable from every network namespace on this machine."""

    def __init__(self, path: str, time_retry: float):
        self.path = path
        super().__init__("unix", 0, secure=False, time_retry=time_retry, opts=GRPC_OPTIONS)
        self.netloc = f"unix:{path}"

    def _mkchannel(self, opts):
        return grpc.insecure_channel(f"unix:{self.path}", options=opts)


def parse_endpoints(text: str) -> list[tuple[str, str, int]]:
    """"http://10.0.0.1:2379,https://h:2379,unix:///run/etcd.sock" -> [(scheme, host, port)];
    for unix sockets host is the socket's path and port 0."""
    out = []
    for url in filter(None, (u.strip() for u in text.split(","))):
        if url.startswith("unix://"):
            out.append(("unix", url[len("unix://"):], 0))
            continue
        u = urlparse(url if "://" in url else "http://" + url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise DatastoreError(f"etcd endpoint {url!r} is not a URL like http://HOST:2379")
        try:
            port = u.port or 2379
        except ValueError:
            raise DatastoreError(f"etcd endpoint {url!r} has an invalid port") from None
        out.append((u.scheme, u.hostname, port))
    if not out:
        raise DatastoreError("no etcd endpoint given")
    return out


def embedded_endpoint() -> str | None:
    """The endpoint recorded by the local embedded etcd, if one is running."""
    try:
        with open(EMBEDDED_RECORD, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def resolve_endpoints(endpoints: str | None) -> str:
    """The endpoints to use: those given, else the local embedded etcd's."""
    if endpoints:
        return endpoints
    recorded = embedded_endpoint()
    if recorded:
        return recorded
    raise DatastoreUnavailable(
        "no etcd endpoint given and no local embedded etcd is running: pass "
        "--etcd-endpoints URL (or set FELIX_ETCD_ENDPOINTS), or start one with "
        "`felixctl datastore start` (or `felixctl lab up`)")


class EtcdClient:
    """A small, typed facade over pyetcd."""

    def __init__(self, endpoints: str, tls: TlsFiles = TlsFiles(), timeout: float = 5.0):
        self.endpoints = endpoints
        self.timeout = timeout
        creds = None
        if tls:
            def read(path):
                if not path:
                    return None
                try:
                    with open(path, "rb") as f:
                        return f.read()
                except OSError as e:
                    raise DatastoreError(f"cannot read TLS file {path}: {e.strerror}") from None
            creds = grpc.ssl_channel_credentials(read(tls.ca), read(tls.key), read(tls.cert))
        eps = []
        parsed = parse_endpoints(endpoints)
        # pyetcd refuses a failed endpoint for time_retry seconds; with a single endpoint
        # there is nothing to fail over to, so try it again at once.
        retry = 1.0 if len(parsed) > 1 else 0.0
        for scheme, host, port in parsed:
            if scheme == "unix":
                eps.append(_UnixEndpoint(host, time_retry=retry))
                continue
            secure = scheme == "https"
            if secure and creds is None:
                creds = grpc.ssl_channel_credentials()
            eps.append(pyetcd.Endpoint(host, port, secure=secure,
                                       creds=creds if secure else None, time_retry=retry,
                                       opts=GRPC_OPTIONS))
        self._raw = pyetcd.MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout,
                                                   failover=len(eps) > 1)

    @property
    def raw(self) -> pyetcd.MultiEndpointEtcd3Client:
        return self._raw

    def close(self) -> None:
        self._raw.close()

    def unavailable(self, err: Exception) -> DatastoreUnavailable:
        return DatastoreUnavailable(
            f"etcd at {self.endpoints} is unreachable ({err or type(err).__name__}); "
            "check that it runs and the address is right, or start the local one with "
            "`felixctl datastore start`")

    def _call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                etcd_exc.NoServerAvailableError, etcd_exc.InternalServerError) as e:
            raise self.unavailable(e) from None
        except ValueError as e:
            if "failed node" in str(e):     # pyetcd: the only endpoint is marked failed
                raise self.unavailable(e) from None
            raise
        except grpc.RpcError as e:
            raise self.unavailable(e) from None

    # -- reads -------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        value, _ = self._call(self._raw.get, key)
        return value

    def header_revision(self) -> int:
        resp = self._call(self._raw.get_response, "\0", count_only=True)
        return resp.header.revision

    def get_prefix(self, prefix: str, revision: int | None = None,
                   page: int = PAGE_SIZE) -> tuple[list[tuple[str, bytes, int]], int]:
        """Every (key, value, mod_revision) under ``prefix`` at one revision, read in pages.
        Returns the items and the revision they were read at."""
        items: list[tuple[str, bytes, int]] = []
        for kvs, revision in self.iter_prefix(prefix, revision, page):
            items.extend(_items(kvs))
        return items, revision

    def iter_prefix(self, prefix: str, revision: int | None = None,
                    page: int = PAGE_SIZE) -> Iterator[tuple[list, int]]:
        """Pages of etcd's key-values (``.key``, ``.value``, ``.mod_revision``; ``key_of``)
        under ``prefix``, all at one revision (the first page's, unless ``revision`` is
        given).  The next page is requested while the
        caller works on the current one, so etcd's work overlaps the caller's; pages start
        small so that the caller starts soon, and double up to ``page``."""
        start = to_bytes(prefix)
        end = prefix_range_end(start)
        limit = min(FIRST_PAGE_SIZE, page)
        resp = self._range_page(start, end, limit, revision)
        revision = resp.header.revision if revision is None else revision
        if not (resp.more and resp.kvs):        # one page: no helper thread
            yield resp.kvs, revision
            return
        with ThreadPoolExecutor(1, thread_name_prefix="etcd-page") as pool:
            while resp is not None:
                pending = None
                if resp.more and resp.kvs:
                    limit = min(limit * 2, page)
                    pending = pool.submit(self._range_page, resp.kvs[-1].key + b"\0", end,
                                          limit, revision)
                yield resp.kvs, revision
                resp = pending.result() if pending is not None else None

    def _range_page(self, start: bytes, end: bytes, limit: int, revision: int | None):
        return self._call(self._raw.get_range_response, start, end, limit=limit,
                          revision=revision)

    def read(self, keys: list[str]) -> dict[str, tuple[bytes | None, int]]:
        """Several keys at one revision in one round trip: key -> (value, mod_revision);
        (None, 0) for a key that does not exist."""
        if not keys:
            return {}
        t = self._raw.transactions
        _, responses = self._call(self._raw.transaction, compare=[],
                                  success=[t.get(k) for k in keys], failure=[])
        out = {}
        for key, kvs in zip(keys, responses):
            kvs = list(kvs)
            out[key] = (kvs[0][0], kvs[0][1].mod_revision) if kvs else (None, 0)
        return out

    def keys_with_prefix(self, prefix: str) -> list[str]:
        return [k for k, _, _ in self.get_prefix(prefix)[0]]

    # -- writes ------------------------------------------------------------------------
    def put(self, key: str, value: str | bytes, lease=None) -> int:
        return self._call(self._raw.put, key, value, lease=lease).header.revision

    def delete(self, key: str) -> bool:
        return bool(self._call(self._raw.delete, key))

    def delete_prefix(self, prefix: str) -> int:
        return self._call(self._raw.delete_prefix, prefix).deleted

    def txn(self, compare: list, success: list, failure: list | None = None) -> bool:
        ok, _ = self._call(self._raw.transaction, compare=compare, success=success,
                           failure=failure or [])
        return ok

    def atomic(self, puts: Iterable[tuple[str, str]] = (), deletes: Iterable[str] = (),
               expect_absent: Iterable[str] = (), expect_present: Iterable[str] = ()) -> None:
        """Puts and deletes in one transaction; raises Conflict when an expectation fails."""
        t = self._raw.transactions
        compare = [t.version(k) == 0 for k in expect_absent]
        compare += [t.version(k) > 0 for k in expect_present]
        ops = [t.put(k, v) for k, v in puts] + [t.delete(k) for k in deletes]
        if not ops:
            return
        if not self.txn(compare, ops):
            raise Conflict("the data changed while it was being written; try again")

    @property
    def transactions(self):
        return self._raw.transactions

    # -- leases, watches, maintenance --------------------------------------------------
    def lease(self, ttl: int):
        return self._call(self._raw.lease, ttl)

    def refresh_lease(self, lease) -> int:
        """Refresh; returns the remaining TTL (0 when the lease has expired)."""
        resp = self._call(lease.refresh)
        return resp[0].TTL if resp else 0

    def add_watch(self, prefix: str, callback: Callable, start_revision: int) -> int:
        return self._call(self._raw.add_watch_prefix_callback, prefix, callback,
                          start_revision=start_revision)

    def cancel_watch(self, watch_id: int) -> None:
        try:
            self._raw.cancel_watch(watch_id)
        except Exception as e:  # the stream may already be gone
            log.debug("cancel_watch(%s): %s", watch_id, e)

    def compact(self, revision: int) -> None:
        self._call(self._raw.compact, revision, physical=True)

    def ping(self) -> None:
        self._call(self._raw.status)


def connect(endpoints: str | None = None, tls: TlsFiles = TlsFiles(),
            timeout: float = 5.0) -> EtcdClient:
    return EtcdClient(resolve_endpoints(endpoints), tls, timeout)
