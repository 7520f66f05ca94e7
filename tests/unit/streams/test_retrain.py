"""`sagestream retrain` without services: durations, the promotion gate, the event window, the
loop and the flags."""

from __future__ import annotations

import logging

import pytest

from streams.cli import build_parser
from streams.commands.train import DEFAULT_EPOCHS
from streams.events import Engagement
from streams.retrain import Decision, newest_events, parse_duration, run_every


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
