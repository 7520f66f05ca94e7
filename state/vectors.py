"""The Qdrant sink: versioned collections behind aliases, guarded upserts, reads for recommenders.

Layout (``P`` is an optional name prefix, empty in production, per test in the contract suite)::

    P users_<version>, P items_<version>   one collection pair per model version (cosine)
    P users, P items                       aliases: the pair readers are served from

Why each rule holds:

* Point ids are ``uuid5(POINT_NAMESPACE, "<kind>:<entity_id>")``, so a retry, a replay or a second
  worker writes the same point instead of a duplicate.
* Every live write is sent with an ``update_filter`` that lets it replace an existing point only
  when the stored ``state_version`` is lower (ARCHITECTURE decision 4, RELIABILITY I3). A stale
  write (a retry, a zombie worker after a rebalance) is skipped by the store itself, with no
  read-then-write race. The filter is one per request, so it names each point's own version:
  ``should[ must[has_id(ids with version v), state_version < v] for each v in the batch ]``.
  An equal version is skipped too: the same state encodes to the same vector.
* A user vector is also a function of the item vectors it was built from: its ``basis_version``
  is the sum of their state versions, which only grows while the user's state stays (each
  stored item vector's version only grows, and a re-encode reads the stored or a fresher one).
  A user write of an equal ``state_version`` replaces the stored point only when its
  ``basis_version`` is higher (the re-encoder's fan-out: same sequence, newer item vectors), so a
  replay or a zombie that read older item vectors never moves a user back. The pair is also
  stored packed into one integer, ``guard_version`` (state version above 39 bits of basis), so
  a user's clause is one flat range: the nested "lower state, or equal state and lower basis"
  clause per point made user upserts about 3x slower on the server. Points stored without it
  (before it existed, or versions too large to pack) are guarded by the two fields; those
  written before basis versions existed are not refreshed this way, their next event rewrites
  them.
* Backfills use ``update_mode=insert_only``: they fill missing points and never touch one that a
  live writer already put there (RELIABILITY scenario 10).
* A refresh (``refresh=True``) also replaces points of the same state version: the same state
  encoded again, e.g. a user rebuilt from newer item vectors. Never an older state (I3 holds).
* A model switch prepares a new pair, dual-writes and backfills it, then moves both aliases in
  one ``update_collection_aliases`` call, so readers never see a mix or an empty collection.
  A reader that needs a user and an item from the same model pins ``serving_version()`` and
  passes ``version=`` to `get` and `search`.
* Transient errors are retried with capped exponential backoff; past ``unavailable_after_s``
  `VectorStoreUnavailable` tells the caller to pause consumption and retry (never to drop).

qdrant-client's embedded local mode (``path`` or in-memory) implements ``update_filter`` and
``update_mode`` in ``local_collection.py`` (``_upsert_point``) with the server's semantics, so one
request serves both; the contract tests run the same checks against either. A server must be
1.17 or newer (``update_mode``); older ones are refused rather than trusted to honour the guard.

Each upsert request is built once as plain JSON (points, and `guard_filter`'s filter in the REST
API's form). Over REST it is encoded with one orjson call and sent through qdrant-client's own
REST client (its API key header, timeout and error types, so retries and failover are unchanged):
building and serialising a pydantic model per point and per guard clause was most of a worker's
client-side cost in Qdrant under load (profiled: ~24 of ~200 s). Embedded mode and gRPC take the
client's models, validated from the same JSON, so the guard is written down once.

The client is synchronous: the caller runs it in a worker thread. The async client's local mode
runs the same blocking code on the event loop, so it would buy nothing in embedded mode. Calls
into an embedded store are serialised by a lock, because local mode is not thread-safe.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import (
    ApiException,
    ResponseHandlingException,
    UnexpectedResponse,
)

from state.exceptions import InvalidBatchError, StateError, VectorStoreUnavailable
from state.retry import Backoff, GaveUp, retry_sync

log = logging.getLogger(__name__)
T = TypeVar("T")

EntityKind = Literal["users", "items"]
KINDS: tuple[EntityKind, ...] = ("users", "items")
FloatArray = npt.NDArray[np.float32]
JsonDict = dict[str, Any]

# Fixed forever: changing it would orphan every stored point.
POINT_NAMESPACE = uuid.UUID("3bf1faee-d933-42a2-80cf-357916d7d73f")
MIN_SERVER_VERSION = (1, 17)  # update_filter needs 1.16, update_mode 1.17

PAYLOAD_KEYS = (
    "entity_id",
    "model_version",
    "state_version",
    "event_ts_max",
    "updated_at",
    "basis_version",
)
STATE_VERSION = "state_version"
BASIS_VERSION = "basis_version"
MATERIAL_VERSION = "material_version"  # an item's; see VectorRecord
# A user's (state_version, basis_version) as one integer, so its guard is one flat range per
# point: the nested "lower state, or the same state and a lower basis" clause made a user upsert
# about 3x slower on the server (one such clause per point in every request).
GUARD_VERSION = "guard_version"
BASIS_BITS = 39  # a basis (sum of item versions) below 2^39; a state version below 2^24
STATE_LIMIT = 1 << (63 - BASIS_BITS)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{0,64}")
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
_TRANSIENT_SQLITE = ("disk is full", "disk I/O error", "database is locked")
_STORE_ERRORS = (ApiException, OSError, ValueError, RuntimeError, sqlite3.OperationalError)


@dataclass(frozen=True)
class VectorRecord:
    """One re-encoded entity; `state_version` comes from Redis and only ever grows.

    `basis_version`: for a user, the sum of the material versions of the item vectors it was
    built from (see the module docstring); 0 for an item. `material_version`: for an item, the
    state version at which its vector last moved enough to rebuild its holders (fan-out); it is
    what a user's basis counts. None for a user (and for an item, read as its state version)."""

    kind: EntityKind
    entity_id: str
    vector: Sequence[float] | FloatArray
    state_version: int
    event_ts_max: float
    basis_version: int = 0
    material_version: int | None = None

    @property
    def freshness(self) -> tuple[int, int]:
        """What the guard compares: the state version, then the basis version."""
        return self.state_version, self.basis_version


@dataclass(frozen=True)
class VectorStoreConfig:
    """Where Qdrant is and how hard to try: ``url`` for a server, else ``path`` for embedded mode,
    else an in-memory embedded store (tests). Timeouts are whole seconds for the client.

    A cluster's peers are comma-separated in ``url``: calls go to one peer, and a failed call
    moves the store to the next one before its retry (any peer serves any collection)."""

    url: str | None = None
    path: str | None = None
    api_key: str | None = field(default=None, repr=False)
    prefix: str = ""
    batch_size: int = 256
    # Server only: upsert requests of one call in flight at once. The client's encoding of one
    # request overlaps the server's work on another; the embedded store takes one at a time.
    write_concurrency: int = 4
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    unavailable_after_s: float = 30.0
    timeout_s: float = 10.0
    # Server only (embedded mode searches exactly and ignores them): how new collections index.
    prefer_grpc: bool = False  # the point writes and searches over gRPC (the REST port still
    grpc_port: int = 6334  # answers the admin calls); measured in `sagestream bench --stage qdrant`
    hnsw_m: int = 16  # graph degree: recall and memory go up with it
    hnsw_ef_construct: int = 100  # build-time beam: recall and build time go up with it
    on_disk: bool = False  # vectors memory-mapped from disk instead of held in RAM
    search_ef: int | None = None  # query-time beam of `search`; None: the server's default
    payload_index: bool = True  # index state_version, which every guarded write filters on
    # Server only, for new collections; None: the server's defaults (one shard, one copy).
    shard_number: int | None = None
    replication_factor: int | None = None  # copies of each shard, on different peers
    write_consistency_factor: int | None = None  # copies that acknowledge a write

    @property
    def peers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",")] if self.url else []

    def __post_init__(self) -> None:
        if self.url is not None and self.path is not None:
            raise StateError("VectorStoreConfig: give url or path, not both")
        if not _PREFIX.fullmatch(self.prefix):
            raise StateError(f"VectorStoreConfig.prefix {self.prefix!r} is not a valid name part")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise StateError(f"VectorStoreConfig.batch_size must be >= 1, got {self.batch_size!r}")
        for name in ("retry_initial_s", "retry_max_s", "unavailable_after_s", "timeout_s"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0:
                raise StateError(f"VectorStoreConfig.{name} must be finite and > 0, got {value!r}")
        for name in ("hnsw_m", "hnsw_ef_construct", "grpc_port", "write_concurrency"):
            if int(getattr(self, name)) < 1:
                raise StateError(f"VectorStoreConfig.{name} must be >= 1")


class UpsertRequest(NamedTuple):
    """One upsert request: points in JSON form, and the guard (None: a backfill's insert_only)."""

    collection: str
    points: list[JsonDict]
    guard: JsonDict | None


class StoredPoint(NamedTuple):
    """A point as read back: its (normalised) vector and payload."""

    vector: FloatArray
    payload: dict[str, Any]


class Hit(NamedTuple):
    """One search result; `score` is the cosine similarity."""

    entity_id: str
    score: float
    payload: dict[str, Any]


def point_id(kind: EntityKind, entity_id: str) -> str:
    """The entity's point id: the same in every collection and every worker."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{kind}:{entity_id}"))


def canonical_version(version: str) -> str:
    """Model version as named in collections and payloads: ``7`` and ``v7`` both become ``v7``.

    Names are validated, never rewritten character by character, so two versions cannot collide
    in one collection name.
    """
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise StateError(f"invalid model version {version!r}")
    return version if version.startswith("v") else f"v{version}"


def collection_name(kind: EntityKind, version: str, prefix: str = "") -> str:
    """The collection of `kind` vectors of one model version, e.g. ``users_v0003``."""
    return f"{prefix}{kind}_{canonical_version(version)}"


def packed_guard(record: VectorRecord) -> int | None:
    """(state_version, basis_version) as one ordered integer, for a user with a basis whose
    versions fit (else None: the record is guarded by the two fields, a slower filter)."""
    if record.basis_version <= 0 or record.basis_version >= 1 << BASIS_BITS:
        return None
    if not 0 <= record.state_version < STATE_LIMIT:
        return None
    return (record.state_version << BASIS_BITS) | record.basis_version


def material_version(payload: Mapping[str, Any]) -> int:
    """An item point's material version: what a user built from it counts in its basis (its
    state version for points stored before the field)."""
    return int(payload.get(MATERIAL_VERSION, payload[STATE_VERSION]))


def make_payload(record: VectorRecord, model_version: str, updated_at: float) -> dict[str, Any]:
    """The payload stored beside each vector; `state_version` is what the guard compares."""
    payload = {
        "entity_id": record.entity_id,
        "model_version": canonical_version(model_version),
        "state_version": int(record.state_version),
        "event_ts_max": float(record.event_ts_max),
        "updated_at": float(updated_at),
        "basis_version": int(record.basis_version),
    }
    if record.material_version is not None:
        payload[MATERIAL_VERSION] = int(record.material_version)
    guard = packed_guard(record)
    if guard is not None:
        payload[GUARD_VERSION] = guard
    return payload


def freshest(records: Iterable[VectorRecord]) -> list[VectorRecord]:
    """One record per (kind, entity): the highest (state_version, basis_version), the last one
    on a tie.

    One request carries one filter clause per version, so a batch holding two writes of the same
    point could apply the older one last; deduplicating first keeps batches order-independent.
    """
    best: dict[tuple[str, str], VectorRecord] = {}
    for record in records:
        key = (record.kind, record.entity_id)
        held = best.get(key)
        if held is None or record.freshness >= held.freshness:
            best[key] = record
    return list(best.values())


def guard_filter(
    records: Sequence[VectorRecord],
    *,
    refresh: bool = False,
    ids: Sequence[str] | None = None,
) -> JsonDict:
    """An ``update_filter`` letting each point replace a stored one only if that one is older:
    a lower state version, or an equal one with a lower basis version (with `refresh`, any
    point of the same state version).

    It is the filter's JSON form (what the REST API takes, and what
    ``models.Filter.model_dump(exclude_none=True)`` gives): a server gets it as it is, the
    embedded and gRPC paths validate it into a ``models.Filter``. Building one pydantic model per
    clause cost more client CPU than the rest of a write. `ids`: the records' point ids, when the
    caller has them already.
    """
    points = ids if ids is not None else [point_id(r.kind, r.entity_id) for r in records]
    by_version: dict[tuple[int, int], list[str]] = {}
    by_guard: dict[int, list[str]] = {}
    unpacked: dict[int, list[str]] = {}  # stored before guard_version was
    for record, point in zip(records, points, strict=True):
        guard = None if refresh else packed_guard(record)
        if guard is not None:
            by_guard.setdefault(guard, []).append(point)
            unpacked.setdefault(record.state_version, []).append(point)
            continue
        basis = 0 if refresh else record.basis_version
        by_version.setdefault((record.state_version, basis), []).append(point)
    clauses = [
        _all(_has_id(members), _older(version, basis, refresh))
        for (version, basis), members in sorted(by_version.items())
    ]
    clauses += [
        _all(_has_id(members), _range(GUARD_VERSION, lt=guard))
        for guard, members in sorted(by_guard.items())
    ]
    # a stored point without guard_version (written before it existed, or with versions too
    # large to pack) is replaced by any higher state version, as before the field
    clauses += [
        _all(_has_id(members), _no_packed_guard(), _range(STATE_VERSION, lt=version))
        for version, members in sorted(unpacked.items())
    ]
    return {"should": clauses}


def _older(version: int, basis: int, refresh: bool) -> JsonDict:
    """The stored point's condition for being replaced by one of (version, basis)."""
    if refresh:
        return _range(STATE_VERSION, lte=version)
    lower = _range(STATE_VERSION, lt=version)
    if basis == 0:
        return lower
    same_state_older_basis = _all(
        {"key": STATE_VERSION, "match": {"value": version}}, _range(BASIS_VERSION, lt=basis)
    )
    return {"should": [lower, same_state_older_basis]}


def _all(*conditions: JsonDict) -> JsonDict:
    return {"must": list(conditions)}


def _no_packed_guard() -> JsonDict:
    return {"is_empty": {"key": GUARD_VERSION}}


def _has_id(ids: list[str]) -> JsonDict:
    return {"has_id": ids}


def _range(key: str, **bound: int) -> JsonDict:
    return {"key": key, "range": bound}


def filter_model(guard: JsonDict) -> models.Filter:
    """`guard_filter`'s JSON as the client's model, for the paths that take one (embedded, gRPC)."""
    return models.Filter.model_validate(guard)


def check_records(records: Sequence[VectorRecord]) -> list[FloatArray]:
    """Each record's vector as C-contiguous float32, in order; refuses (InvalidBatchError) the
    batch if any record holds what a retry could never write.

    Vectors of one length are checked as one matrix: a few numpy calls per batch instead of per
    record, which the profile showed adding up under load."""
    for record in records:
        _check_fields(record)
    vectors = [np.asarray(r.vector, dtype=np.float32) for r in records]
    if len({v.shape for v in vectors}) != 1 or vectors[0].ndim != 1:
        for record, vector in zip(records, vectors, strict=True):
            _check_vector(record, vector)
        return [np.ascontiguousarray(v) for v in vectors]
    matrix = np.stack(vectors)
    bad = ~(np.isfinite(matrix).all(axis=1) & matrix.any(axis=1))
    if bad.any():
        first = int(np.argmax(bad))
        _check_vector(records[first], vectors[first])
    return list(matrix)


def check_record(record: VectorRecord) -> list[float]:
    """The record's vector as floats; refuses what a retry could never write."""
    values: list[float] = check_records([record])[0].tolist()
    return values


def _check_fields(record: VectorRecord) -> None:
    if record.kind not in KINDS:
        raise InvalidBatchError(f"unknown entity kind {record.kind!r}")
    if not isinstance(record.entity_id, str) or not record.entity_id:
        raise InvalidBatchError(f"invalid entity id {record.entity_id!r}")
    if record.material_version is not None:
        _check_int(record, MATERIAL_VERSION, record.material_version)
    for name in (STATE_VERSION, BASIS_VERSION):
        _check_int(record, name, getattr(record, name))


def _check_int(record: VectorRecord, name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidBatchError(f"{record.entity_id}: {name} must be an int")
    if not INT64_MIN <= value <= INT64_MAX:  # Qdrant's integer payloads and indexes are i64
        raise InvalidBatchError(f"{record.entity_id}: {name} {value} does not fit in 64 bits")


def _check_vector(record: VectorRecord, vector: FloatArray) -> None:
    if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
        raise InvalidBatchError(f"{record.entity_id}: vector must be 1-d, non-empty and finite")
    if not np.any(vector):
        raise InvalidBatchError(f"{record.entity_id}: a zero vector has no cosine direction")


def point_dicts(
    batch: Sequence[VectorRecord],
    ids: Sequence[str],
    vectors: Sequence[FloatArray],
    model_version: str,
    updated_at: float,
) -> list[JsonDict]:
    """The batch's points in the REST API's JSON form (vectors still numpy rows)."""
    return [
        {"id": point, "vector": vector, "payload": make_payload(record, model_version, updated_at)}
        for record, point, vector in zip(batch, ids, vectors, strict=True)
    ]


def upsert_body(points: Sequence[JsonDict], guard: JsonDict | None) -> bytes:
    """A REST upsert request (``PointsList``) encoded in one call: the same JSON qdrant-client
    sends for these points, filter and mode, without a pydantic model per point and clause.
    No guard means a backfill: ``insert_only``. Vectors go out as float32, which is what the
    server keeps."""
    body: JsonDict = {"points": points}
    if guard is None:
        body["update_mode"] = models.UpdateMode.INSERT_ONLY.value
    else:
        body["update_filter"] = guard
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _put_points(client: QdrantClient, name: str, body: bytes) -> None:
    """Send an encoded upsert through qdrant-client's own REST client, as `client.upsert` does:
    its headers (the API key), timeout, middleware and error types (`UnexpectedResponse`,
    `ResponseHandlingException`), so retries and failover classify failures as before."""
    client.http.client.request(
        type_=models.InlineResponse2008,
        method="PUT",
        url="/collections/{collection_name}/points",
        path_params={"collection_name": name},
        params={"wait": "true"},
        headers={"Content-Type": "application/json"},
        content=body,
    )


def _purge(client: QdrantClient, prefix: str) -> int:
    ours = [a.alias_name for a in client.get_aliases().aliases if a.alias_name.startswith(prefix)]
    if ours:  # aliases first: an alias pins its collection
        client.update_collection_aliases(
            change_aliases_operations=[
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=name))
                for name in ours
            ]
        )
    names = [c.name for c in client.get_collections().collections if c.name.startswith(prefix)]
    for name in names:
        client.delete_collection(name)
    return len(names)


def _retryable(err: BaseException) -> bool:
    return isinstance(err, _STORE_ERRORS) and is_transient(err)


def is_transient(err: BaseException) -> bool:
    """Errors worth retrying: the store could not be reached, timed out, is overloaded, or is
    out of disk (an operator frees it; consumption pauses meanwhile instead of stopping)."""
    if isinstance(err, ResponseHandlingException | ConnectionError | TimeoutError):
        return True
    if isinstance(err, UnexpectedResponse):
        return err.status_code is None or err.status_code in _TRANSIENT_STATUS
    if isinstance(err, OSError):
        return err.errno in _TRANSIENT_ERRNO
    if isinstance(err, sqlite3.OperationalError):  # embedded mode keeps its points in SQLite
        return any(sign in str(err) for sign in _TRANSIENT_SQLITE)
    return False


def server_version(text: str) -> tuple[int, int]:
    """(major, minor) of a Qdrant version string such as ``1.17.0`` or ``v1.17.0-dev``."""
    numbers = [int(part) for part in re.findall(r"\d+", text)[:2]]
    return (numbers[0], numbers[1]) if len(numbers) == 2 else (0, 0)


def _check_server(client: QdrantClient) -> None:
    """Refuse a server that would ignore update_filter/update_mode and let vectors go backwards."""
    found = client.info().version
    if server_version(found) < MIN_SERVER_VERSION:
        wanted = ".".join(map(str, MIN_SERVER_VERSION))
        raise StateError(f"Qdrant server {found} is too old: guarded upserts need {wanted}+")


class VectorStore:
    """Guarded writes and alias-consistent reads of user and item vectors in Qdrant."""

    def __init__(
        self,
        config: VectorStoreConfig,
        wrap_client: Callable[[QdrantClient], QdrantClient] | None = None,
    ) -> None:
        """`wrap_client` sees the client once it is open (the fault tests' outage seam)."""
        self.config = config
        self._wrap_client = wrap_client
        self._client: QdrantClient | None = None
        self._lock = threading.RLock()
        self._embedded = config.url is None
        self._rest = not self._embedded and not config.prefer_grpc  # upserts sent as built JSON
        self._writers: ThreadPoolExecutor | None = None  # concurrent upsert requests (server)
        self._peer = 0  # index into config.peers of the peer calls go to
        self._failing_since: float | None = None
        self._backoff = Backoff(
            config.retry_initial_s, config.retry_max_s, config.unavailable_after_s
        )

    # -- connection and retries --------------------------------------------------------------

    def _connect(self) -> QdrantClient:
        """Open the client on first use; a server is checked once for the features we rely on."""
        with self._lock:
            if self._client is not None:
                return self._client
            cfg = self.config
            if cfg.url is not None:
                client = QdrantClient(
                    url=cfg.peers[self._peer],
                    api_key=cfg.api_key,
                    prefer_grpc=cfg.prefer_grpc,
                    grpc_port=cfg.grpc_port,
                    timeout=max(1, math.ceil(cfg.timeout_s)),
                    check_compatibility=False,  # it warns instead of failing; we check below
                )
                try:
                    _check_server(client)
                except BaseException:
                    client.close()
                    raise
            else:
                client = QdrantClient(path=cfg.path) if cfg.path else QdrantClient(":memory:")
            self._client = self._wrap_client(client) if self._wrap_client else client
            return self._client

    def _serialised(self) -> contextlib.AbstractContextManager[Any]:
        return self._lock if self._embedded else contextlib.nullcontext()

    def _call(self, what: str, action: Callable[[QdrantClient], T]) -> T:
        """Run `action` under the retry policy until `unavailable_after_s` has passed."""

        tried = [self._peer]  # the peer of the last attempt

        def once() -> T:
            tried[0] = self._peer
            client = self._connect()
            with self._serialised():
                return action(client)

        def failing(_error: BaseException, _attempt: int, _wait: float) -> None:
            self._failing_since = self._failing_since or time.monotonic()
            self._next_peer(tried[0])

        try:
            result = retry_sync(
                once,
                what=f"Qdrant {what}",
                backoff=self._backoff,
                transient=_retryable,
                on_retry=failing,
            )
        except GaveUp as gave_up:
            raise VectorStoreUnavailable(
                f"Qdrant unreachable for {gave_up.seconds:.1f}s during {what} "
                f"({gave_up.attempts} attempts): {gave_up.__cause__}"
            ) from gave_up.__cause__
        except _STORE_ERRORS as err:
            raise StateError(f"Qdrant refused {what}: {err}") from err
        self._failing_since = None
        return result

    def _next_peer(self, failed: int) -> None:
        """After a failed call to a cluster, the retry goes to the next peer: once per failed
        peer, so concurrent writers failing on one peer move past it together, not past the
        next one too. The writer pool stays: a writer's own failure lands here, in the pool."""
        peers = self.config.peers
        if len(peers) < 2:
            return
        with self._lock:
            if self._peer != failed:
                return  # another call moved on already
            if self._client is not None:
                self._client.close()
                self._client = None
            self._peer = (self._peer + 1) % len(peers)
            log.info("Qdrant: moving to peer %s", peers[self._peer])

    @property
    def failing_since(self) -> float | None:
        """Monotonic time of the first failed try in the current run of failures, else None."""
        return self._failing_since

    def close(self) -> None:
        """Release the client (and an embedded store's lock on its path)."""
        with self._lock:
            writers, self._writers = self._writers, None
        if writers is not None:  # outside the lock: a writer may be waiting for it
            writers.shutdown(wait=True)
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- names -------------------------------------------------------------------------------

    def alias(self, kind: EntityKind) -> str:
        """The alias readers use for `kind`."""
        return self._target(kind, None)

    def collection(self, kind: EntityKind, version: str) -> str:
        """The collection holding `kind` vectors of model `version`."""
        return self._target(kind, version)

    def _target(self, kind: EntityKind, version: str | None) -> str:
        if kind not in KINDS:
            raise StateError(f"unknown entity kind {kind!r}")
        prefix = self.config.prefix
        return f"{prefix}{kind}" if version is None else collection_name(kind, version, prefix)

    # -- model versions ----------------------------------------------------------------------

    def prepare(self, version: str, dim: int) -> None:
        """Create the version's collection pair if missing; refuse an existing one of another shape.

        Idempotent, so every worker may call it when it loads a model. Aliases are not touched:
        readers keep the serving pair until `flip`.
        """
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise StateError(f"vector size must be an int >= 1, got {dim!r}")
        names = [self.collection(kind, version) for kind in KINDS]

        def ensure_all(client: QdrantClient) -> None:
            for name in names:
                self._ensure(client, name, dim)

        self._call(f"prepare {names}", ensure_all)
        if self.config.path is not None:
            for name in names:
                embedded_wal(Path(self.config.path), name)

    def _ensure(self, client: QdrantClient, name: str, dim: int) -> None:
        cfg = self.config
        wanted = models.VectorParams(
            size=dim, distance=models.Distance.COSINE, on_disk=cfg.on_disk or None
        )
        created = not client.collection_exists(name) and self._create(client, name, wanted)
        if not created:
            found = client.get_collection(name).config.params.vectors
            if not isinstance(found, models.VectorParams) or (found.size, found.distance) != (
                wanted.size,
                wanted.distance,
            ):
                raise StateError(f"collection {name} exists with other vector params: {found}")
        if not self._embedded and cfg.payload_index:  # embedded mode has no indexes (it warns)
            # Every live write filters on state_version (the guard): index it, so the server
            # evaluates the filter from the index rather than from each point's payload.
            # Idempotent, and asked every time: the worker that created the collection may
            # have died before it got here.
            for field_name in (STATE_VERSION, GUARD_VERSION):
                client.create_payload_index(
                    name, field_name, field_schema=models.PayloadSchemaType.INTEGER, wait=True
                )
        if created:
            log.info(
                "created collection %s (dim %d, cosine, hnsw m=%d ef_construct=%d%s)",
                name,
                dim,
                cfg.hnsw_m,
                cfg.hnsw_ef_construct,
                ", on disk" if cfg.on_disk else "",
            )

    def _create(self, client: QdrantClient, name: str, wanted: models.VectorParams) -> bool:
        """Create `name`; False when another worker created it first (several prepare at once)."""
        hnsw = models.HnswConfigDiff(
            m=self.config.hnsw_m, ef_construct=self.config.hnsw_ef_construct
        )
        cfg = self.config
        try:
            client.create_collection(
                name,
                vectors_config=wanted,
                hnsw_config=hnsw,
                shard_number=cfg.shard_number,
                replication_factor=cfg.replication_factor,
                write_consistency_factor=cfg.write_consistency_factor,
            )
        except UnexpectedResponse as err:
            if err.status_code == 409:  # Conflict: it exists now
                return False
            raise
        except ValueError as err:  # embedded mode says it this way
            if "already exists" in str(err):
                return False
            raise
        return True

    def _aliases(self, client: QdrantClient) -> dict[str, str]:
        ours = {self.alias(kind) for kind in KINDS}
        return {
            a.alias_name: a.collection_name
            for a in client.get_aliases().aliases
            if a.alias_name in ours
        }

    def serving_version(self) -> str | None:
        """The model version both aliases point at; None before the first flip."""
        aliases = self._call("read aliases", self._aliases)
        if not aliases:
            return None
        versions: set[str | None] = set()
        for kind in KINDS:
            target = aliases.get(self.alias(kind), "")
            head = f"{self.alias(kind)}_"
            versions.add(target[len(head) :] if target.startswith(head) else None)
        if len(versions) != 1 or None in versions:
            raise StateError(f"aliases disagree or point at foreign collections: {aliases}")
        return versions.pop()

    def flip(self, version: str) -> None:
        """Point both aliases at `version`'s pair in one atomic call; the first flip makes them."""
        targets = {self.alias(kind): self.collection(kind, version) for kind in KINDS}
        self._call(f"flip to {version}", lambda c: self._flip(c, targets))
        log.info("aliases now serve %s", canonical_version(version))

    def _flip(self, client: QdrantClient, targets: dict[str, str]) -> None:
        for name in targets.values():
            if not client.collection_exists(name):
                raise StateError(f"cannot flip to {name}: prepare it first")
        current = self._aliases(client)
        if current == targets:
            return
        operations: list[models.AliasOperations] = []
        for alias_name, name in targets.items():
            if alias_name in current:
                operations.append(
                    models.DeleteAliasOperation(
                        delete_alias=models.DeleteAlias(alias_name=alias_name)
                    )
                )
            operations.append(
                models.CreateAliasOperation(
                    create_alias=models.CreateAlias(collection_name=name, alias_name=alias_name)
                )
            )
        client.update_collection_aliases(change_aliases_operations=operations)

    def drop(self, version: str) -> None:
        """Delete an old version's pair; the serving one is refused. Missing ones are fine."""
        if self.serving_version() == canonical_version(version):
            raise StateError(f"{canonical_version(version)} is serving; flip away before dropping")
        names = [self.collection(kind, version) for kind in KINDS]
        self._call(f"drop {names}", lambda c: [c.delete_collection(name) for name in names])

    def purge(self) -> int:
        """Delete every alias and collection under this store's prefix (a test's or a bench's
        namespace on a shared server); returns the collections deleted. Needs a prefix, so it
        can never wipe a production namespace by accident."""
        prefix = self.config.prefix
        if not prefix:
            raise StateError("purge needs a prefix: it never deletes an unprefixed namespace")
        return self._call(f"purge {prefix}*", lambda c: _purge(c, prefix))

    # -- writes ------------------------------------------------------------------------------

    def upsert(
        self,
        version: str,
        records: Sequence[VectorRecord],
        *,
        insert_only: bool = False,
        refresh: bool = False,
    ) -> int:
        """Write `records` to `version`'s pair with ``wait=True``; returns the points sent.

        Live writes are guarded by state_version (stale and equal ones are skipped by the store);
        ``insert_only`` (backfills) writes only points that do not exist yet; ``refresh`` writes
        over equal versions too. Nothing is written if any record is invalid. Points sent minus
        points changed is not reported by Qdrant.
        """
        if insert_only and refresh:
            raise StateError("upsert: insert_only and refresh exclude each other")
        model_version = canonical_version(version)
        # all of them first, so nothing is written if one is invalid; each converted once
        values = dict(zip(map(id, records), check_records(records), strict=True))
        fresh = freshest(records)
        updated_at = time.time()
        requests: list[UpsertRequest] = []
        for kind in KINDS:
            mine = [r for r in fresh if r.kind == kind]
            name = self.collection(kind, version)
            for start in range(0, len(mine), self.config.batch_size):
                batch = mine[start : start + self.config.batch_size]
                ids = [point_id(kind, r.entity_id) for r in batch]
                vectors = [values[id(r)] for r in batch]
                points = point_dicts(batch, ids, vectors, model_version, updated_at)
                guard = None if insert_only else guard_filter(batch, refresh=refresh, ids=ids)
                requests.append(UpsertRequest(name, points, guard))
        self._write_all(requests)
        return len(fresh)

    def _write_all(self, requests: Sequence[UpsertRequest]) -> None:
        """Every request, several in flight on a server; each point is in one request only
        (`freshest`), so their order does not matter. The first failure is raised once all
        requests ended (what did land is guarded and idempotent, like any partial write)."""
        if self._embedded or len(requests) < 2 or self.config.write_concurrency < 2:
            for request in requests:
                self._write(request)
            return
        with self._lock:
            if self._writers is None:
                self._writers = ThreadPoolExecutor(
                    self.config.write_concurrency, thread_name_prefix="qdrant-write"
                )
            writers = self._writers
        futures = [writers.submit(self._write, request) for request in requests]
        for future in futures:
            future.exception()  # wait for all before raising any
        for future in futures:
            future.result()

    def _write(self, request: UpsertRequest) -> None:
        """One request: over REST as JSON encoded once (before the retries, which resend it),
        else (embedded, gRPC) through the client's models."""
        name = request.collection
        if self._rest:
            body = upsert_body(request.points, request.guard)
            self._call(f"upsert into {name}", lambda c: _put_points(c, name, body))
            return
        points = [
            models.PointStruct(id=p["id"], vector=p["vector"].tolist(), payload=p["payload"])
            for p in request.points
        ]
        guard = None if request.guard is None else filter_model(request.guard)
        mode = models.UpdateMode.INSERT_ONLY if guard is None else None
        self._call(
            f"upsert into {name}",
            lambda c: c.upsert(name, points, wait=True, update_filter=guard, update_mode=mode),
        )

    # -- reads -------------------------------------------------------------------------------

    def get(
        self, kind: EntityKind, entity_ids: Iterable[str], *, version: str | None = None
    ) -> dict[str, StoredPoint]:
        """Stored vectors and payloads of the entities found, through the alias by default."""
        ids = {point_id(kind, e): e for e in entity_ids}
        target = self._target(kind, version)
        found = self._call(
            f"read {target}",
            lambda c: c.retrieve(target, ids=list(ids), with_payload=True, with_vectors=True),
        )
        return {
            ids[str(p.id)]: StoredPoint(_vector(p.vector), dict(p.payload or {})) for p in found
        }

    def search(
        self,
        kind: EntityKind,
        vector: Sequence[float] | FloatArray,
        k: int,
        exclude_ids: Iterable[str] = (),
        *,
        version: str | None = None,
    ) -> list[Hit]:
        """The `k` entities of `kind` closest (cosine) to `vector`, best first."""
        excluded = [point_id(kind, e) for e in exclude_ids]
        query_filter = (
            models.Filter(must_not=[models.HasIdCondition(has_id=list(excluded))])
            if excluded
            else None
        )
        query = np.asarray(vector, dtype=np.float32).tolist()
        target = self._target(kind, version)
        ef = self.config.search_ef
        params = models.SearchParams(hnsw_ef=ef) if ef is not None and not self._embedded else None
        result = self._call(
            f"search {target}",
            lambda c: c.query_points(
                target,
                query=query,
                limit=k,
                query_filter=query_filter,
                with_payload=True,
                search_params=params,
            ),
        )
        return [
            Hit(str((p.payload or {})["entity_id"]), float(p.score), dict(p.payload or {}))
            for p in result.points
        ]

    def count(self, kind: EntityKind, *, version: str | None = None) -> int:
        """Exact number of points of `kind` (serving pair by default)."""
        target = self._target(kind, version)
        return self._call(f"count {target}", lambda c: c.count(target, exact=True).count)


def embedded_wal(root: Path, name: str) -> None:
    """Put an embedded collection's SQLite file in WAL mode (a setting kept in the file).

    Embedded mode commits every point on its own; in SQLite's default rollback-journal mode each
    commit costs several fsyncs, in WAL mode one append and one fsync. Measured here: 2,000
    points in 3.8 s before, 1.4 s after, with the same durability (synchronous stays FULL).
    A server has no such file; nothing happens then, nor when the layout is not the expected one.
    """
    storage = root / "collection" / name / "storage.sqlite"
    if not storage.is_file():
        return
    with contextlib.closing(sqlite3.connect(storage)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
    if not mode or mode[0] != "wal":
        log.warning("could not switch %s to WAL mode (%s)", storage, mode)


def _vector(stored: Any) -> FloatArray:
    """The unnamed vector of a retrieved point as float32."""
    if not isinstance(stored, list):
        raise StateError(f"unexpected stored vector shape: {type(stored).__name__}")
    return np.asarray(stored, dtype=np.float32)
