"""A broker outage's flood of client lines is said once per window, with a count."""

from __future__ import annotations

import logging

import pytest

from streams.runtimes.client_logs import RepeatFilter, quiet_client_repeats


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_each_message_passes_once_a_window_then_says_how_many_were_held() -> None:
    clock = Clock()
    repeats = RepeatFilter(window_s=30.0, clock=clock)
    unable = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(100):
        clock.now = float(second) / 2  # two attempts a second for 50 s
        line = record("aiokafka.conn", unable, 1, "refused")
        if repeats.filter(line):
            passed.append(line.getMessage())
    assert passed == [
        "Unable connect to node with id 1: refused",
        "Unable connect to node with id 1: refused (59 more like it in the last 30s)",
    ]
    other = record("aiokafka.cluster", "Unable to update metadata from %s", [1])
    assert repeats.filter(other)  # another message, another logger: its own window


def test_installed_on_every_client_logger_once(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("aiokafka.consumer.fetcher.test")
    mine = logging.getLogger("streams.test")
    quiet_client_repeats()
    quiet_client_repeats()
    assert len([f for f in logger.filters if isinstance(f, RepeatFilter)]) == 1
    assert not any(isinstance(f, RepeatFilter) for f in mine.filters)
    with caplog.at_level(logging.ERROR):
        for _ in range(50):
            logger.error("Failed fetch messages from %s", 1)
    assert len([r for r in caplog.records if r.name == logger.name]) == 1
