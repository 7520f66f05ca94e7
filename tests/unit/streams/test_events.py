"""The event contract: decoders never raise, reasons are stable, valid events round-trip."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.devtools.generate import malformed_payloads
from streams.wire import events
from streams.wire.events import (
    MAX_EVENT_BYTES,
    MAX_ITEM_BYTES,
    REASONS,
    CatalogItem,
    Engagement,
    Rejection,
    decode_catalog_item,
    decode_catalog_items,
    decode_engagement,
    decode_engagements,
    encode_catalog_item,
    encode_engagement,
    engagement_from_object,
    valid_id,
)

ids = st.from_regex(r"[A-Za-z0-9_.:@-]{1,128}", fullmatch=True)
timestamps = st.floats(min_value=0.0, max_value=events.MAX_TS) | st.integers(0, 4_102_444_800)
valid_engagements = st.builds(
    Engagement,
    event_id=ids,
    user_id=ids,
    item_id=ids,
    action=st.sampled_from(["view", "click", "save"]),
    ts=timestamps.map(float),
    weight=st.none() | st.floats(min_value=1e-6, max_value=100.0),
    context_id=st.none() | ids,
    surface=st.none() | st.text(min_size=1, max_size=64),
)
short_text = st.text(max_size=600)
vectors = st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=40)
valid_items = st.builds(
    CatalogItem,
    item_id=ids,
    title=st.text(min_size=1, max_size=512),
    text=short_text,
    categories=st.lists(st.text(min_size=1, max_size=64), max_size=8).map(tuple),
    features=st.none() | st.dictionaries(ids, vectors.map(tuple), max_size=8),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=140)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_ABSENT = object()


def _field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values, sometimes absent or arbitrary JSON, so every check gets exercised."""
    return st.one_of(valid, valid, valid, st.just(_ABSENT), json_values)


jsonish_engagements = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), st.just(_ABSENT), json_scalars),
        "event_id": _field(ids),
        "user_id": _field(ids),
        "item_id": _field(ids),
        "action": _field(st.sampled_from(["view", "click", "save"])),
        "ts": _field(timestamps),
        "weight": _field(st.none() | st.floats(min_value=1e-6, max_value=100.0)),
        "context_id": _field(st.none() | ids),
        "surface": _field(st.none() | st.text(min_size=1, max_size=64)),
        "extra": _field(st.just("ignored")),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT})
jsonish_items = st.fixed_dictionaries(
    {
        "item_id": _field(ids),
        "title": _field(st.text(min_size=1, max_size=20)),
        "text": _field(short_text),
        "categories": _field(st.lists(st.text(min_size=1, max_size=64), max_size=70)),
        "features": _field(st.dictionaries(st.text(max_size=10), json_values, max_size=9)),
    }
).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT})


def _reason(result: object) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def _assert_outcome(result: object, expected_type: type) -> None:
    assert isinstance(result, expected_type | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS
        assert 0 < len(result.detail) <= events.MAX_DETAIL_CHARS


@given(st.binary(max_size=300) | st.binary(min_size=4000, max_size=5000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _assert_outcome(decode_engagement(raw), Engagement)
    _assert_outcome(decode_catalog_item(raw), CatalogItem)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(jsonish_engagements)
def test_jsonish_engagements_never_raise_and_paths_agree(obj: dict[str, Any]) -> None:
    raw = orjson.dumps(obj)
    result = decode_engagement(raw)
    _assert_outcome(result, Engagement)
    # The fast path must accept exactly what the checked path accepts, and build an equal object.
    checked = events._checked_engagement(raw)
    assert events._fast_engagement(raw) == (checked if isinstance(checked, Engagement) else None)
    assert result == checked
    assert decode_engagements([raw, raw]) == [checked, checked]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(jsonish_items)
def test_jsonish_items_never_raise(obj: dict[str, Any]) -> None:
    _assert_outcome(decode_catalog_item(orjson.dumps(obj)), CatalogItem)


@given(valid_engagements)
def test_engagement_round_trip(e: Engagement) -> None:
    raw = encode_engagement(e)
    assert len(raw) <= MAX_EVENT_BYTES
    assert decode_engagement(raw) == e
    assert decode_engagements([raw]) == [e]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(valid_items)
def test_catalog_item_round_trip(item: CatalogItem) -> None:
    raw = encode_catalog_item(item)
    assert len(raw) <= MAX_ITEM_BYTES
    assert decode_catalog_item(raw) == item


def test_malformed_payloads_get_their_reasons() -> None:
    cases = malformed_payloads(seed=11, n=240)
    assert {reason for _, reason in cases} <= REASONS
    for payload, reason in cases:
        result = decode_engagement(payload)
        assert isinstance(result, Rejection), payload
        assert result.reason == reason, (payload[:120], result)
    batch = decode_engagements([p for p, _ in cases])
    assert [_reason(r) for r in batch] == [r for _, r in cases]


def _event(**changes: Any) -> bytes:
    obj: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "action": "view"}
    obj["ts"] = 1_767_225_600
    obj.update(changes)
    return orjson.dumps({k: v for k, v in obj.items() if v is not _ABSENT})


@pytest.mark.parametrize(
    ("raw", "reason", "field"),
    [
        (_event(user_id="u|1"), "bad_id", "user_id"),
        (_event(item_id="{i1}"), "bad_id", "item_id"),
        (_event(event_id="a b"), "bad_id", "event_id"),
        (_event(context_id="b}1"), "bad_id", "context_id"),
        (_event(item_id="x" * 129), "bad_id", "item_id"),
        (_event(ts=True), "bad_type", "ts"),
        (_event(ts="1767225600"), "bad_type", "ts"),
        (_event(ts=-0.5), "bad_ts", "ts"),
        (_event(ts=1_767_225_600_000), "bad_ts", "ts"),
        (_event(ts=2**64 - 1), "bad_ts", "ts"),
        (_event(weight=0), "bad_weight", "weight"),
        (_event(weight=100.01), "bad_weight", "weight"),
        (_event(surface=""), "bad_surface", "surface"),
        (_event(action="VIEW"), "bad_action", "action"),
        (_event(action=None), "missing_field", "action"),
        (_event(ts=_ABSENT), "missing_field", "ts"),
        (_event(v=2), "bad_version", "v"),
        (_event(v=True), "bad_version", "v"),
        (_event(ts=1).replace(b'"ts":1', b'"ts":1e999'), "non_finite", "infinity"),
        (_event(ts=1).replace(b'"ts":1', b'"ts":NaN'), "bad_json", "JSON"),
        (b"[]", "not_object", "list"),
    ],
)
def test_rejection_reason_and_detail(raw: bytes, reason: str, field: str) -> None:
    result = decode_engagement(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert field in result.detail


def test_missing_version_means_one_and_unknown_fields_are_ignored() -> None:
    result = decode_engagement(_event(v=_ABSENT, future_field={"x": 1}))
    assert result == Engagement("e1", "u1", "i1", "view", 1_767_225_600.0)
    assert isinstance(result, Engagement)
    assert isinstance(result.ts, float)


def test_oversize_is_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(raw: bytes) -> object:
        raise AssertionError("parsed an oversize payload")

    monkeypatch.setattr(events, "_loads", refuse)
    monkeypatch.setattr(events.orjson, "loads", refuse)
    huge = _event(pad="x" * MAX_EVENT_BYTES)
    assert _reason(decode_engagement(huge)) == "too_large"
    assert _reason(decode_engagements([huge])[0]) == "too_large"
    assert _reason(decode_engagement(b"\xff" * (MAX_EVENT_BYTES + 1))) == "too_large"
    assert _reason(decode_catalog_item(b"{" * (MAX_ITEM_BYTES + 1))) == "too_large"


def test_non_bytes_input_is_rejected_not_raised() -> None:
    odd: list[Any] = [None, 42, object()]
    for value in odd:
        assert _reason(decode_engagement(value)) == "bad_json"
        assert _reason(decode_catalog_item(value)) == "bad_json"
    first, second = decode_engagements([_event(), None])
    assert isinstance(first, Engagement)
    assert _reason(second) == "bad_json"


def test_batch_preserves_order_and_mixes_outcomes() -> None:
    raws = [_event(event_id=f"e{i}") if i % 3 else b"nope" for i in range(30)]
    out = decode_engagements(raws)
    assert out == [decode_engagement(r) for r in raws]
    assert [isinstance(r, Engagement) for r in out] == [bool(i % 3) for i in range(30)]
    assert decode_engagements([]) == []


def _item(**changes: Any) -> bytes:
    obj: dict[str, Any] = {"item_id": "i1", "title": "A title"}
    obj.update(changes)
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (_item(title=""), "bad_title"),
        (_item(title="t" * 513), "bad_title"),
        (_item(text="t" * 16_385), "bad_text"),
        (_item(text=3), "bad_type"),
        (_item(categories=["c"] * 65), "bad_categories"),
        (_item(categories=["c" * 65]), "bad_categories"),
        (_item(categories="c"), "bad_type"),
        (_item(features={f"f{i}": [1.0] for i in range(9)}), "bad_features"),
        (_item(features={"img": [0.5] * 1025}), "bad_features"),
        (_item(features={"img": []}), "bad_features"),
        (_item(features={"a|b": [1.0]}), "bad_features"),
        (_item(features={"img": [1.0, "x"]}), "bad_type"),
        (_item(features={"img": [True]}), "bad_type"),
        (_item(features=[1.0]), "bad_type"),
        (_item(title=None), "missing_field"),
        (_item(item_id="i 1"), "bad_id"),
        (_item(v=3), "bad_version"),
    ],
)
def test_catalog_rejections(raw: bytes, reason: str) -> None:
    result = decode_catalog_item(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason


def test_catalog_item_decodes_features_as_tuples() -> None:
    raw = _item(text="body", categories=["a", "b"], features={"img": [1, 2.5]})
    item = decode_catalog_item(raw)
    assert item == CatalogItem("i1", "A title", "body", ("a", "b"), {"img": (1.0, 2.5)})
    assert decode_catalog_items([raw, b"{}"])[1] == Rejection("missing_field", "item_id: required")


def test_helpers_share_the_wire_rules() -> None:
    assert valid_id("user:42@x.y-z_1")
    assert not valid_id("a|b")
    obj = {"event_id": "e", "user_id": "u", "item_id": "i", "action": "save", "ts": 5}
    assert engagement_from_object(obj) == Engagement("e", "u", "i", "save", 5.0)
    assert engagement_from_object({**obj, "ts": -1}) == Rejection(
        "bad_ts", "ts: -1.0 not in [0, 4102444800] epoch seconds"
    )
