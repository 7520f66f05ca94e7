"""Settings: sources and their order, secrets that never show, refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.cli.common import CommandSettings
from streams.cli.main import EXIT_CONFIG, main
from streams.settings import CONFIG_FILE_ENV, Settings


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
