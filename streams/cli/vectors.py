"""`sagestream backfill` and `sagestream query`: operate and read the vector store.

`query` reads the way a downstream recommender does: a user's vector through the `users` alias,
then the nearest items of that vector's own model version; or an item's most similar items.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict, dataclass, field

from state import VectorStore
from state.vectors import EntityKind
from streams.cli.common import say, settings_of
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.backfill import run_backfill
from streams.vectors.store import vector_store


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backfill = sub.add_parser(
        "backfill",
        help="encode every entity the state knows into a model version's collections",
    )
    backfill.add_argument("--version", required=True, help="registry version, e.g. v0002")
    backfill.add_argument(
        "--flip", action="store_true", help="point the aliases at the version when done"
    )
    backfill.add_argument(
        "--refresh",
        action="store_true",
        help="also rewrite points of the same state version: rebuilds every user from the "
        "current item vectors (live writes build a user from those of its last event)",
    )
    backfill.set_defaults(func=run_backfill_command)
    query = sub.add_parser("query", help="read recommendations back from Qdrant")
    who = query.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user's top items")
    who.add_argument("--item", help="an item's most similar items")
    query.add_argument("-k", type=int, default=10)
    query.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    query.set_defaults(func=run_query)


def run_backfill_command(args: argparse.Namespace) -> int:
    settings = settings_of(args)

    async def go() -> dict[str, float]:
        client = redis_client(settings.redis)
        try:
            return await run_backfill(settings, client, args.version, args.flip, args.refresh)
        finally:
            await client.aclose()

    done = asyncio.run(go())
    say(
        f"backfilled {args.version}: {done['items']:.0f} items, {done['users']:.0f} users in "
        f"{done['seconds']:.1f}s ({_mode(done)})" + ("; aliases flipped" if args.flip else "")
    )
    return 0


def _mode(done: dict[str, float]) -> str:
    if done["insert_only"]:
        return "insert_only"
    return "refresh" if done["refresh"] else "guarded"


@dataclass
class Answer:
    kind: EntityKind
    id: str
    model_version: str | None = None  # None: no vector yet
    state_version: int | None = None
    updated_at: float | None = None
    results: list[tuple[str, float]] = field(default_factory=list)


def recommend(store: VectorStore, user: str | None, item: str | None, k: int) -> Answer:
    """Top items for a user, or similar items for an item, from the vector's own model."""
    kind: EntityKind = "users" if user is not None else "items"
    entity = user if user is not None else item
    if entity is None:
        raise ValueError("a user or an item is needed")
    found = store.get(kind, [entity])
    if entity not in found:
        return Answer(kind, entity)
    point = found[entity]
    model = str(point.payload["model_version"])
    exclude = [entity] if kind == "items" else []
    hits = store.search("items", point.vector, k, exclude_ids=exclude, version=model)
    return Answer(
        kind,
        entity,
        model,
        int(point.payload["state_version"]),
        float(point.payload["updated_at"]),
        [(h.entity_id, round(h.score, 4)) for h in hits],
    )


def show(answer: Answer) -> None:
    if answer.model_version is None:
        say(f"no vector for {answer.kind[:-1]} {answer.id} yet")
        return
    what = "top items for user" if answer.kind == "users" else "items similar to"
    say(f"{what} {answer.id} (model {answer.model_version}, state version {answer.state_version}):")
    for rank, (item, score) in enumerate(answer.results, 1):
        say(f"  {rank:>2}. {item:<16} {score:.4f}")


def run_query(args: argparse.Namespace) -> int:
    settings: Settings = settings_of(args)
    with vector_store(settings) as store:
        answer = recommend(store, args.user, args.item, args.k)
    if args.json:
        say(json.dumps(asdict(answer)))
    else:
        show(answer)
    return 0 if answer.model_version is not None else 1
