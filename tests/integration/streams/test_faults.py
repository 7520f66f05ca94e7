"""Crashes at named points: nothing committed past the failure, and the restart converges."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from state import RedisState
from streams.settings import Settings
from tests.support.faults import FaultPlan
from tests.support.harness import (
    Oracle,
    committed_offsets,
    end_offsets,
    mismatches,
    read_topic,
    run_worker,
)
from tests.support.streams import SMALL, produce_mixed

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("runtime", ["faust", "batch"])
@pytest.mark.parametrize(
    ("point", "action", "exit_code"),
    [("after_state_write", "raise", 70), ("before_commit", "kill", -9)],
)
async def test_a_crash_commits_nothing_past_it_and_the_restart_converges(
    runtime: str,
    point: str,
    action: str,
    exit_code: int,
    make_settings: Callable[..., Settings],
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    settings = make_settings(ingest={"batch_max": 400})
    plan = FaultPlan(point=point, action=action, after=3)  # type: ignore[arg-type]
    expected_letters = produce_mixed(settings, SMALL, bad=20)
    args = ("--runtime", runtime, "--until-idle", "4")
    crash_log = tmp_path / "crash.log"
    code = await asyncio.to_thread(run_worker, settings, *args, log=crash_log, faults=plan)
    assert code == exit_code, (tmp_path / "crash.log").read_text()[-2000:]

    ends = await asyncio.to_thread(end_offsets, settings, settings.topics.engagements)
    after_crash = await asyncio.to_thread(committed_offsets, settings)
    assert sum(after_crash.values()) < sum(ends.values())  # the failed batch was not committed

    healthy = settings
    code = await asyncio.to_thread(run_worker, healthy, *args, log=tmp_path / "restart.log")
    assert code == 0

    records = await asyncio.to_thread(read_topic, healthy, healthy.topics.engagements)
    oracle = Oracle.from_records(healthy, records)
    state = RedisState(redis_client, healthy.state, prefix=healthy.redis.key_prefix)
    assert await mismatches(state, oracle) == []
    assert await asyncio.to_thread(committed_offsets, healthy) == ends

    letters = await asyncio.to_thread(
        read_topic, healthy, healthy.topics.dlq(healthy.topics.engagements)
    )
    sources = {
        (dict(letter.headers)["source.partition"], dict(letter.headers)["source.offset"])
        for letter in letters
    }
    # At least once: a crash between the dead letters' ack and the commit may repeat some; the
    # source coordinates in the headers identify each one, and none is missing.
    assert len(sources) == len(expected_letters)
