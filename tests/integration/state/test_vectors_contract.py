"""VectorStore contract: the same checks on the test Qdrant server and in embedded mode.

The server comes from the fixture layer (tests/support/services.py), each test under its own
collection prefix, dropped after; embedded mode runs the same checks on the test's own path, as
the demo's fallback. Nothing is skipped.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from state import StateUnavailableError, VectorRecord, VectorStore, VectorStoreConfig
from state import retry as retry_module
from state.exceptions import InvalidBatchError, StateError, VectorStoreUnavailable
from state.vectors import EntityKind

log = logging.getLogger(__name__)

DIM = 16


@pytest.fixture(params=["server", "embedded"])
def vector_config(
    request: pytest.FixtureRequest, qdrant_config: VectorStoreConfig, tmp_path: Any
) -> VectorStoreConfig:
    """Every check on the test Qdrant server (own prefix), and again in embedded mode."""
    if request.param == "server":
        return replace(qdrant_config, batch_size=7, timeout_s=5.0)
    return VectorStoreConfig(path=str(tmp_path / "qdrant"), batch_size=7)


@pytest.fixture
def store(vector_config: VectorStoreConfig) -> Iterator[VectorStore]:
    with VectorStore(vector_config) as opened:
        yield opened


def unit_vectors(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    raw = rng.normal(size=(n, DIM)).astype(np.float32)
    normed: npt.NDArray[np.float32] = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    return normed


def cosine(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def records(
    kind: EntityKind, vectors: npt.NDArray[np.float32], version: int = 1
) -> list[VectorRecord]:
    return [
        VectorRecord(kind, f"{kind[0]}{n}", vectors[n], version, 1_700_000_000.0 + n)
        for n in range(len(vectors))
    ]


def fill(store: VectorStore, version: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store.prepare(version, DIM)
    for kind in ("users", "items"):
        store.upsert(version, records(kind, unit_vectors(rng, n)))


def test_guarded_writes_end_at_the_freshest_despite_duplicates_reorders_and_stale(
    store: VectorStore,
) -> None:
    """RELIABILITY scenario 7: I3 after every call, and the oracle (max version) at the end."""
    rng = np.random.default_rng(7)
    store.prepare("1", DIM)
    entities, versions = 40, 6
    truth = {
        (e, v): unit_vectors(rng, 1)[0] for e in range(entities) for v in range(1, versions + 1)
    }
    writes = [VectorRecord("users", f"u{e}", vec, v, float(v)) for (e, v), vec in truth.items()]
    writes += random.Random(7).choices(writes, k=len(writes) // 2)  # duplicates (retries)
    random.Random(8).shuffle(writes)  # reordered, so most late writes are stale
    ids = [f"u{e}" for e in range(entities)]
    seen: dict[str, int] = {}
    sent = stale = 0
    cursor = 0
    while cursor < len(writes):
        chunk = writes[cursor : cursor + random.Random(cursor).randint(1, 30)]
        cursor += len(chunk)
        stale += sum(1 for w in chunk if w.state_version <= seen.get(w.entity_id, 0))
        sent += store.upsert("1", chunk)
        now = {
            e: p.payload["state_version"] for e, p in store.get("users", ids, version="1").items()
        }
        assert all(now[e] >= seen.get(e, 0) for e in now), "a state_version went backwards (I3)"
        seen.update(now)
    final = store.get("users", ids, version="1")
    mismatched = [
        e
        for e in range(entities)
        if final[f"u{e}"].payload["state_version"] != versions
        or cosine(final[f"u{e}"].vector, truth[(e, versions)]) < 0.99999
    ]
    log.info(
        "scenario 7: %d writes offered, %d sent after in-batch dedup, %d stale or equal at send "
        "time, %d entities, %d mismatched with the oracle",
        len(writes),
        sent,
        stale,
        entities,
        len(mismatched),
    )
    assert not mismatched
    assert stale > 0 and store.count("users", version="1") == entities


def test_a_batch_holding_two_writes_of_one_point_keeps_the_fresher_vector(
    store: VectorStore,
) -> None:
    store.prepare("1", DIM)
    fresh, stale = unit_vectors(np.random.default_rng(5), 2)
    batch = [VectorRecord("users", "u1", fresh, 5, 5.0), VectorRecord("users", "u1", stale, 3, 3.0)]
    assert store.upsert("1", batch) == 1
    stored = store.get("users", ["u1"], version="1")["u1"]
    assert stored.payload["state_version"] == 5 and cosine(stored.vector, fresh) > 0.99999


def test_equal_version_rewrite_is_a_no_op(store: VectorStore) -> None:
    store.prepare("1", DIM)
    first, second = unit_vectors(np.random.default_rng(1), 2)
    store.upsert("1", [VectorRecord("items", "i1", first, 4, 10.0)])
    before = store.get("items", ["i1"], version="1")["i1"]
    assert store.upsert("1", [VectorRecord("items", "i1", second, 4, 11.0)]) == 1
    after = store.get("items", ["i1"], version="1")["i1"]
    assert after.payload == before.payload
    assert np.allclose(after.vector, before.vector)
    assert cosine(after.vector, first) > 0.99999


def test_refresh_rewrites_an_equal_version_but_never_an_older_state(store: VectorStore) -> None:
    store.prepare("1", DIM)
    first, second, third = unit_vectors(np.random.default_rng(2), 3)
    store.upsert("1", [VectorRecord("users", "u1", first, 4, 10.0)])
    store.upsert("1", [VectorRecord("users", "u1", second, 4, 11.0)], refresh=True)
    stored = store.get("users", ["u1"], version="1")["u1"]
    assert stored.payload["state_version"] == 4 and cosine(stored.vector, second) > 0.99999
    store.upsert("1", [VectorRecord("users", "u1", third, 3, 12.0)], refresh=True)
    stored = store.get("users", ["u1"], version="1")["u1"]
    assert stored.payload["state_version"] == 4 and cosine(stored.vector, second) > 0.99999
    with pytest.raises(StateError):
        store.upsert(
            "1", [VectorRecord("users", "u1", third, 5, 12.0)], insert_only=True, refresh=True
        )


def test_a_user_of_the_same_state_from_newer_item_vectors_replaces_an_older_build(
    store: VectorStore,
) -> None:
    """The fan-out's write: same state version, a higher basis version goes through; an equal or
    lower one (a replay, a zombie that read older item vectors) is skipped; a newer state wins
    whatever its basis."""
    store.prepare("1", DIM)
    v1, v2, v3, v4 = unit_vectors(np.random.default_rng(3), 4)

    def write(vector: npt.NDArray[np.float32], state: int, basis: int) -> tuple[Any, Any, Any]:
        store.upsert("1", [VectorRecord("users", "u1", vector, state, 10.0, basis_version=basis)])
        stored = store.get("users", ["u1"], version="1")["u1"]
        return stored.payload["state_version"], stored.payload["basis_version"], stored.vector

    assert write(v1, 4, 20)[:2] == (4, 20)
    state, basis, vector = write(v2, 4, 25)
    assert (state, basis) == (4, 25) and cosine(vector, v2) > 0.99999
    for stale in (25, 21):
        state, basis, vector = write(v3, 4, stale)
        assert (state, basis) == (4, 25) and cosine(vector, v2) > 0.99999
    state, basis, vector = write(v4, 5, 3)
    assert (state, basis) == (5, 3) and cosine(vector, v4) > 0.99999


def test_insert_only_backfill_never_overwrites_a_live_point_but_fills_missing(
    store: VectorStore,
) -> None:
    """RELIABILITY scenario 10: the backfill races the live writer and must lose to it."""
    rng = np.random.default_rng(3)
    store.prepare("2", DIM)
    live = [VectorRecord("users", f"u{n}", v, 5, 50.0) for n, v in enumerate(unit_vectors(rng, 10))]
    store.upsert("2", live)
    backfill = [
        VectorRecord("users", f"u{n}", v, 3 if n % 2 else 9, 30.0)  # older and newer than live
        for n, v in enumerate(unit_vectors(rng, 25))
    ]
    assert store.upsert("2", backfill, insert_only=True) == 25
    stored = store.get("users", [f"u{n}" for n in range(25)], version="2")
    assert len(stored) == 25
    for n, record in enumerate(live):
        assert stored[f"u{n}"].payload["state_version"] == 5
        assert cosine(stored[f"u{n}"].vector, np.asarray(record.vector)) > 0.99999
    for n in range(10, 25):
        assert stored[f"u{n}"].payload["state_version"] == backfill[n].state_version
    log.info("backfill: %d offered, %d live points kept, %d filled", 25, 10, 15)


def test_prepare_flip_drop_move_both_aliases_together(store: VectorStore) -> None:
    assert store.serving_version() is None
    fill(store, "v1", 5, seed=1)
    store.prepare("v1", DIM)  # idempotent
    with pytest.raises(StateError, match="other vector params"):
        store.prepare("v1", DIM + 1)
    with pytest.raises(StateError, match="prepare it first"):
        store.flip("v9")
    store.flip("v1")  # first deployment creates the aliases
    assert store.serving_version() == "v1"
    assert (store.count("users"), store.count("items")) == (5, 5)
    fill(store, "2", 7, seed=2)
    store.flip("2")
    store.flip("v2")  # same version, already serving: nothing to do
    assert store.serving_version() == "v2"
    assert (store.count("users"), store.count("items")) == (7, 7)
    with pytest.raises(StateError, match="is serving"):
        store.drop("2")
    store.drop("v1")
    store.drop("v1")  # already gone
    with pytest.raises(StateError):
        store.count("users", version="v1")
    assert store.serving_version() == "v2"


def _read_loop(
    store: VectorStore, stop: threading.Event, errors: list[str], reads: list[int]
) -> None:
    """Alternate user and item reads through the aliases and through a pinned version."""
    users = [f"u{n}" for n in range(20)]
    query = np.ones(DIM, dtype=np.float32)
    while not stop.is_set():
        try:
            got = store.get("users", users)
            hits = store.search("items", query, 5)
            pinned = store.serving_version()
            pinned_users = store.get("users", users[:3], version=pinned)
            pinned_items = store.search("items", query, 3, version=pinned)
        except StateError as err:
            errors.append(f"read failed: {err}")
            return
        for what, versions in (
            ("users", {p.payload["model_version"] for p in got.values()}),
            ("items", {h.payload["model_version"] for h in hits}),
            (
                "pinned pair",
                {p.payload["model_version"] for p in pinned_users.values()}
                | {h.payload["model_version"] for h in pinned_items},
            ),
        ):
            if len(versions) != 1 or (what == "pinned pair" and versions != {pinned}):
                errors.append(f"{what}: versions {versions} (pinned {pinned})")
        if len(got) != len(users) or len(hits) != 5:
            errors.append(f"short read: {len(got)} users, {len(hits)} items")
        reads[0] += 1


def test_reads_through_aliases_never_fail_empty_or_mixed_while_flipping(
    store: VectorStore,
) -> None:
    """RELIABILITY scenario 10 on the read side: a reader thread during repeated flips."""
    fill(store, "v1", 20, seed=1)
    fill(store, "v2", 20, seed=2)
    store.flip("v1")
    stop, errors, reads = threading.Event(), list[str](), [0]
    reader = threading.Thread(target=_read_loop, args=(store, stop, errors, reads))
    reader.start()
    flips = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not errors:
        store.flip("v2" if flips % 2 == 0 else "v1")
        flips += 1
        time.sleep(0.005)
    stop.set()
    reader.join(timeout=30)
    log.info("alias flips: %d flips, %d reader rounds, %d errors", flips, reads[0], len(errors))
    assert not errors, errors[:5]
    assert flips >= 20 and reads[0] >= 20


def test_search_through_the_alias_matches_brute_force_cosine(store: VectorStore) -> None:
    rng = np.random.default_rng(11)
    items = rng.normal(size=(300, DIM)).astype(np.float32)  # not normalised: Qdrant does it
    store.prepare("v1", DIM)
    store.upsert("v1", records("items", items))
    store.flip("v1")
    normed = items / np.linalg.norm(items, axis=1, keepdims=True)
    for _ in range(10):
        query = rng.normal(size=DIM).astype(np.float32)
        excluded = {f"i{n}" for n in rng.choice(300, size=5, replace=False)}
        scores = normed @ (query / np.linalg.norm(query))
        ranked = [f"i{n}" for n in np.argsort(-scores) if f"i{n}" not in excluded][:10]
        hits = store.search("items", query, 10, exclude_ids=excluded)
        assert [h.entity_id for h in hits] == ranked
        expected = [float(scores[int(e[1:])]) for e in ranked]
        assert np.allclose([h.score for h in hits], expected, atol=1e-5)


def test_invalid_records_write_nothing_and_unprepared_versions_are_refused(
    store: VectorStore,
) -> None:
    store.prepare("v1", DIM)
    good = VectorRecord("users", "u1", np.ones(DIM, dtype=np.float32), 1, 0.0)
    bad = VectorRecord("users", "u2", np.full(DIM, np.nan, dtype=np.float32), 1, 0.0)
    with pytest.raises(InvalidBatchError):
        store.upsert("v1", [good, bad])
    assert store.count("users", version="v1") == 0
    with pytest.raises(StateError) as refused:
        store.upsert("v8", [good])
    assert not isinstance(refused.value, StateUnavailableError)  # a refusal, not an outage


def test_points_and_aliases_survive_reopening(vector_config: VectorStoreConfig) -> None:
    with VectorStore(vector_config) as first:
        fill(first, "v3", 4, seed=3)
        first.flip("v3")
    with VectorStore(vector_config) as second:
        assert second.serving_version() == "v3"
        assert len(second.get("items", ["i0", "i1", "i9"])) == 2


class FakeClock:
    """Stands in for the `time` module of state.retry: `sleep` moves `monotonic` on."""

    def __init__(self) -> None:
        self.now, self.slept = 1000.0, list[float]()

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections are refused


def test_unreachable_store_retries_then_raises_unavailable(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry loop's clock is a fake one that only sleeping moves, so the number of attempts
    before giving up follows from the backoff alone, however slow a refused connect is here."""
    clock = FakeClock()
    monkeypatch.setattr(retry_module, "time", clock)
    config = VectorStoreConfig(
        url=f"http://127.0.0.1:{_closed_loopback_port()}",
        timeout_s=1.0,
        retry_initial_s=0.01,
        retry_max_s=0.05,
        unavailable_after_s=0.5,
    )
    record = VectorRecord("users", "u1", np.ones(DIM, dtype=np.float32), 1, 0.0)
    with (
        VectorStore(config) as store,
        caplog.at_level(logging.WARNING, logger="state.retry"),
        pytest.raises(VectorStoreUnavailable, match="unreachable"),
    ):
        store.upsert("v1", [record])
    waits = [w for w in clock.slept if w > 0]
    retries = sum("retry" in r.getMessage() for r in caplog.records)
    # 0.01, 0.02, 0.04 (+ jitter), then 0.05 a time until 0.5 s have passed
    assert retries == len(waits) >= 10 and sum(waits) == pytest.approx(0.5)
    assert max(waits) <= 0.05 * 1.5


def test_transient_failures_are_retried_until_the_write_lands(
    store: VectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.prepare("v1", DIM)
    client = store._connect()
    # where an upsert leaves: the client's method in embedded mode, its REST client on a server
    owner: Any = client if store.config.url is None else client.http.client
    method = "upsert" if store.config.url is None else "send"
    real: Callable[..., Any] = getattr(owner, method)
    failures = [ResponseHandlingException(ConnectionRefusedError()) for _ in range(3)]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, method, flaky)
    assert (
        store.upsert("v1", [VectorRecord("users", "u1", np.ones(DIM, dtype=np.float32), 1, 0.0)])
        == 1
    )
    assert not failures and store.count("users", version="v1") == 1


def test_workers_preparing_one_version_at_once_all_succeed(
    qdrant_config: VectorStoreConfig,
) -> None:
    """Several workers load a new model together: every prepare succeeds (a lost create race is
    not an error), and the collections carry the guard's payload index."""
    start = threading.Barrier(4)
    failures: list[BaseException] = []

    def prepare() -> None:
        with VectorStore(qdrant_config) as store:
            start.wait()
            try:
                store.prepare("v7", DIM)
            except BaseException as exc:  # collected for the assertion below
                failures.append(exc)

    threads = [threading.Thread(target=prepare) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    client = QdrantClient(url=qdrant_config.url, check_compatibility=False)
    try:
        for kind in ("users", "items"):
            info = client.get_collection(f"{qdrant_config.prefix}{kind}_v7")
            assert "state_version" in (info.payload_schema or {}), kind
            assert info.config.hnsw_config.m == qdrant_config.hnsw_m
    finally:
        client.close()


def test_a_cluster_url_list_moves_past_a_peer_that_does_not_answer(
    qdrant_config: VectorStoreConfig,
) -> None:
    """`url` as a cluster's peers: the first is down, the store writes and reads through the
    next one (the fixture's server) after one failed try."""
    assert qdrant_config.url is not None
    peers = f"http://127.0.0.1:{_closed_loopback_port()},{qdrant_config.url}"
    config = replace(qdrant_config, url=peers, retry_initial_s=0.01)
    record = VectorRecord("users", "u1", np.ones(DIM, dtype=np.float32), 1, 0.0)
    with VectorStore(config) as store:
        store.prepare("v1", DIM)
        store.upsert("v1", [record])
        assert set(store.get("users", ["u1"], version="v1")) == {"u1"}
        assert store.failing_since is None


def test_concurrent_writes_move_past_a_peer_that_does_not_answer(
    qdrant_config: VectorStoreConfig,
) -> None:
    """The first failure of an upsert running in the writer pool moves the store to the next
    peer from inside that pool; its requests are retried there (the pool is not torn down
    under them)."""
    assert qdrant_config.url is not None
    with VectorStore(qdrant_config) as store:
        store.prepare("v1", DIM)
    peers = f"http://127.0.0.1:{_closed_loopback_port()},{qdrant_config.url}"
    config = replace(
        qdrant_config, url=peers, retry_initial_s=0.01, batch_size=1, write_concurrency=4
    )
    records = [
        VectorRecord("users", f"u{k}", np.ones(DIM, dtype=np.float32), 1, 0.0) for k in range(4)
    ]
    with VectorStore(config) as store:
        assert store.upsert("v1", records) == 4
        assert set(store.get("users", [r.entity_id for r in records], version="v1")) == {
            r.entity_id for r in records
        }
