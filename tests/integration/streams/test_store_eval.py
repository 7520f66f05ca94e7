"""MovieLens 100K replayed through the worker, then read back from Qdrant: the graph signal
survives 1997 timestamps, and what readers get scores like the offline evaluation.

The stream is fed every event but each evaluated user's last (the test target), in time order,
so the stored user vectors describe the leave-one-out test histories. Then:

(a) no item with co-engagements has all-zero float32 weights, as the re-encoder reads them and as
    the model was given them (the recorded encode bases);
(b) after `sagestream backfill --refresh`, `sagestream eval --store` (users through the alias,
    top-10 item search with seen items excluded, sampled HR/NDCG on stored vectors) is within 2%
    on every metric of the offline evaluation (`evaluate_version`: onnxruntime on every item, the
    same cases and negatives) of the same model fed the stream's own neighbour lists and degrees
    (read from Redis with the re-encoder's reader). What is compared is the serving path: the
    stored vectors, the alias, the search and its exclusions, against the model's own output.

Logged, not asserted: the store straight after the replay (users rebuilt by the fan-out as their
items changed, except those past its hub cap on popular items, `state.hold_max`, who keep the item
vectors of their last event's pass; and items below `item_min_change`, or whose vector moved less
than `fanout_min_change`, do not fan out), and the
offline evaluation on the trainer's own lists, one graph over the fed events (the stream's lists
are merged over four partitions, each damping hubs by its own degrees), both with `sagestream
eval`'s lists.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from encoders.data import TrainingData
from encoders.workflow import evaluate_version
from state.encode_inputs import EncodeInputs
from streams.cli.main import main
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.devtools.tiny_model import FEATURIZER, publish_tiny_model_on
from streams.settings import Settings
from streams.training.data import build_training_data, neighbour_lists
from streams.training.datasets import load_dataset
from streams.training.store_eval import evaluate_store, relative_gap
from streams.vectors.store import vector_store
from streams.wire.events import Engagement
from streams.wire.topics import ensure_topics
from tests.support.datasets import ML100K
from tests.support.harness import run_worker

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

TOLERANCE = 0.02  # relative, per metric
NEIGHBOURS = 5  # lists built for the tiny model (it reads 4)


def before_test_targets(events: Sequence[Engagement]) -> list[Engagement]:
    """Every event but each evaluated user's last (its test target), in the log's time order."""
    counts: dict[str, int] = {}
    for event in events:
        counts[event.user_id] = counts.get(event.user_id, 0) + 1
    seen: dict[str, int] = {}
    kept = []
    for event in events:
        seen[event.user_id] = seen.get(event.user_id, 0) + 1
        n = counts[event.user_id]
        if n < 3 or seen[event.user_id] < n:
            kept.append(event)
    return kept


def on_fed_graph(data: TrainingData, fed: Sequence[Engagement]) -> TrainingData:
    """The same cases, with the trainer's lists and degrees from the events the stream got."""
    neighbours, weights, degrees = neighbour_lists(fed, data.item_ids, NEIGHBOURS)
    return replace(data, neighbours=neighbours, neighbour_weights=weights, degrees=degrees)


async def on_stream_state(data: TrainingData, inputs: EncodeInputs) -> TrainingData:
    """The same cases, with the lists and degrees the re-encoder reads from Redis."""
    read = await inputs.items(data.item_ids, NEIGHBOURS)
    neighbours = np.full((len(data.item_ids), NEIGHBOURS), -1, dtype=np.int64)
    weights = np.zeros((len(data.item_ids), NEIGHBOURS), dtype=np.float32)
    index = {item_id: i for i, item_id in enumerate(data.item_ids)}
    for row, item_id in enumerate(data.item_ids):
        for col, (other, weight) in enumerate(read[item_id].neighbours):
            neighbours[row, col], weights[row, col] = index[other], weight
    degrees = np.asarray([read[i].degree for i in data.item_ids], dtype=np.float32)
    return replace(data, neighbours=neighbours, neighbour_weights=weights, degrees=degrees)


async def all_zero_items(inputs: EncodeInputs, items: list[str], k: int) -> tuple[int, int]:
    """(items with co-engagements, those with all-zero float32 weights read or encoded)."""
    read = await inputs.items(items, k)
    bases = await inputs.bases(items)
    paired = zero = 0
    for item_id in items:
        if not read[item_id].neighbours:
            continue
        paired += 1
        got = np.asarray([w for _, w in read[item_id].neighbours], dtype=np.float32)
        used = np.asarray(bases[item_id].weights, dtype=np.float32)
        zero += not (got > 0).any() or not (used > 0).any()
    return paired, zero


def cli(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> int:
    """The real command in this process, configured through the environment."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    return main(list(args))


def metrics(found: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {g: {k: round(v, 4) for k, v in found[g].items()} for g in ("full", "sampled100")}


def store_metrics(settings: Settings, data: TrainingData) -> dict[str, Any]:
    with vector_store(settings) as store:
        return evaluate_store(store, data, seed=0)


async def test_replayed_movielens_reads_from_qdrant_like_the_offline_evaluation(
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    dataset = load_dataset(ML100K, "movielens")
    build = build_training_data
    data = await asyncio.to_thread(build, dataset.events, dataset.items, FEATURIZER, NEIGHBOURS)
    registry, version = await asyncio.to_thread(publish_tiny_model_on, tmp_path / "models", data)
    registry.promote(version)
    settings = make_settings(models={"registry": str(tmp_path / "models")})
    ensure_topics(settings)
    produce_catalog(settings, dataset.items.values())
    fed = before_test_targets(dataset.events)
    produce_engagements(settings, fed)

    started = time.monotonic()
    worker_log = tmp_path / "worker.log"
    code = await asyncio.to_thread(
        run_worker, settings, "--until-idle", "4", timeout=600, log=worker_log
    )
    replay_s = time.monotonic() - started
    assert code == 0, worker_log.read_text()[-3000:]
    inputs = EncodeInputs(redis_client, settings.state, settings.redis.key_prefix)
    paired, zero = await all_zero_items(inputs, list(data.item_ids), NEIGHBOURS)
    after_replay = store_metrics(settings, data)

    refresh = ["backfill", "--version", version, "--refresh"]
    assert await asyncio.to_thread(cli, monkeypatch, settings, *refresh) == 0
    capsys.readouterr()
    ev = [
        "eval",
        "--data",
        str(ML100K),
        "--format",
        "movielens",
        "--model",
        str(tmp_path / "models"),
    ]
    assert (
        await asyncio.to_thread(cli, monkeypatch, settings, *ev, "--store", "--threads", "1") == 0
    )
    printed = json.loads(capsys.readouterr().out)
    offline = evaluate_version(registry.path(version), await on_stream_state(data, inputs), seed=0)
    gap = relative_gap(printed["store"], offline)
    one_graph = evaluate_version(registry.path(version), on_fed_graph(data, fed), seed=0)
    log.info(
        "replayed %d events in %.1f s; %d items with co-engagements, %d all-zero; "
        "offline (eval) %s; offline, trainer's lists of the fed events %s; offline, the stream's "
        "lists %s; store after the replay %s (vs eval's offline %s); store after the refresh %s "
        "(vs eval's offline %s); gap to the offline on the stream's lists %s; coverage %s",
        len(fed), replay_s, paired, zero, metrics(printed["offline"]), metrics(one_graph),
        metrics(offline), metrics(after_replay), relative_gap(after_replay, printed["offline"]),
        metrics(printed["store"]), printed["store_vs_offline"], gap, printed["store"]["coverage"],
    )  # fmt: skip

    assert zero == 0 and paired > 1500  # (a)
    coverage = printed["store"]["coverage"]
    assert coverage["users_without_vector"] == coverage["items_without_vector"] == 0
    for group, values in gap.items():  # (b)
        for name, relative in values.items():
            assert abs(relative) <= TOLERANCE, f"{group} {name}: {relative:+.2%}"
