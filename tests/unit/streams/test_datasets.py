"""Dataset loaders: the shared MovieLens 100K, and small files of every format written here."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from streams.training.datasets import Dataset, action_for_rating, load_dataset
from streams.wire.events import CatalogItem, Engagement, encode_catalog_item, encode_engagement
from tests.support.datasets import ML100K

ML_100K = ML100K


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _assert_time_ordered(dataset: Dataset) -> None:
    assert all(a.ts <= b.ts for a, b in pairwise(dataset.events))


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    return load_dataset(ML_100K, "movielens")


def test_ml100k_counts_and_order(ml100k: Dataset) -> None:
    assert ml100k.summary() == {
        "users": 943,
        "items": 1682,
        "events": 100_000,
        "catalog_items": 1682,
    }
    _assert_time_ordered(ml100k)
    assert len({e.event_id for e in ml100k.events}) == 100_000


def test_ml100k_rows_and_catalog(ml100k: Dataset) -> None:
    first_line = next(e for e in ml100k.events if e.event_id == "movielens-1")
    assert first_line == Engagement("movielens-1", "196", "242", "view", 881250949.0)  # rating 3
    actions = Counter(e.action for e in ml100k.events)
    assert actions == {"save": 21201, "click": 34174, "view": 44625}  # ratings 5, 4, <= 3
    toy_story = ml100k.items["1"]
    assert toy_story.title == "Toy Story (1995)"
    assert toy_story.text == "Toy Story (1995) 1995"
    assert toy_story.categories == ("Animation", "Children's", "Comedy")
    assert all(item.categories for item in ml100k.items.values())


@pytest.mark.parametrize(
    ("rating", "action"),
    [(5, "save"), (4.5, "save"), (4, "click"), (3.5, "click"), (3, "view"), (0.5, "view")],
)
def test_rating_mapping(rating: float, action: str) -> None:
    assert action_for_rating(rating) == action


def _mini_movielens(root: Path, data: str) -> Path:
    root.mkdir()
    _write(root / "u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
    _write(
        root / "u.item", "1|Caf\xe9 (1999)|01-Jan-1999||url|0|1|1\n2|Odd|||url|1|0|0\n", "latin-1"
    )
    _write(root / "u.data", data)
    return root


def test_movielens_directory(tmp_path: Path) -> None:
    root = _mini_movielens(tmp_path / "ml", "7\t1\t5\t200\n8\t2\t2\t100\n")
    dataset = load_dataset(root, "movielens")
    assert [e.event_id for e in dataset.events] == ["movielens-2", "movielens-1"]
    assert [e.action for e in dataset.events] == ["view", "save"]
    assert dataset.items["1"] == CatalogItem(
        "1", "Caf\xe9 (1999)", "Caf\xe9 (1999) 1999", ("Action", "Comedy")
    )
    assert dataset.items["2"] == CatalogItem("2", "Odd", "Odd", ("unknown",))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("1\t1\t5\t100\n1|x\t1\t5\t100\n", ":2: bad_id: user_id"),
        ("1\t1\t5\t100\n\n1\t1\tfive\t100\n", ":3: rating 'five' is not a number"),
        ("1\t1\t5\n", ":1: expected 4 fields"),
        ("1\t1\t5\t-100\n", ":1: bad_ts"),
    ],
)
def test_movielens_errors_name_lines(tmp_path: Path, data: str, message: str) -> None:
    root = _mini_movielens(tmp_path / "ml", data)
    with pytest.raises(ValueError, match=message):
        load_dataset(root, "movielens")


def test_movielens_csv(tmp_path: Path) -> None:
    root = tmp_path / "ml-csv"
    root.mkdir()
    _write(
        root / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,4.5,300\n1,11,3.5,100\n2,10,3.0,200\n",
    )
    movies = (
        'movieId,title,genres\n10,"Good, Bad (1966)",Western|Drama\n11,Nothing,(no genres listed)\n'
    )
    _write(root / "movies.csv", movies)
    dataset = load_dataset(root, "movielens-csv")
    assert [(e.user_id, e.item_id, e.action) for e in dataset.events] == [
        ("1", "11", "click"),
        ("2", "10", "view"),
        ("1", "10", "save"),
    ]
    assert dataset.events[0].event_id == "movielens-csv-3"
    assert dataset.items["10"] == CatalogItem(
        "10", "Good, Bad (1966)", "Good, Bad (1966) 1966", ("Western", "Drama")
    )
    assert dataset.items["11"].categories == ()


def test_movielens_csv_bad_header_and_row(tmp_path: Path) -> None:
    root = tmp_path / "ml-csv"
    root.mkdir()
    _write(root / "movies.csv", "movieId,title,genres\n")
    _write(root / "ratings.csv", "user,item,rating,ts\n")
    with pytest.raises(ValueError, match=r"ratings.csv:1: expected header"):
        load_dataset(root, "movielens-csv")
    _write(root / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,1\n1,{10},4,2\n")
    with pytest.raises(ValueError, match=r"ratings.csv:3: bad_id: item_id"):
        load_dataset(root, "movielens-csv")


def test_pairs_without_timestamps_keep_file_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.txt", "# user item\nu2 i9\n\nu1  i3\nu2\ti3\n")
    dataset = load_dataset(path, "pairs")
    assert [(e.user_id, e.item_id, e.ts) for e in dataset.events] == [
        ("u2", "i9", 1.0),
        ("u1", "i3", 3.0),
        ("u2", "i3", 4.0),
    ]
    assert {e.action for e in dataset.events} == {"click"}
    assert dataset.events[0].event_id == "pairs-2"
    assert dataset.items == {}


def test_pairs_with_timestamps_sort_stably(tmp_path: Path) -> None:
    path = _write(tmp_path / "pairs.txt", "a x 20\nb y 10\nc z 20\n")
    dataset = load_dataset(path, "pairs")
    assert [e.user_id for e in dataset.events] == ["b", "a", "c"]
    assert dataset.summary() == {"users": 3, "items": 3, "events": 3, "catalog_items": 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a x\nb y 10\n", ":2: timestamps must be on every line or on none"),
        ("a x\nb|c y\n", ":2: bad_id: user_id"),
        ("a x\nb y z w\n", ":2: expected 'user item \\[timestamp\\]'"),
        ("a x 1\nb y soon\n", ":2: timestamp 'soon' is not a number"),
    ],
)
def test_pairs_errors_name_lines(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(_write(tmp_path / "pairs.txt", text), "pairs")


def test_jsonl_with_catalog(tmp_path: Path) -> None:
    late = Engagement("e2", "u1", "i2", "save", 20.0, weight=2.0, context_id="b1")
    early = Engagement("e1", "u1", "i1", "view", 10.0, surface="home")
    lines = [encode_engagement(late), b"", encode_engagement(early)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    item = CatalogItem("i1", "Title", "text", ("c",), {"img": (0.5, 1.0)})
    items_path = tmp_path / "items.jsonl"
    items_path.write_bytes(encode_catalog_item(item) + b"\r\n")
    dataset = load_dataset(path, "jsonl", items_path=items_path)
    assert dataset.events == [early, late]
    assert dataset.items == {"i1": item}


def test_jsonl_rejections_name_lines(tmp_path: Path) -> None:
    good = encode_engagement(Engagement("e1", "u1", "i1", "view", 10.0))
    path = tmp_path / "events.jsonl"
    path.write_bytes(good + b"\n" + good.replace(b'"view"', b'"like"') + b"\n")
    with pytest.raises(ValueError, match=r"events.jsonl:2: bad_action"):
        load_dataset(path, "jsonl")
    path.write_bytes(good + b"\n")
    items_path = tmp_path / "items.jsonl"
    items_path.write_bytes(b'{"item_id": "i1"}\n')
    with pytest.raises(ValueError, match=r"items.jsonl:1: missing_field: title"):
        load_dataset(path, "jsonl", items_path=items_path)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format"):
        load_dataset(tmp_path, "parquet")  # type: ignore[arg-type]
