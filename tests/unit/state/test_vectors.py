"""Pure parts of the Qdrant sink: point ids, names, payloads, the guard filter, error classes."""

from __future__ import annotations

import errno
import sqlite3
import uuid

import httpx
import numpy as np
import pytest
from qdrant_client import models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from state import StateUnavailableError, VectorStoreUnavailable
from state.exceptions import InvalidBatchError, StateError
from state.vectors import (
    GUARD_VERSION,
    PAYLOAD_KEYS,
    POINT_NAMESPACE,
    VectorRecord,
    VectorStoreConfig,
    canonical_version,
    check_record,
    collection_name,
    freshest,
    guard_filter,
    is_transient,
    make_payload,
    packed_guard,
    point_id,
    server_version,
)


def rec(
    entity: str, version: int, kind: str = "users", vector: object = (1.0, 0.0)
) -> VectorRecord:
    return VectorRecord(kind, entity, vector, version, 100.0)  # type: ignore[arg-type]


def test_point_ids_are_deterministic_uuid5_per_kind() -> None:
    assert (
        point_id("users", "u1") == "8c8a5de7-3759-5302-baeb-b08471f26e06"
    )  # stored points depend on it: never changes
    pid = point_id("users", "u1")
    assert pid == point_id("users", "u1") == str(uuid.uuid5(POINT_NAMESPACE, "users:u1"))
    assert uuid.UUID(pid).version == 5
    assert pid != point_id("items", "u1")  # a user and an item may share an id
    assert len({point_id("items", f"i{n}") for n in range(1000)}) == 1000


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("v0001", "v0001"), ("7", "v7"), ("v7", "v7"), ("2024.06-a", "v2024.06-a")],
)
def test_versions_are_canonical_and_named_in_collections(given: str, canonical: str) -> None:
    assert canonical_version(given) == canonical
    assert collection_name("users", given) == f"users_{canonical}"
    assert collection_name("items", given, prefix="t1_") == f"t1_items_{canonical}"


@pytest.mark.parametrize("bad", ["", "v 1", "a/b", "x" * 65, "_v1", "v1:x", "é"])
def test_versions_that_could_collide_or_break_names_are_refused(bad: str) -> None:
    with pytest.raises(StateError):
        canonical_version(bad)


def test_payload_shape() -> None:
    payload = make_payload(rec("u1", 12), "3", updated_at=1_700_000_000.5)
    assert tuple(payload) == PAYLOAD_KEYS
    assert payload == {
        "entity_id": "u1",
        "model_version": "v3",
        "state_version": 12,
        "event_ts_max": 100.0,
        "updated_at": 1_700_000_000.5,
        "basis_version": 0,
    }
    assert isinstance(payload["state_version"], int)


def test_freshest_keeps_the_highest_version_per_entity_and_the_last_on_ties() -> None:
    a_old, a_new, a_tie = (
        rec("a", 1),
        rec("a", 5, vector=(0.0, 1.0)),
        rec("a", 5, vector=(1.0, 1.0)),
    )
    item_a = rec("a", 0, kind="items")
    kept = freshest([a_new, item_a, a_old, a_tie])
    assert kept == [a_tie, item_a]
    assert freshest([a_old, a_new]) == freshest([a_new, a_old]) == [a_new]


def test_guard_filter_names_each_point_with_its_own_version() -> None:
    flt = guard_filter([rec("a", 3), rec("b", 1), rec("c", 3)])
    assert flt.must is None and flt.must_not is None
    clauses = flt.should
    assert isinstance(clauses, list) and len(clauses) == 2
    by_version = {}
    for clause in clauses:
        assert isinstance(clause, models.Filter) and isinstance(clause.must, list)
        has_id, field_cond = clause.must
        assert isinstance(has_id, models.HasIdCondition)
        assert isinstance(field_cond, models.FieldCondition)
        assert field_cond.key == "state_version" and field_cond.range is not None
        assert field_cond.range.gt is None and field_cond.range.lte is None  # strictly older only
        by_version[field_cond.range.lt] = set(has_id.has_id)
    assert by_version == {
        1: {point_id("users", "b")},
        3: {point_id("users", "a"), point_id("users", "c")},
    }


def test_refresh_guard_also_lets_an_equal_version_through() -> None:
    (clause,) = guard_filter([rec("a", 3)], refresh=True).should  # type: ignore[misc]
    assert isinstance(clause, models.Filter) and isinstance(clause.must, list)
    field_cond = clause.must[1]
    assert isinstance(field_cond, models.FieldCondition) and field_cond.range is not None
    assert field_cond.range.lte == 3 and field_cond.range.lt is None


def test_a_user_of_an_equal_state_version_replaces_one_built_from_older_items() -> None:
    user = VectorRecord("users", "a", (1.0,), 3, 0.0, basis_version=40)
    packed, legacy = guard_filter([user]).should  # type: ignore[misc]
    # one flat range on (state, basis) packed into one integer
    assert isinstance(packed, models.Filter) and isinstance(packed.must, list)
    guard = packed.must[1]
    assert isinstance(guard, models.FieldCondition) and guard.range is not None
    assert guard.key == GUARD_VERSION and guard.range.lt == packed_guard(user)
    # a stored point without the packed field falls back to the state version alone
    assert isinstance(legacy, models.Filter) and isinstance(legacy.must, list)
    assert isinstance(legacy.must[1], models.IsEmptyCondition)
    newer = VectorRecord("users", "a", (1.0,), 3, 0.0, basis_version=41)
    later = VectorRecord("users", "a", (1.0,), 4, 0.0, basis_version=1)
    assert packed_guard(user) < packed_guard(newer) < packed_guard(later)  # type: ignore[operator]
    assert freshest([newer, user]) == [newer] == freshest([user, newer])


def test_versions_too_large_to_pack_are_guarded_by_both_fields() -> None:
    user = VectorRecord("users", "a", (1.0,), 3, 0.0, basis_version=1 << 39)
    assert packed_guard(user) is None and GUARD_VERSION not in make_payload(user, "1", 0.0)
    (clause,) = guard_filter([user]).should  # type: ignore[misc]
    assert isinstance(clause, models.Filter) and isinstance(clause.must, list)
    older = clause.must[1]
    assert isinstance(older, models.Filter) and isinstance(older.should, list)
    lower_state, same_state = older.should
    assert isinstance(lower_state, models.FieldCondition) and lower_state.range is not None
    assert lower_state.range.lt == 3
    assert isinstance(same_state, models.Filter) and isinstance(same_state.must, list)
    state_match, basis_range = same_state.must
    assert isinstance(state_match, models.FieldCondition)
    assert state_match.match == models.MatchValue(value=3)
    assert isinstance(basis_range, models.FieldCondition) and basis_range.range is not None
    assert basis_range.key == "basis_version" and basis_range.range.lt == 1 << 39


@pytest.mark.parametrize(
    "bad",
    [
        VectorRecord("users", "u", (1.0,), 1, 0.0, basis_version=1.5),  # type: ignore[arg-type]
        rec("", 1),
        rec("u", 1, kind="pins"),
        VectorRecord("users", "u", (1.0,), True, 0.0),
        VectorRecord("users", "u", (1.0,), 1.5, 0.0),  # type: ignore[arg-type]
        rec("u", 1, vector=()),
        rec("u", 1, vector=(0.0, 0.0)),
        rec("u", 1, vector=(1.0, float("nan"))),
        rec("u", 1, vector=(1.0, float("inf"))),
        rec("u", 1, vector=np.ones((2, 2))),
    ],
)
def test_records_a_retry_could_never_write_are_refused(bad: VectorRecord) -> None:
    with pytest.raises(InvalidBatchError):
        check_record(bad)


def test_check_record_returns_float32_values() -> None:
    assert check_record(rec("u", 1, vector=np.array([0.1, 2.0]))) == [
        float(np.float32(0.1)),
        2.0,
    ]


def _response(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "x", b"", httpx.Headers())


def test_transient_errors_are_told_from_refusals() -> None:
    refused = httpx.ConnectError("refused")
    assert is_transient(ResponseHandlingException(refused))
    assert is_transient(ConnectionRefusedError())
    assert is_transient(TimeoutError())
    for status in (429, 500, 502, 503, 504):
        assert is_transient(_response(status))
    for status in (400, 404, 409, 422):
        assert not is_transient(_response(status))
    assert not is_transient(ValueError("Collection users_v1 not found"))
    assert issubclass(VectorStoreUnavailable, StateUnavailableError)  # callers pause on both


def test_a_full_disk_is_waited_out_not_a_crash() -> None:
    """Embedded mode writes SQLite and files; a server answers 500. A full disk clears when an
    operator frees space, so the worker pauses on it; a corrupt database does not clear."""
    assert is_transient(sqlite3.OperationalError("database or disk is full"))
    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_transient(sqlite3.OperationalError("no such table: points"))
    assert not is_transient(OSError(errno.EACCES, "Permission denied"))


def test_server_versions_parse() -> None:
    assert server_version("1.17.0") == (1, 17)
    assert server_version("v1.9.2-dev") == (1, 9)
    assert server_version("1.9.2") < (1, 17) <= server_version("1.20.1")
    assert server_version("garbage") == (0, 0)


def test_config_refuses_nonsense_and_hides_the_api_key() -> None:
    assert "secret" not in repr(VectorStoreConfig(url="http://127.0.0.1:6333", api_key="secret"))
    for kwargs in (
        {"url": "http://127.0.0.1:6333", "path": "/tmp/q"},
        {"batch_size": 0},
        {"retry_initial_s": 0.0},
        {"unavailable_after_s": float("inf")},
        {"prefix": "a b"},
    ):
        with pytest.raises(StateError):
            VectorStoreConfig(**kwargs)
