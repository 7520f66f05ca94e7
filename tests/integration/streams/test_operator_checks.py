"""What a probe and an operator ask a worker, on the real stack: `sagestream check`, and the
/healthz and /readyz endpoints that docker-compose and Kubernetes call."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from streams.cli.main import main
from streams.cli.worker import EXIT_UNAVAILABLE
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.devtools.tiny_model import publish_tiny_model
from streams.settings import Settings
from streams.wire.topics import ensure_topics
from tests.support.harness import REPO, probe, run_worker, start_worker, until_ready

pytestmark = pytest.mark.integration

STREAM = GeneratorConfig(users=30, items=60, communities=3, events=300, seed=5)


def check(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, str]]:
    """`sagestream check` as an operator runs it: settings from the environment."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    code = main(["check", "--timeout", "5"])
    lines = capsys.readouterr().out.splitlines()
    return code, {line.split()[0]: line for line in lines}


def promoted_registry(root: Path) -> str:
    registry, version = publish_tiny_model(root, STREAM)
    registry.promote(version)
    return version


def test_check_passes_when_every_dependency_answers_and_the_model_loads(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    version = promoted_registry(tmp_path / "models")
    settings = make_settings(models={"registry": str(tmp_path / "models")})
    ensure_topics(settings)
    produce_engagements(settings, generate_events(STREAM))  # waits until the topic is visible
    code, lines = check(settings, monkeypatch, capsys)
    assert list(lines) == ["kafka", "redis", "qdrant", "registry", "model"]
    assert all(line.split()[1] == "ok" for line in lines.values()), lines
    assert code == 0
    assert f"{settings.topics.engagements} x4" in lines["kafka"]
    assert "nothing served yet" in lines["qdrant"]
    assert f"{version} promoted" in lines["registry"]
    assert f"{version} loads" in lines["model"]


def test_check_names_each_dependency_that_does_not_answer(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unused_tcp_port_factory: Callable[[], int],
    tmp_path: Path,
) -> None:
    kafka, redis, qdrant = (unused_tcp_port_factory() for _ in range(3))
    settings = make_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{kafka}"},
        redis={"url": f"redis://127.0.0.1:{redis}/0"},
        qdrant={"url": f"http://127.0.0.1:{qdrant}", "api_key": "qdrant-secret-key"},
        models={"registry": str(tmp_path / "no-such-registry")},
    )
    code, lines = check(settings, monkeypatch, capsys)
    assert code == 1
    assert lines["kafka"].split()[1] == "FAIL" and f"{kafka}: connection refused" in lines["kafka"]
    assert lines["redis"].split()[1] == "FAIL" and str(redis) in lines["redis"]
    assert lines["qdrant"].split()[1] == "FAIL" and "Connection refused" in lines["qdrant"]
    assert "no-such-registry is not a directory" in lines["registry"]
    assert lines["model"].split()[1] == "--"
    assert not any("qdrant-secret-key" in line for line in lines.values())


def test_check_refuses_a_model_whose_files_were_damaged(
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    version = promoted_registry(tmp_path / "models")
    onnx = next((tmp_path / "models" / "versions" / version).glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-64])  # a truncated copy, as a half-synced volume has
    settings = make_settings(models={"registry": str(tmp_path / "models")})
    code, lines = check(settings, monkeypatch, capsys)
    assert code == 1
    assert lines["registry"].split()[1] == "ok"
    assert lines["model"].split()[1] == "FAIL" and version in lines["model"]


@pytest.mark.parametrize("runtime", ["batch", "faust"])
async def test_a_worker_turns_ready_then_unready_on_shutdown_and_compose_probes_it(
    runtime: str,
    make_settings: Callable[..., Settings],
    unused_tcp_port: int,
    tmp_path: Path,
) -> None:
    version = await asyncio.to_thread(promoted_registry, tmp_path / "models")
    settings = make_settings(
        models={"registry": str(tmp_path / "models")}, metrics={"port": unused_tcp_port}
    )
    ensure_topics(settings)
    produce_engagements(settings, generate_events(STREAM))
    log = tmp_path / "worker.log"
    proc = start_worker(settings, "--runtime", runtime, log=log)
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        body = await asyncio.to_thread(until_ready, f"{base}/readyz", proc, log)
        assert body == {"status": "ready", "model": version, "paused": [], "paused_for_s": 0.0}
        assert await asyncio.to_thread(probe, f"{base}/healthz") == (200, {"status": "alive"})

        compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
        command = compose["services"]["worker"]["healthcheck"]["test"]
        assert command[:2] == ["CMD", "python"]
        ours = [sys.executable, *command[2:]]
        ours[-1] = ours[-1].replace(":9464/", f":{unused_tcp_port}/")
        assert ours[-1] != command[-1]
        done = await asyncio.to_thread(subprocess.run, ours, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 120)
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture
def guarded_redis(unused_tcp_port_factory: Callable[[], int], tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own that wants a password (the shared test Redis wants none, and
    redis-py quietly drops a password such a server does not ask for)."""
    port = unused_tcp_port_factory()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", "the-redis-secret", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            assert server.poll() is None and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(30)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("runtime", ["batch", "faust"])
def test_a_worker_that_cannot_reach_its_dependencies_stops_at_once_naming_them(
    runtime: str,
    make_settings: Callable[..., Settings],
    guarded_redis: str,
    unused_tcp_port: int,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{unused_tcp_port}"},
        redis={"url": guarded_redis, "password": "not-the-redis-secret"},
        models={"registry": str(tmp_path / "mistyped")},
    )
    log = tmp_path / "worker.log"
    # Before the start-up check, a closed broker port cost about 40 s of bootstrap retries, and
    # a wrong Redis password crashed the Faust runtime 15 times before it exited 0.
    code = run_worker(settings, "--runtime", runtime, timeout=60, log=log)
    assert code == EXIT_UNAVAILABLE
    failures = [line for line in log.read_text().splitlines() if "start-up check failed" in line]
    assert len(failures) == 3, log.read_text()[-3000:]
    assert f"127.0.0.1:{unused_tcp_port}: connection refused" in failures[0]
    assert "AuthenticationError" in failures[1]
    assert "mistyped is not a directory" in failures[2]
    assert "not-the-redis-secret" not in log.read_text()
