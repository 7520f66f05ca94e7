"""The import direction rule, checked on the source: every arrow points down.

Rooms of `streams`, lowest first; a module may import its own room and the rooms below it:

    settings, exceptions, seams -> wire -> vectors.rules -> metrics, health -> ingest -> vectors
    -> runtimes -> training -> devtools -> cli

`state` and `encoders` are libraries below all of `streams`; `deploy` and `streams.devtools` are
tooling that only the CLI (and the tooling itself) may import; nothing imports `tests`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOMS = [
    ("streams.settings", "streams.exceptions", "streams.seams"),
    ("streams.wire",),
    ("streams.vectors.rules",),
    ("streams.metrics", "streams.health"),
    ("streams.ingest",),
    ("streams.vectors",),
    ("streams.runtimes",),
    ("streams.training",),
    ("streams.devtools",),
    ("streams.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def room(name: str) -> int:
    """The room of a `streams` module: the most specific prefix listed wins."""
    best, best_len = -1, -1
    for rank, prefixes in enumerate(ROOMS):
        for prefix in prefixes:
            if within(name, prefix) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    assert best >= 0, f"{name} is in no room: add it to ROOMS"
    return best


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("library", ["state", "encoders"])
def test_libraries_never_import_the_stream_processors_or_tooling(library: str) -> None:
    for path in sources(library):
        bad = {m for m in imports_of(path) if m.split(".")[0] in {"streams", "deploy", "tests"}}
        assert not bad, f"{module_name(path)} imports {sorted(bad)}"


def test_every_import_inside_streams_points_down() -> None:
    for path in sources("streams"):
        name = module_name(path)
        if name == "streams":
            continue
        mine = room(name)
        for target in imports_of(path):
            head = target.split(".")[0]
            assert head != "tests", f"{name} imports test code ({target})"
            if head == "deploy":
                assert mine >= room("streams.devtools"), f"{name} imports {target}"
            if head == "streams" and target != "streams":
                assert room(target) <= mine, f"{name} (room {mine}) imports {target} (above it)"


def test_only_the_cli_and_tooling_import_devtools() -> None:
    for path in sources("streams"):
        name = module_name(path)
        if within(name, "streams.devtools") or within(name, "streams.cli"):
            continue
        bad = {m for m in imports_of(path) if within(m, "streams.devtools")}
        assert not bad, f"{name} imports {sorted(bad)}"
