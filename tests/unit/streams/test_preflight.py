"""The preflight verdicts: one line each, a deadline per dependency, no secret in any line."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest

from streams.runtimes import preflight as pf
from streams.runtimes.preflight import FAILED, OK, SKIPPED, Skip, preflight
from streams.settings import Settings

SECRET = "hunter2-very-secret"


def test_verdicts_say_ok_fail_skip_and_hide_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    never = threading.Event()

    def hangs(_s: Settings, _t: float) -> str:
        never.wait()
        return "unreachable"

    def leaks(s: Settings, _t: float) -> str:
        password = s.kafka.sasl_password
        assert password is not None
        raise PermissionError(f"auth failed for password={password.get_secret_value()}")

    def skipped(_s: Settings, _t: float) -> str:
        raise Skip("not configured")

    monkeypatch.setattr(
        pf,
        "CHECKS",
        {"good": lambda _s, _t: "fine", "leaky": leaks, "off": skipped, "stuck": hangs},
    )
    kafka = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"}
    settings = Settings(kafka={**kafka, "sasl_password": SECRET})
    try:
        verdicts = {v.name: v for v in preflight(settings, timeout_s=0.2)}
    finally:
        never.set()
    assert [verdicts[n].status for n in ("good", "leaky", "off", "stuck")] == [
        OK, FAILED, SKIPPED, FAILED,
    ]  # fmt: skip
    assert verdicts["leaky"].detail == "PermissionError: auth failed for password=***"
    assert verdicts["stuck"].detail == "no answer within 1.2s"
    assert all(SECRET not in v.line() for v in verdicts.values())
    assert verdicts["good"].line().startswith("good      ok    fine")


def test_a_missing_registry_fails_and_an_absent_one_is_skipped(tmp_path: Path) -> None:
    missing = Settings(models={"registry": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="nope is not a directory"):
        pf.check_registry(missing, 1)
    with pytest.raises(Skip, match="ingests without vectors"):
        pf.check_registry(Settings(), 1)
    with pytest.raises(Skip, match="no promoted model"):
        pf.check_model(Settings(models={"registry": str(tmp_path)}), 1)


def test_an_unknown_host_and_a_closed_port_are_named(unused_tcp_port: int) -> None:
    with pytest.raises(ConnectionError, match=r"nohost\.invalid:1: unknown host"):
        pf.reachable("nohost.invalid:1", 1)
    closed = f"127.0.0.1:{unused_tcp_port}"
    with pytest.raises(ConnectionError, match=re.escape(f"{closed}: connection refused")):
        pf.reachable(closed, 1)


def test_a_connection_dropped_on_the_sasl_credentials_reads_as_a_refused_password() -> None:
    """The broker closes the connection right after refusing a password, and kafka-python often
    reads the close before the error: the request sequence still says what happened."""

    def record(level: int, message: str) -> logging.LogRecord:
        return logging.LogRecord(pf._ClientErrors.CONNECTION, level, __file__, 1, message, (), None)

    seen = pf._ClientErrors()
    for level, message in [
        (logging.DEBUG, "<conn> Request 3: SaslAuthenticateRequest(version=2, auth_bytes=...)"),
        (logging.DEBUG, "<conn>: Response 3 (3 ms): SaslAuthenticateResponse(error_code=0)"),
        (logging.DEBUG, "<conn> Request 4: SaslAuthenticateRequest(version=2, auth_bytes=...)"),
        (logging.ERROR, "<conn>: Connection lost: KafkaConnectionError: socket disconnected"),
    ]:
        seen.handle(record(level, message))
    cause = seen.cause()
    assert cause is not None and cause.startswith("Authentication failed")
    seen.reset()
    seen.handle(record(logging.ERROR, "<conn>: Connection lost: socket disconnected"))
    assert seen.cause() is None  # a drop outside authentication says nothing about credentials
