"""Pure parts of the Qdrant sink: point ids, names, payloads, the guard filter, error classes."""

from __future__ import annotations

import errno
import sqlite3
import uuid

import httpx
import numpy as np
import orjson
import pytest
from qdrant_client import QdrantClient, models
from qdrant_client.http.api.points_api import jsonable_encoder
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from state import StateUnavailableError, VectorStoreUnavailable
from state.exceptions import InvalidBatchError, StateError
from state.vectors import (
    GUARD_VERSION,
    PAYLOAD_KEYS,
    POINT_NAMESPACE,
    VectorRecord,
    VectorStoreConfig,
    _put_points,
    canonical_version,
    check_record,
    check_records,
    collection_name,
    filter_model,
    freshest,
    guard_filter,
    is_transient,
    make_payload,
    packed_guard,
    point_dicts,
    point_id,
    server_version,
    upsert_body,
)


def rec(
    entity: str, version: int, kind: str = "users", vector: object = (1.0, 0.0)
) -> VectorRecord:
    return VectorRecord(kind, entity, vector, version, 100.0)  # type: ignore[arg-type]


def guarded(records: list[VectorRecord], *, refresh: bool = False) -> models.Filter:
    """The guard as the client's model: what embedded mode sends, and easier to inspect."""
    return filter_model(guard_filter(records, refresh=refresh))


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
    flt = guarded([rec("a", 3), rec("b", 1), rec("c", 3)])
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
    (clause,) = guarded([rec("a", 3)], refresh=True).should  # type: ignore[misc]
    assert isinstance(clause, models.Filter) and isinstance(clause.must, list)
    field_cond = clause.must[1]
    assert isinstance(field_cond, models.FieldCondition) and field_cond.range is not None
    assert field_cond.range.lte == 3 and field_cond.range.lt is None


def test_a_user_of_an_equal_state_version_replaces_one_built_from_older_items() -> None:
    user = VectorRecord("users", "a", (1.0,), 3, 0.0, basis_version=40)
    packed, legacy = guarded([user]).should  # type: ignore[misc]
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
    (clause,) = guarded([user]).should  # type: ignore[misc]
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


def test_the_guard_is_the_json_form_of_the_clients_filter() -> None:
    """Built once as plain JSON: a server gets it as it is, embedded mode validates it into the
    same model; either way it is the shape the client itself would have sent."""
    records = [
        rec("a", 3),
        rec("b", 1, kind="items"),
        VectorRecord("users", "c", (1.0,), 3, 0.0, basis_version=40),  # packed
        VectorRecord("users", "d", (1.0,), 3, 0.0, basis_version=1 << 39),  # too large to pack
    ]
    for refresh in (False, True):
        guard = guard_filter(records, refresh=refresh)
        assert filter_model(guard).model_dump(exclude_none=True) == guard
        assert orjson.loads(jsonable_encoder(filter_model(guard))) == guard
    ids = [f"id-{n}" for n in range(len(records))]  # ids the caller already computed are used
    clauses = guard_filter(records, ids=ids)["should"]
    assert {point for c in clauses for point in c["must"][0]["has_id"]} == set(ids)


def test_the_request_body_is_what_the_client_would_send() -> None:
    """One orjson call instead of a pydantic model per point and clause, with the same JSON:
    ids, payloads, the filter or ``insert_only``, and the float32 vectors the server keeps."""
    records = [
        VectorRecord("users", f"u{n}", np.random.default_rng(n).random(8), n + 1, 5.0, 7 * n)
        for n in range(4)
    ]
    ids = [point_id("users", r.entity_id) for r in records]
    points = point_dicts(records, ids, check_records(records), "2", 1_700_000_000.0)
    guard = guard_filter(records, ids=ids)
    structs = [
        models.PointStruct(id=p["id"], vector=p["vector"].tolist(), payload=p["payload"])
        for p in points
    ]
    for mode, update_filter in ((None, guard), (models.UpdateMode.INSERT_ONLY, None)):
        ours = orjson.loads(upsert_body(points, update_filter))
        theirs = orjson.loads(
            jsonable_encoder(
                models.PointsList(
                    points=structs,
                    update_filter=None if update_filter is None else filter_model(update_filter),
                    update_mode=mode,
                )
            )
        )
        for body in (ours, theirs):  # the same float32 values, written shorter by orjson
            for point in body["points"]:
                point["vector"] = np.float32(point["vector"]).tolist()
        assert ours == theirs


def test_the_body_goes_through_the_clients_rest_client_and_its_errors() -> None:
    """Sent as `client.upsert` sends it: same route, the API key header, and the client's own
    error types, which the retry policy classifies."""
    client = QdrantClient(url="https://127.0.0.1:1", api_key="k3y", check_compatibility=False)
    seen: list[httpx.Request] = []
    status = {"code": 200}

    def answer(request: httpx.Request, _next: object) -> httpx.Response:
        seen.append(request)
        body = {"result": {"operation_id": 1, "status": "completed"}, "status": "ok", "time": 0}
        return httpx.Response(status["code"], json=body, request=request)

    client.http.client.add_middleware(answer)
    try:
        _put_points(client, "users_v1", b'{"points":[]}')
        (request,) = seen
        assert (request.method, request.url.path) == ("PUT", "/collections/users_v1/points")
        assert request.url.params["wait"] == "true" and request.content == b'{"points":[]}'
        assert request.headers["api-key"] == "k3y"
        assert request.headers["content-type"] == "application/json"
        status["code"] = 503
        with pytest.raises(UnexpectedResponse) as raised:
            _put_points(client, "users_v1", b'{"points":[]}')
        assert is_transient(raised.value)
    finally:
        client.close()


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


@pytest.mark.parametrize("at", [0, 5, 9])
def test_one_bad_record_refuses_the_whole_batch(at: int) -> None:
    good = [rec(f"u{n}", 1, vector=(1.0, float(n))) for n in range(10)]
    for bad in (rec("x", 1, vector=(0.0, 0.0)), rec("x", 1, vector=(1.0, float("nan")))):
        with pytest.raises(InvalidBatchError, match="x: "):
            check_records([*good[:at], bad, *good[at:]])
    ragged = [*good[:at], rec("x", 1, vector=(1.0, 1.0, 0.0)), *good[at:]]  # lengths differ
    assert [v.tolist() for v in check_records(ragged)] == [list(r.vector) for r in ragged]
    with pytest.raises(InvalidBatchError):
        check_records([*ragged, rec("y", 1, vector=(0.0,))])
    with pytest.raises(InvalidBatchError):  # Qdrant keeps integers as i64
        check_records([*good, rec("y", 1 << 63)])


def test_checked_vectors_are_contiguous_float32_rows() -> None:
    matrix = np.arange(1.0, 13.0).reshape(3, 4)
    columns = [rec(f"u{n}", 1, vector=matrix[:, n]) for n in range(4)]  # strided views
    for batch in (columns, [*columns[:3], rec("x", 1, vector=(1.0,))]):
        vectors = check_records(batch)
        assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in vectors)
        assert [v.tolist() for v in vectors] == [np.float32(r.vector).tolist() for r in batch]
    assert check_records([]) == []


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
