"""A downstream recommender: reads through the aliases in a loop, in its own process.

`python -m tests.support.reader OUT USERS...` reads with the settings in the environment until
the file OUT.stop appears; its tally (JSON) is rewritten to OUT every few rounds and at the end.
A round is what a recommender does: the user's vector through the alias, then that model's
nearest items, pinned to the user's model and unpinned; `read_round` is shared with the
in-process reader of the switch test.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from state import StateError, VectorStore
from streams.settings import Settings
from streams.vectors.store import vector_store


def read_round(store: VectorStore, user: str, versions: set[str]) -> list[str]:
    """One recommender read; the problems it saw (empty when everything held)."""
    got = store.get("users", [user])
    if user not in got:
        return [f"{user}: no vector through the alias"]
    model = str(got[user].payload["model_version"])
    versions.add(model)
    pinned = store.search("items", got[user].vector, 10, version=model)
    plain = store.search("items", got[user].vector, 10)
    problems = []
    if len(pinned) != 10 or len(plain) != 10:
        problems.append(f"{user}: short result {len(pinned)}/{len(plain)}")
    if {str(h.payload["model_version"]) for h in pinned} != {model}:
        problems.append(f"{user}: user of {model}, items of other versions")
    if len({str(h.payload["model_version"]) for h in plain}) != 1:
        problems.append(f"{user}: one search mixed versions")
    return problems


def _write(out: Path, rounds: int, errors: list[str], versions: set[str]) -> None:
    tally = {"rounds": rounds, "errors": errors, "versions": sorted(versions)}
    partial = out.with_suffix(".part")
    partial.write_text(json.dumps(tally))
    partial.replace(out)  # readers of OUT never see half a file


def main(out: Path, users: list[str]) -> int:
    rng = random.Random(11)
    rounds, errors, versions = 0, list[str](), set[str]()
    stop = out.with_suffix(".stop")
    with vector_store(Settings.load()) as store:
        while not stop.exists():
            try:
                errors += read_round(store, rng.choice(users), versions)
            except StateError as err:
                errors.append(f"read failed: {err}")
            rounds += 1
            if rounds % 10 == 0:
                _write(out, rounds, errors, versions)
            time.sleep(0.005)
    _write(out, rounds, errors, versions)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
