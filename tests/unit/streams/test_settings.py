"""Settings: sources and their order, secrets that never show, refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from streams.cli.common import CommandSettings
from streams.cli.main import EXIT_CONFIG, main
from streams.ingest import catalog
from streams.metrics import IngestMetrics
from streams.runtimes import batch
from streams.settings import CONFIG_FILE_ENV, Settings
from tests.unit.streams.fakes import FakeSink


def test_environment_beats_file_beats_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "sagestream.toml"
    config.write_text(
        '[topics]\nengagements = "from-file"\npartitions = 8\n[redis]\nkey_prefix = "f"\n'
    )
    monkeypatch.setenv("SAGESTREAM_TOPICS__ENGAGEMENTS", "from-env")
    monkeypatch.setenv(CONFIG_FILE_ENV, str(config))
    settings = Settings.load()
    assert settings.topics.engagements == "from-env"
    assert settings.topics.partitions == 8
    assert settings.redis.key_prefix == "f"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092"


def test_secrets_never_appear_in_reprs_or_dumps() -> None:
    settings = Settings.load(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "app",
            "sasl_password": "kafka-secret",
        },
        redis={"password": "redis-secret"},
        qdrant={"api_key": "qdrant-secret"},
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        for secret in ("kafka-secret", "redis-secret", "qdrant-secret"):
            assert secret not in text
    assert settings.kafka.client_kwargs()["sasl_plain_password"] == "kafka-secret"


@pytest.mark.parametrize("section", ["redis", "qdrant"])
def test_a_password_inside_a_url_is_refused_without_echoing_it(section: str) -> None:
    with pytest.raises(ValidationError, match="own setting") as refused:
        Settings.load(**{section: {"url": "redis://user:hunter2@127.0.0.1:6379/0"}})
    assert "hunter2" not in str(refused.value)


def test_a_refused_secret_is_not_echoed() -> None:
    with pytest.raises(ValidationError, match="valid string") as refused:
        Settings.load(kafka={"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN",
                             "sasl_password": 73519024})  # fmt: skip
    assert "73519024" not in str(refused.value)


def test_sasl_without_a_mechanism_or_credentials_without_sasl_are_refused() -> None:
    with pytest.raises(ValidationError, match="needs sasl_mechanism"):
        Settings.load(kafka={"security_protocol": "SASL_SSL", "sasl_username": "app"})
    with pytest.raises(ValidationError, match="credentials are set but security_protocol"):
        Settings.load(kafka={"sasl_username": "app", "sasl_password": "pw"})


def test_the_cli_refuses_bad_settings_in_one_line_without_the_secret(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SAGESTREAM_REDIS__URL", "redis://app:hunter2@127.0.0.1:1/0")
    assert main(["check"]) == EXIT_CONFIG
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("invalid settings: redis.url: Value error, put the password")
    assert "hunter2" not in caplog.text


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings.load(kafka={"bootstrap": "typo"})


def test_child_process_environment_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.load(
        topics={"engagements": "e1", "partitions": 3},
        redis={"password": "pw", "key_prefix": "p1"},
        state={"k_max": 7, "action_weights": {"view": 0.5, "save": 2.0}},
    )
    env = settings.to_env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.load() == settings


def test_secrets_reach_a_child_by_a_private_file_not_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secrets = {"redis": "r\"e'd\\is\u00e9\U0001f600\n", "kafka": "k@fka pw", "qdrant": "qk"}
    settings = Settings.load(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": "u",
            "sasl_password": secrets["kafka"],
        },
        redis={"password": secrets["redis"]},
        qdrant={"url": "http://127.0.0.1:6333", "api_key": secrets["qdrant"]},
    )
    env = settings.to_env()
    for value in env.values():
        assert not any(secret in value for secret in secrets.values())
    private = Path(env[CONFIG_FILE_ENV])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(private.parent.stat().st_mode) == 0o700
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings.load() == settings
    assert settings.to_env() == env  # the same file again, not one per call


def test_a_commands_stack_passwords_travel_as_secrets_too(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = CommandSettings.load(stack={"qdrant_api_key": "stack-key", "admin_password": "adm"})
    env = settings.to_env()
    assert not any("stack-key" in value or '"adm"' in value for value in env.values())
    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert CommandSettings.load() == settings


def test_a_password_in_any_qdrant_peer_url_is_refused() -> None:
    peers = "http://127.0.0.1:6333,http://u:hunter2@127.0.0.1:6343"
    with pytest.raises(ValidationError, match="own setting") as refused:
        Settings.load(qdrant={"url": peers})
    assert "hunter2" not in str(refused.value)


def test_redis_cluster_nodes_are_host_port_pairs() -> None:
    ok = Settings.load(redis={"cluster_nodes": ["127.0.0.1:7000", "redis-0.redis:6379"]})
    assert ok.redis.cluster_nodes == ("127.0.0.1:7000", "redis-0.redis:6379")
    with pytest.raises(ValidationError, match="host:port"):
        Settings.load(redis={"cluster_nodes": ["127.0.0.1"]})


def test_the_cluster_topology_points_every_client_at_its_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--topology cluster` gives the commands three brokers, the Redis Cluster's nodes (with a
    replica acknowledging each batch) and the three Qdrant peers, replicated collections."""
    from argparse import Namespace

    from streams.cli.common import settings_of

    monkeypatch.delenv(CONFIG_FILE_ENV, raising=False)
    monkeypatch.setenv("SAGESTREAM_STACK__QDRANT_BINARY", "/opt/qdrant/qdrant")
    settings = settings_of(Namespace(topology="cluster"))
    stack = settings.stack
    assert stack.topology == "cluster"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112"
    assert settings.topics.replication_factor == 3
    assert len(settings.redis.cluster_nodes) == 6 == len(set(stack.redis_ports))
    assert settings.redis.wait_replicas == 1
    assert settings.qdrant.url is not None and len(settings.qdrant.url.split(",")) == 3
    assert (settings.qdrant.shard_number, settings.qdrant.replication_factor) == (3, 2)
    ports = [p for k, c in stack.kafka_nodes for p in (k, c)] + stack.redis_ports
    ports += [p for peer in stack.qdrant_peers for p in peer]
    assert len(ports) == len(set(ports)), "two processes of the topology share a port"
    assert settings_of(Namespace(topology=None)).stack.topology == "single"
    monkeypatch.delenv("SAGESTREAM_STACK__QDRANT_BINARY")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert settings_of(Namespace(topology="cluster")).qdrant.url is None  # no peer runs


async def test_both_consumer_groups_of_a_worker_time_out_a_dead_member_alike(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog consumer used aiokafka's 10 s default while the engagement consumer used the
    setting: a killed worker's catalog partitions stayed unread after its engagements moved."""
    made: dict[str, dict[str, object]] = {}

    class Recorded:
        def __init__(self, *topics: str, **kwargs: object) -> None:
            made[topics[0]] = kwargs

        async def start(self) -> None:
            raise RuntimeError("recorded")

    monkeypatch.setattr(batch, "AIOKafkaConsumer", Recorded)
    monkeypatch.setattr(catalog, "AIOKafkaConsumer", Recorded)
    settings = Settings.load(kafka={"session_timeout_s": 6.0, "heartbeat_interval_s": 2.0})
    batch.consumer(settings, settings.topics.engagements)
    consumer = catalog.CatalogConsumer(
        settings, Redis(), FakeSink(), IngestMetrics(CollectorRegistry())
    )
    with pytest.raises(RuntimeError, match="recorded"):
        await consumer.run()
    timing = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000}
    for topic in (settings.topics.engagements, settings.topics.items):
        assert {k: made[topic][k] for k in timing} == timing
