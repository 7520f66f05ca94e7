"""Interaction logs on disk turned into contract objects, for ``sagestream replay`` and ``train``.

Every row goes through the same validation as the wire decoder, so offline data obeys the online
contract. Offline data must be clean: a bad row raises ``ValueError`` naming the file and line
rather than being dropped, because silently shrinking a training set hides real problems.

Explicit ratings become implicit engagement strength: a 5-star rating is treated as a save, a
4-star rating as a click and anything lower as a view (for half-star data: >= 4.5 save, >= 3.5
click). This keeps the three action types of the stream and lets the sequence model learn that
strong ratings weigh more, without inventing negative feedback the stream never carries.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Literal, TypeVar

from streams.wire.events import (
    Action,
    CatalogItem,
    Engagement,
    Rejection,
    decode_catalog_item,
    decode_engagement,
    engagement_from_object,
    valid_id,
)

Format = Literal["movielens", "movielens-csv", "pairs", "jsonl"]
FORMATS: tuple[Format, ...] = ("movielens", "movielens-csv", "pairs", "jsonl")

_YEAR_RE = re.compile(r"\b(1[89]\d\d|20\d\d)\b")


@dataclass
class Dataset:
    """Time-ordered engagements plus whatever catalog the source carries (may be empty)."""

    events: list[Engagement]
    items: dict[str, CatalogItem] = field(default_factory=dict)

    def summary(self) -> dict[str, int]:
        """Counts for logs and the model manifest's training-data summary."""
        return {
            "users": len({e.user_id for e in self.events}),
            "items": len({e.item_id for e in self.events}),
            "events": len(self.events),
            "catalog_items": len(self.items),
        }


def action_for_rating(rating: float) -> Action:
    """Map an explicit star rating to an engagement strength (see the module docstring)."""
    if rating >= 4.5:
        return "save"
    if rating >= 3.5:
        return "click"
    return "view"


def _error(path: Path, line_no: int, message: str) -> ValueError:
    return ValueError(f"{path}:{line_no}: {message}")


def _event(path: Path, line_no: int, obj: dict[str, Any]) -> Engagement:
    result = engagement_from_object(obj)
    if isinstance(result, Rejection):
        raise _error(path, line_no, f"{result.reason}: {result.detail}")
    return result


def _number(path: Path, line_no: int, name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _error(path, line_no, f"{name} {text!r} is not a number") from None


def _rating_event(path: Path, line_no: int, fmt: Format, fields: list[str]) -> Engagement:
    """One (user, item, rating, timestamp) row as an engagement with a deterministic id."""
    if len(fields) != 4:
        raise _error(path, line_no, f"expected 4 fields (user item rating ts), got {len(fields)}")
    user, item, rating, ts = fields
    obj = {
        "event_id": f"{fmt}-{line_no}",
        "user_id": user,
        "item_id": item,
        "action": action_for_rating(_number(path, line_no, "rating", rating)),
        "ts": _number(path, line_no, "timestamp", ts),
    }
    return _event(path, line_no, obj)


def _lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for non-blank lines."""
    with path.open(encoding=encoding) as f:
        for line_no, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped:
                yield line_no, stripped


def _item(path: Path, line_no: int, cols: tuple[str, str, str], genres: list[str]) -> CatalogItem:
    """A movie from (id, title, text holding its year); text = title and release year."""
    item_id, title, dated = cols
    if not valid_id(item_id):
        raise _error(path, line_no, f"bad item id {item_id!r}")
    year = _YEAR_RE.search(dated)
    text = f"{title} {year.group(1)}" if year else title
    return CatalogItem(item_id=item_id, title=title, text=text, categories=tuple(genres))


def _movielens_items(root: Path) -> dict[str, CatalogItem]:
    """``u.item``: latin-1, ``|``-separated; the last 19 columns are genre flags (``u.genre``)."""
    genres = [line.split("|")[0] for _, line in _lines(root / "u.genre", "latin-1")]
    path = root / "u.item"
    items = {}
    for line_no, line in _lines(path, "latin-1"):
        cols = line.split("|")
        if len(cols) != 5 + len(genres):
            raise _error(path, line_no, f"expected {5 + len(genres)} fields, got {len(cols)}")
        names = [g for g, flag in zip(genres, cols[5:], strict=True) if flag == "1"]
        items[cols[0]] = _item(path, line_no, (cols[0], cols[1], cols[2]), names)
    return items


def _load_movielens(root: Path) -> Dataset:
    """MovieLens 100K directory: ``u.data`` (tab-separated) and ``u.item``."""
    path = root / "u.data"
    events = [_rating_event(path, n, "movielens", line.split("\t")) for n, line in _lines(path)]
    return Dataset(events, _movielens_items(root))


def _csv_rows(path: Path, header: list[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, row) after checking the header; line numbers count the header as 1."""
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first != header:
            raise _error(path, 1, f"expected header {','.join(header)}, got {first}")
        for row in reader:
            if row:
                yield reader.line_num, row


def _load_movielens_csv(root: Path) -> Dataset:
    """MovieLens CSV directory (``ratings.csv``, ``movies.csv``), half-star ratings."""
    ratings = root / "ratings.csv"
    events = [
        _rating_event(ratings, n, "movielens-csv", row)
        for n, row in _csv_rows(ratings, ["userId", "movieId", "rating", "timestamp"])
    ]
    movies = root / "movies.csv"
    items = {}
    for n, row in _csv_rows(movies, ["movieId", "title", "genres"]):
        if len(row) != 3:
            raise _error(movies, n, f"expected 3 fields, got {len(row)}")
        genres = [] if row[2] == "(no genres listed)" else row[2].split("|")
        items[row[0]] = _item(movies, n, (row[0], row[1], row[1]), genres)
    return Dataset(events, items)


def _load_pairs(path: Path) -> Dataset:
    """``user item [timestamp]`` lines; without timestamps the line index is the time.

    A file must be consistent: either every line has a timestamp or none has, since mixing line
    indices with epoch seconds would scramble the order.
    """
    events = []
    timed: bool | None = None
    for line_no, line in _lines(path):
        if line.startswith("#"):
            continue
        cols = line.split()
        if len(cols) not in (2, 3):
            raise _error(path, line_no, f"expected 'user item [timestamp]', got {len(cols)} fields")
        if timed is None:
            timed = len(cols) == 3
        if timed != (len(cols) == 3):
            raise _error(path, line_no, "timestamps must be on every line or on none")
        ts = _number(path, line_no, "timestamp", cols[2]) if timed else float(line_no - 1)
        obj = {"event_id": f"pairs-{line_no}", "user_id": cols[0], "item_id": cols[1]}
        events.append(_event(path, line_no, {**obj, "action": "click", "ts": ts}))
    return Dataset(events)


_Decoded = TypeVar("_Decoded", Engagement, CatalogItem)


def _decoded_lines(
    path: Path, decode: Callable[[bytes], _Decoded | Rejection]
) -> Iterator[_Decoded]:
    """Wire-format records, one per non-blank line; a rejection is an error with its line number."""
    with path.open("rb") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            result = decode(line.rstrip(b"\r\n"))
            if isinstance(result, Rejection):
                raise _error(path, line_no, f"{result.reason}: {result.detail}")
            yield result


def _load_jsonl_events(path: Path) -> Dataset:
    return Dataset(list(_decoded_lines(path, decode_engagement)))


def load_catalog(path: Path) -> dict[str, CatalogItem]:
    """A JSONL catalog in the wire format."""
    return {item.item_id: item for item in _decoded_lines(path, decode_catalog_item)}


_LOADERS = {
    "movielens": _load_movielens,
    "movielens-csv": _load_movielens_csv,
    "pairs": _load_pairs,
    "jsonl": _load_jsonl_events,
}


def load_dataset(path: Path, fmt: Format, items_path: Path | None = None) -> Dataset:
    """Load ``path`` in format ``fmt``; events come back sorted by time (stable).

    ``items_path``, for any format, is a JSONL catalog merged over the format's own items (the
    explicit file wins).
    """
    if fmt not in _LOADERS:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {FORMATS}")
    dataset = _LOADERS[fmt](Path(path))
    dataset.events.sort(key=attrgetter("ts"))
    if items_path is not None:
        dataset.items.update(load_catalog(Path(items_path)))
    return dataset
