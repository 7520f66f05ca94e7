"""`sagestream retrain` end to end: a generated stream on real Kafka (or a JSONL archive) in, a
tiny model trained, published, and promoted only when the gate passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from encoders.registry import ModelRegistry
from streams.cli.main import main
from streams.devtools.generate import GeneratorConfig, generate_catalog, generate_events
from streams.devtools.produce import produce_catalog, produce_engagements
from streams.settings import Settings
from streams.wire.events import encode_catalog_item, encode_engagement
from streams.wire.topics import ensure_topics

pytestmark = pytest.mark.integration

STREAM = GeneratorConfig(users=60, items=80, communities=4, events=2000, seed=5)
TINY = ["--epochs", "1", "--dim", "8", "--seq-len", "6", "--neighbours", "4", "--threads", "1"]
# A one-epoch, 8-dimensional model loses to both baselines on these streams (full NDCG@10 about
# 0.26-0.31 against co-occurrence's 0.58 and popularity's 0.33): runs that test the comparison
# with the serving version turn the baseline gate off explicitly; one run tests that gate itself.
NO_BASELINE_GATE = "--no-baseline-gate"


@pytest.fixture
def retrain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Callable[..., tuple[int, str]]:
    """Run the real command in-process on ``settings`` (through the environment, as a
    deployment passes them); returns its exit code and its stdout."""

    def run(settings: Settings, *flags: str) -> tuple[int, str]:
        for name, value in settings.to_env().items():
            monkeypatch.setenv(name, value)
        code = main(["retrain", "--registry", str(tmp_path / "models"), *TINY, *flags])
        return code, capsys.readouterr().out.strip()

    return run


def test_retrain_from_kafka_promotes_first_then_keeps_serving_behind_a_gate(
    make_settings: Callable[..., Settings],
    retrain: Callable[..., tuple[int, str]],
    tmp_path: Path,
) -> None:
    settings = make_settings()
    ensure_topics(settings)
    produce_catalog(settings, generate_catalog(STREAM))
    produce_engagements(settings, generate_events(STREAM))
    registry = ModelRegistry(tmp_path / "models")

    code, out = retrain(settings, NO_BASELINE_GATE)
    assert code == 0, out
    assert out.startswith("promoted v0001:") and "nothing was serving" in out
    assert "does not beat the cooccurrence" in out and "(baseline gate off)" in out
    assert registry.promoted() == "v0001"
    manifest = registry.show("v0001")
    users = {e.user_id for e in generate_events(STREAM)}
    assert manifest["data"] == {"users": len(users), "items": STREAM.items, "events": 2000}
    assert manifest["metrics"]["full"]["ndcg@10"] > 0  # so a multiplicative gate can bite

    code, out = retrain(settings, NO_BASELINE_GATE, "--tolerance", "-1000", "--max-events", "1500")
    assert code == 0, out
    assert out.startswith("kept serving v0001: candidate v0002 full/ndcg@10"), out
    assert registry.list() == ["v0001", "v0002"]  # published for inspection all the same
    assert registry.promoted() == "v0001"
    assert registry.show("v0002")["data"]["events"] == 1500
    assert not _groups_named(settings, settings.kafka.group_id)  # no group joined, none made


def _groups_named(settings: Settings, group_id: str) -> list[dict[str, object]]:
    admin = KafkaAdminClient(**settings.kafka.client_kwargs())
    try:
        return [g for g in admin.list_groups() if group_id in g.values()]
    finally:
        admin.close()


def test_retrain_from_an_archive_directory(
    make_settings: Callable[..., Settings],
    retrain: Callable[..., tuple[int, str]],
    tmp_path: Path,
) -> None:
    """Two JSONL files under a directory and a catalog file; Kafka is not read."""
    stream = GeneratorConfig(
        users=60, items=80, communities=4, events=2000, seed=5, start_ts=time.time() - 30 * 86400
    )
    events = list(generate_events(stream))
    archive = tmp_path / "archive"
    (archive / "day2").mkdir(parents=True)
    for path, part in (
        (archive / "a.jsonl", events[:900]),
        (archive / "day2/b.jsonl", events[900:]),
    ):
        path.write_bytes(b"\n".join(encode_engagement(e) for e in part) + b"\n")
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"\n".join(encode_catalog_item(i) for i in generate_catalog(stream)))
    settings = make_settings(kafka={"bootstrap_servers": "127.0.0.1:1"})  # unreachable

    source = ["--archive", str(archive), "--items", str(items)]
    code, out = retrain(settings, *source)  # the baseline gate is on by default
    assert code == 0, out
    assert out.startswith("did not promote v0001: candidate v0001 full/ndcg@10"), out
    assert "nothing was serving; does not beat the cooccurrence" in out
    registry = ModelRegistry(tmp_path / "models")
    assert registry.promoted() is None
    assert registry.list() == ["v0001"]  # published for inspection all the same
    assert registry.show("v0001")["data"]["events"] == len(events)

    code, out = retrain(settings, *source, NO_BASELINE_GATE)
    assert code == 0, out
    assert out.startswith("promoted v0002:")
    assert registry.promoted() == "v0002"

    code, out = retrain(settings, "--archive", str(archive), "--since", "1d")
    assert (code, out) == (1, "")  # every archived event is older: an error, nothing published
    assert registry.list() == ["v0001", "v0002"]
