"""`sagestream retrain` without services: durations, the promotion gate, the event window, the
loop and the flags."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest

from encoders.registry import ModelRegistry
from streams.cli.main import build_parser
from streams.cli.train import DEFAULT_EPOCHS, training_configs
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.settings import Settings
from streams.training.retrain import (
    Decision,
    RetrainJob,
    newest_events,
    parse_duration,
    retrain_once,
    run_every,
)
from streams.wire.events import Engagement, encode_catalog_item, encode_engagement


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("6h", 21600), ("2d", 172800), ("1h30m", 5400), (" 1.5H ", 5400)],
)
def test_durations_take_a_unit_and_add_up(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "6", "h", "6x", "-1h", "0s", "0m0s", "1h 30m", "h6"])
def test_durations_without_a_unit_or_not_positive_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def _decision(candidate: float, serving: float | None, tolerance: float = 0.0) -> Decision:
    return Decision("v0002", candidate, None if serving is None else "v0001", serving, tolerance)


def test_the_first_candidate_is_promoted_whatever_it_scores() -> None:
    decision = _decision(0.0, None)
    assert decision.promote and decision.bar is None
    assert decision.line() == (
        "promoted v0002: candidate v0002 full/ndcg@10 0.0000; nothing was serving"
    )


@pytest.mark.parametrize(
    ("candidate", "serving", "tolerance", "promote"),
    [
        (0.30, 0.30, 0.0, True),  # as good as serving
        (0.31, 0.30, 0.0, True),
        (0.29, 0.30, 0.0, False),
        (0.298, 0.30, 0.01, True),  # within the tolerance
        (0.296, 0.30, 0.01, False),
        (0.31, 0.30, -0.05, False),  # a negative tolerance demands a 5 % gain
        (0.32, 0.30, -0.05, True),
    ],
)
def test_the_gate_compares_against_serving_times_one_minus_tolerance(
    candidate: float, serving: float, tolerance: float, promote: bool
) -> None:
    decision = _decision(candidate, serving, tolerance)
    assert decision.promote is promote
    assert decision.bar == pytest.approx(serving * (1 - tolerance))


def test_the_decision_line_names_both_versions_and_scores() -> None:
    kept = _decision(0.25, 0.30, 0.01).line()
    assert kept == (
        "kept serving v0001: candidate v0002 full/ndcg@10 0.2500 < 0.2970 = serving v0001 "
        "0.3000 x 0.99"
    )
    assert _decision(0.31, 0.30).line().startswith("promoted v0002: candidate v0002")


BASELINES = {"cooccurrence": 0.35, "popularity": 0.10}


def _gated(
    candidate: float, serving: float | None, baselines: dict[str, float], gate: bool = True
) -> Decision:
    serving_name = None if serving is None else "v0001"
    return Decision("v0002", candidate, serving_name, serving, 0.01, baselines, gate)


@pytest.mark.parametrize(
    ("candidate", "serving", "promote", "unbeaten"),
    [
        (0.40, 0.30, True, ()),  # beats serving and both baselines
        (0.40, None, True, ()),
        (0.33, 0.30, False, ("cooccurrence",)),  # beats serving, loses to co-occurrence
        (0.33, None, False, ("cooccurrence",)),  # a first model must beat the baselines too
        (0.35, 0.30, False, ("cooccurrence",)),  # a tie is not a win
        (0.05, None, False, ("cooccurrence", "popularity")),
        (0.40, 0.50, False, ()),  # beats the baselines, not serving
    ],
)
def test_the_gate_also_requires_beating_every_baseline(
    candidate: float, serving: float | None, promote: bool, unbeaten: tuple[str, ...]
) -> None:
    decision = _gated(candidate, serving, BASELINES)
    assert decision.promote is promote
    assert decision.unbeaten == unbeaten


def test_the_line_says_which_baseline_was_not_beaten() -> None:
    assert _gated(0.33, 0.30, BASELINES).line() == (
        "kept serving v0001: candidate v0002 full/ndcg@10 0.3300 >= 0.2970 = serving v0001 "
        "0.3000 x 0.99; does not beat the cooccurrence baseline: cooccurrence 0.3500, "
        "popularity 0.1000"
    )
    assert _gated(0.05, None, BASELINES).line() == (
        "did not promote v0002: candidate v0002 full/ndcg@10 0.0500; nothing was serving; "
        "does not beat the cooccurrence and popularity baselines: cooccurrence 0.3500, "
        "popularity 0.1000"
    )
    assert (
        _gated(0.40, 0.30, BASELINES)
        .line()
        .endswith("; beats the baselines cooccurrence 0.3500, popularity 0.1000")
    )


def test_with_the_baseline_gate_off_the_baselines_are_reported_not_required() -> None:
    decision = _gated(0.33, None, BASELINES, gate=False)
    assert decision.promote and decision.unbeaten == ("cooccurrence",)
    assert decision.line() == (
        "promoted v0002: candidate v0002 full/ndcg@10 0.3300; nothing was serving; does not "
        "beat the cooccurrence baseline (baseline gate off): cooccurrence 0.3500, "
        "popularity 0.1000"
    )


TINY = ["--epochs", "1", "--dim", "8", "--seq-len", "6", "--neighbours", "4", "--threads", "1"]


def test_a_run_whose_model_loses_to_cooccurrence_promotes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The real run on an archive (no services): a one-epoch, 8-dimensional model trails the
    co-occurrence baseline by far on a community stream, so it is published and not promoted."""
    stream = GeneratorConfig(users=60, items=80, communities=4, events=2000, seed=5)
    archive, items = tmp_path / "events.jsonl", tmp_path / "items.jsonl"
    archive.write_bytes(b"\n".join(encode_engagement(e) for e in generate_events(stream)))
    items.write_bytes(b"\n".join(encode_catalog_item(i) for i in generate_catalog(stream)))
    args = build_parser().parse_args(["retrain", *TINY])
    job = RetrainJob(
        registry=tmp_path / "models",
        recipe=partial(training_configs, args),
        archive=archive,
        items=items,
    )
    with caplog.at_level(logging.WARNING):
        decision = retrain_once(job, Settings())
    assert not decision.promote and decision.serving is None
    assert "cooccurrence" in decision.unbeaten
    assert decision.baselines["cooccurrence"] > decision.candidate_score
    assert decision.line().startswith("did not promote v0001: candidate v0001 full/ndcg@10")
    assert "v0001 is not promoted: it does not beat the baseline(s) cooccurrence" in caplog.text
    registry = ModelRegistry(tmp_path / "models")
    assert registry.list() == ["v0001"] and registry.promoted() is None


def _event(n: int, ts: float) -> Engagement:
    return Engagement(f"e{n}", "u1", f"i{n}", "view", ts)


def test_newest_events_keeps_the_latest_in_time_order() -> None:
    events = [_event(1, 30.0), _event(2, 10.0), _event(3, 20.0)]
    assert [e.event_id for e in newest_events(events, None)] == ["e2", "e3", "e1"]
    assert [e.event_id for e in newest_events(events, 2)] == ["e3", "e1"]
    assert len(newest_events(events, 10)) == 3


class _Stop(Exception):
    pass


def test_the_loop_survives_a_failed_run_and_sleeps_out_the_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    sleeps: list[float] = []

    def once() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("kafka is down")

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise _Stop

    with caplog.at_level(logging.INFO), pytest.raises(_Stop):
        run_every(3600.0, once, sleep=sleep)
    assert len(runs) == 3
    assert all(3590 < s <= 3600 for s in sleeps)
    assert "retrain run 1 failed" in caplog.text


def test_retrain_is_a_command_with_trains_model_flags() -> None:
    parser = build_parser()
    args = parser.parse_args(["retrain", "--every", "6h", "--max-events", "500"])
    assert args.every == 21600 and args.max_events == 500 and args.tolerance == 0.01
    assert args.since is None and args.archive is None
    train = parser.parse_args(["train", "--data", "d", "--format", "jsonl", "--out", "o"])
    for flag in ("epochs", "dim", "seq_len", "neighbours", "seed", "threads", "no_logq"):
        assert getattr(args, flag) == getattr(train, flag), flag
    assert args.epochs == DEFAULT_EPOCHS


@pytest.mark.parametrize("argv", [["--max-events", "0"], ["--every", "6"], ["--since", "x"]])
def test_retrain_refuses_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["retrain", *argv])
    assert "retrain: error" in capsys.readouterr().err
