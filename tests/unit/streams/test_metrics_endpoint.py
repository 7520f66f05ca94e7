"""The worker's /metrics endpoint: any free port on request, a clear error on a taken one."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from streams.cli.main import EXIT_CONFIG, main
from streams.exceptions import ConfigError
from streams.metrics import IngestMetrics
from streams.settings import MetricsSettings
from streams.vectors.rules import STAGES, PassStats


def test_port_zero_serves_on_a_free_port_and_says_which() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    port = metrics.serve_from(MetricsSettings(port=0))
    assert port is not None and port > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
        assert b"sagestream_" in page.read()
    assert IngestMetrics(CollectorRegistry()).serve_from(MetricsSettings(enabled=False)) is None


def test_a_taken_port_is_a_config_error_and_a_one_line_exit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="choose another port"):
            IngestMetrics(CollectorRegistry()).serve("127.0.0.1", port)

        def worker(_args: object) -> int:
            IngestMetrics(CollectorRegistry()).serve("127.0.0.1", port)
            return 0

        monkeypatch.setattr("streams.cli.worker.run", worker)
        assert main(["worker"]) == EXIT_CONFIG
    assert any("choose another port" in r.getMessage() for r in caplog.records)


def test_a_pass_is_split_into_redis_encode_and_upsert_seconds() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    metrics.observe_pass(PassStats(marks=3, pass_s=1.0, encode_s=0.25, upsert_s=0.5))
    metrics.observe_pass(PassStats())  # idle: not a pass worth timing
    value = metrics.registry.get_sample_value
    assert value("sagestream_pass_seconds_count") == 1
    assert value("sagestream_pass_seconds_sum") == 1.0
    assert value("sagestream_read_seconds_sum") == 0.25
    assert value("sagestream_encode_seconds_sum") == 0.25
    assert value("sagestream_upsert_seconds_sum") == 0.5


def test_a_passs_steps_add_up_per_step_and_every_step_is_exported_from_the_start() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    for stage in STAGES:
        assert value("sagestream_pass_stage_seconds_total", {"stage": stage}) == 0.0
    metrics.observe_pass(PassStats(marks=3, stages_s={"read": 0.5, "upsert": 0.25}))
    metrics.observe_pass(PassStats(marks=1, stages_s={"read": 0.25}))
    assert value("sagestream_pass_stage_seconds_total", {"stage": "read"}) == 0.75
    assert value("sagestream_pass_stage_seconds_total", {"stage": "upsert"}) == 0.25
    assert value("sagestream_pass_stage_seconds_total", {"stage": "drain"}) == 0.0


def test_fan_out_counts_rebuilt_and_dropped_users_and_what_the_last_pass_left_behind() -> None:
    metrics = IngestMetrics(CollectorRegistry())
    value = metrics.registry.get_sample_value
    assert value("sagestream_fanout_dropped_total", {"reason": "hub_cap"}) == 0
    metrics.observe_pass(PassStats(marks=3, fanout_users=4, fanout_marked=1, fanout_dropped=2))
    assert value("sagestream_fanout_users_total") == 5  # rebuilt, and marked for their worker
    assert value("sagestream_fanout_dropped_total", {"reason": "pass_bound"}) == 2
    assert value("sagestream_users_behind_items") == 3  # the rebuilt ones are not behind
    metrics.observe_pass(PassStats())  # idle: nothing is behind any more
    assert value("sagestream_users_behind_items") == 0
