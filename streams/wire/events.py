"""The versioned JSON event contract: engagements and catalog items on the wire.

Every payload is a JSON object carrying ``"v": 1`` (a missing ``v`` means 1; any other value
is rejected). Decoders never raise: any input becomes either a contract object or a
:class:`Rejection` whose ``reason`` is one of :data:`REASONS`, so the consumer can route it to the
dead-letter topic and count it under a pre-registered metrics label.

Unknown fields are ignored, so producers may add fields before consumers learn them (forward
compatibility); removing or retyping a field needs a new version.

Identifiers (event, user, item, context ids) are restricted to ``[A-Za-z0-9_.:@-]{1,128}``
because they are embedded in Redis keys: ``|`` separates key parts and ``{`` ``}`` delimit cluster
hash tags.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar, cast, get_args

import orjson

from state.config import ID_PATTERN

Action = Literal["view", "click", "save"]
ACTIONS: frozenset[str] = frozenset(get_args(Action))
SCHEMA_VERSION = 1

MAX_EVENT_BYTES = 4096
MAX_ITEM_BYTES = 65536
MAX_TS = 4_102_444_800.0  # 2100-01-01T00:00:00Z: anything later is a unit mistake (ms, µs)
MAX_WEIGHT = 100.0
MAX_SURFACE_CHARS = 64
MAX_TITLE_CHARS = 512
MAX_TEXT_CHARS = 16_384
MAX_CATEGORIES = 64
MAX_CATEGORY_CHARS = 64
MAX_FEATURES = 8
MAX_FEATURE_DIM = 1024
MAX_DETAIL_CHARS = 200

_id_ok = ID_PATTERN.fullmatch  # the same ids the state scripts accept

REASONS: frozenset[str] = frozenset(
    {
        "bad_json",  # not parseable JSON (includes NaN/Infinity literals, invalid UTF-8)
        "non_finite",  # a number literal that overflows a double (e.g. 1e400)
        "too_large",  # payload over the byte budget; checked before parsing
        "not_object",  # valid JSON but not an object
        "bad_version",  # "v" is not SCHEMA_VERSION
        "missing_field",  # a required field is absent or null
        "bad_type",  # a field has the wrong JSON type
        "bad_id",  # an identifier outside the allowed alphabet or length
        "bad_action",  # action not in ACTIONS
        "bad_ts",  # timestamp outside [0, MAX_TS]
        "bad_weight",  # weight outside (0, MAX_WEIGHT]
        "bad_surface",  # surface empty or too long
        "bad_title",  # title empty or too long
        "bad_text",  # text too long
        "bad_categories",  # too many categories, or one empty or too long
        "bad_features",  # too many vectors, bad names, empty or too long vectors
    }
)


@dataclass(frozen=True, slots=True)
class Engagement:
    """One user action on one item; ``ts`` is epoch seconds."""

    event_id: str
    user_id: str
    item_id: str
    action: Action
    ts: float
    weight: float | None = None
    context_id: str | None = None
    surface: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """An item's content; ``features`` holds optional named precomputed vectors."""

    item_id: str
    title: str
    text: str = ""
    categories: tuple[str, ...] = ()
    features: Mapping[str, tuple[float, ...]] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload was refused: a stable ``reason`` code and a bounded human ``detail``."""

    reason: str
    detail: str


class _Invalid(Exception):
    """Internal control flow: raised by field checks, turned into a Rejection at the boundary."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail[:MAX_DETAIL_CHARS]


def _show(value: object) -> str:
    """A short repr for details, so a huge bad value cannot bloat a DLQ header."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _parse(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Size-check, parse and version-check one payload."""
    if len(raw) > max_bytes:
        raise _Invalid("too_large", f"payload of {len(raw)} bytes exceeds {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = "non_finite" if "infinity" in str(exc) else "bad_json"
        raise _Invalid(reason, f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise _Invalid("not_object", f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or type(version) is not int:
        raise _Invalid("bad_version", f"v: unsupported version {_show(version)}")
    return obj


def _required(obj: dict[str, Any], name: str) -> Any:
    value = obj.get(name)
    if value is None:
        raise _Invalid("missing_field", f"{name}: required")
    return value


def _id(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _Invalid("bad_type", f"{name}: expected string, got {type(value).__name__}")
    if _id_ok(value) is None:
        raise _Invalid("bad_id", f"{name}: {_show(value)} is not 1-128 of [A-Za-z0-9_.:@-]")
    return value


def _number(value: Any, name: str) -> float:
    """An int or float (never a bool) as float."""
    kind = type(value)
    if kind is not float and kind is not int:
        raise _Invalid("bad_type", f"{name}: expected number, got {kind.__name__}")
    return float(value)


def _text(value: Any, name: str, reason: str, limits: tuple[int, int]) -> str:
    if type(value) is not str:
        raise _Invalid("bad_type", f"{name}: expected string, got {type(value).__name__}")
    low, high = limits
    if not low <= len(value) <= high:
        raise _Invalid(reason, f"{name}: length {len(value)} not in [{low}, {high}]")
    return value


def _engagement(obj: dict[str, Any]) -> Engagement:
    """Validate a parsed engagement object, field by field in a fixed order."""
    event_id = _id(_required(obj, "event_id"), "event_id")
    user_id = _id(_required(obj, "user_id"), "user_id")
    item_id = _id(_required(obj, "item_id"), "item_id")
    action = _required(obj, "action")
    if type(action) is not str:
        raise _Invalid("bad_type", f"action: expected string, got {type(action).__name__}")
    if action not in ACTIONS:
        raise _Invalid("bad_action", f"action: {_show(action)} not one of {sorted(ACTIONS)}")
    ts = _number(_required(obj, "ts"), "ts")
    if not 0.0 <= ts <= MAX_TS:
        raise _Invalid("bad_ts", f"ts: {ts!r} not in [0, {MAX_TS:.0f}] epoch seconds")
    weight = obj.get("weight")
    if weight is not None:
        weight = _number(weight, "weight")
        if not 0.0 < weight <= MAX_WEIGHT:
            raise _Invalid("bad_weight", f"weight: {weight!r} not in (0, {MAX_WEIGHT:g}]")
    context_id = obj.get("context_id")
    if context_id is not None:
        context_id = _id(context_id, "context_id")
    surface = obj.get("surface")
    if surface is not None:
        surface = _text(surface, "surface", "bad_surface", (1, MAX_SURFACE_CHARS))
    return Engagement(
        event_id, user_id, item_id, cast(Action, action), ts, weight, context_id, surface
    )


def _categories(value: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise _Invalid("bad_type", f"categories: expected array, got {type(value).__name__}")
    if len(value) > MAX_CATEGORIES:
        raise _Invalid("bad_categories", f"categories: {len(value)} > {MAX_CATEGORIES}")
    limits = (1, MAX_CATEGORY_CHARS)
    return tuple(_text(c, "categories[]", "bad_categories", limits) for c in value)


def _vector(value: Any, name: str) -> tuple[float, ...]:
    if type(value) is not list:
        raise _Invalid("bad_type", f"{name}: expected array, got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_FEATURE_DIM:
        raise _Invalid("bad_features", f"{name}: length {len(value)} not in [1, {MAX_FEATURE_DIM}]")
    return tuple([_number(x, name) for x in value])


def _features(value: Any) -> dict[str, tuple[float, ...]]:
    if type(value) is not dict:
        raise _Invalid("bad_type", f"features: expected object, got {type(value).__name__}")
    if len(value) > MAX_FEATURES:
        raise _Invalid("bad_features", f"features: {len(value)} vectors > {MAX_FEATURES}")
    for name in value:
        if _id_ok(name) is None:
            raise _Invalid("bad_features", f"features: name {_show(name)} is not a valid id")
    return {name: _vector(vec, f"features.{name}") for name, vec in value.items()}


def _catalog_item(obj: dict[str, Any]) -> CatalogItem:
    """Validate a parsed catalog item object."""
    item_id = _id(_required(obj, "item_id"), "item_id")
    title = _text(_required(obj, "title"), "title", "bad_title", (1, MAX_TITLE_CHARS))
    text = obj.get("text")
    text = "" if text is None else _text(text, "text", "bad_text", (0, MAX_TEXT_CHARS))
    categories = obj.get("categories")
    categories = () if categories is None else _categories(categories)
    features = obj.get("features")
    if features is not None:
        features = _features(features)
    return CatalogItem(item_id, title, text, categories, features)


_T = TypeVar("_T")


def _decoder(
    build: Callable[[dict[str, Any]], _T], max_bytes: int
) -> Callable[[bytes], _T | Rejection]:
    """Wrap a validator into a never-raising bytes decoder."""

    def decode(raw: bytes) -> _T | Rejection:
        try:
            return build(_parse(raw, max_bytes))
        except _Invalid as exc:
            return Rejection(exc.reason, exc.detail)
        except (TypeError, ValueError, RecursionError, MemoryError) as exc:
            # Belt and braces: the contract is "never raise", even for input we did not foresee.
            return Rejection("bad_json", f"undecodable payload: {type(exc).__name__}")

    return decode


_checked_engagement = _decoder(_engagement, MAX_EVENT_BYTES)
_decode_catalog_item = _decoder(_catalog_item, MAX_ITEM_BYTES)

# Fast path. A frozen dataclass's __init__ goes through object.__setattr__ per field, which was half
# the decode cost; writing the slot descriptors directly builds an equal object in half the time.
_new = object.__new__
(
    _set_event,
    _set_user,
    _set_item,
    _set_action,
    _set_ts,
    _set_weight,
    _set_context,
    _set_surface,
) = (getattr(Engagement, f.name).__set__ for f in fields(Engagement))
_loads = orjson.loads
_NUMBERS = (int, float)  # matched with `type(x) in`, which excludes bool


def _fast_engagement(raw: bytes) -> Engagement | None:
    """Decode a valid engagement cheaply; None means "not obviously valid, ask the checked path".

    Accepts exactly what :func:`_engagement` accepts (a property test holds the two together), so
    rejections and their details always come from one place. Raises only for non-bytes input.
    """
    if len(raw) > MAX_EVENT_BYTES:
        return None
    try:
        obj = _loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id, user_id, item_id = get("event_id"), get("user_id"), get("item_id")
    version, action, ts = get("v", 1), get("action"), get("ts")
    weight, context_id, surface = get("weight"), get("context_id"), get("surface")
    ok = (
        type(version) is int
        and version == SCHEMA_VERSION
        and type(event_id) is str
        and type(user_id) is str
        and type(item_id) is str
        and _id_ok(event_id) is not None
        and _id_ok(user_id) is not None
        and _id_ok(item_id) is not None
        and type(action) is str
        and action in ACTIONS
        and type(ts) in _NUMBERS
        and 0.0 <= ts <= MAX_TS  # type: ignore[operator]
        and (weight is None or (type(weight) in _NUMBERS and 0.0 < weight <= MAX_WEIGHT))
        and (context_id is None or (type(context_id) is str and _id_ok(context_id) is not None))
        and (surface is None or (type(surface) is str and 0 < len(surface) <= MAX_SURFACE_CHARS))
    )
    if not ok:
        return None
    e = _new(Engagement)
    _set_event(e, event_id)
    _set_user(e, user_id)
    _set_item(e, item_id)
    _set_action(e, action)
    _set_ts(e, float(ts))  # type: ignore[arg-type]
    _set_weight(e, None if weight is None else float(weight))
    _set_context(e, context_id)
    _set_surface(e, surface)
    return e


def _decode_engagement(raw: bytes) -> Engagement | Rejection:
    try:
        fast = _fast_engagement(raw)
    except TypeError:  # not bytes: let the checked path explain
        fast = None
    return fast if fast is not None else _checked_engagement(raw)


def valid_id(value: str) -> bool:
    """Whether ``value`` is usable as an event, user, item or context id."""
    return type(value) is str and _id_ok(value) is not None


def engagement_from_object(obj: dict[str, Any]) -> Engagement | Rejection:
    """Validate an already-parsed object (offline loaders) by the wire decoder's rules."""
    try:
        return _engagement(obj)
    except _Invalid as exc:
        return Rejection(exc.reason, exc.detail)


def decode_engagement(raw: bytes) -> Engagement | Rejection:
    """Decode one engagement payload; never raises."""
    return _decode_engagement(raw)


def decode_engagements(raws: Sequence[bytes]) -> list[Engagement | Rejection]:
    """Decode a batch in order; the consumer's hot path, so valid events take one cheap pass."""
    try:
        out: list[Engagement | Rejection | None] = [_fast_engagement(raw) for raw in raws]
    except TypeError:
        return [_decode_engagement(raw) for raw in raws]
    for i, e in enumerate(out):
        if e is None:
            out[i] = _checked_engagement(raws[i])
    return out  # type: ignore[return-value]  # no None is left


def encode_engagement(e: Engagement) -> bytes:
    """Serialise an engagement; optional fields that are None are omitted."""
    obj: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "event_id": e.event_id,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "action": e.action,
        "ts": e.ts,
    }
    if e.weight is not None:
        obj["weight"] = e.weight
    if e.context_id is not None:
        obj["context_id"] = e.context_id
    if e.surface is not None:
        obj["surface"] = e.surface
    return orjson.dumps(obj)


def decode_catalog_item(raw: bytes) -> CatalogItem | Rejection:
    """Decode one catalog item payload; never raises."""
    return _decode_catalog_item(raw)


def decode_catalog_items(raws: Sequence[bytes]) -> list[CatalogItem | Rejection]:
    """Decode a batch of catalog items in order."""
    decode = _decode_catalog_item
    return [decode(raw) for raw in raws]


def encode_catalog_item(item: CatalogItem) -> bytes:
    """Serialise a catalog item; empty text/categories and absent features are omitted."""
    obj: dict[str, Any] = {"v": SCHEMA_VERSION, "item_id": item.item_id, "title": item.title}
    if item.text:
        obj["text"] = item.text
    if item.categories:
        obj["categories"] = list(item.categories)
    if item.features is not None:
        obj["features"] = {name: list(vec) for name, vec in item.features.items()}
    return orjson.dumps(obj)
