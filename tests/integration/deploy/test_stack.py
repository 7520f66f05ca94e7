"""`sagestream stack`: a real Kafka and Redis of its own; up is idempotent, down leaves nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from deploy.stack import StackConfig
from tests.support.services import TEST_STACK

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
# Ports of its own, so the session's shared test stack and a running demo are untouched.
OWN = StackConfig(home=TEST_STACK.home, kafka_port=39092, controller_port=39093, redis_port=36379)


def stack(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SAGESTREAM_STACK=json.dumps({k: str(v) for k, v in asdict(OWN).items()}))
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "stack", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pids(status_output: str) -> list[str]:
    return [
        word.rstrip(")")
        for line in status_output.splitlines()
        for word in line.split()
        if word.rstrip(")").isdigit() and "pid" in line
    ]


def test_up_twice_gives_one_stack_and_down_leaves_nothing() -> None:
    try:
        first = stack("up")
        assert first.returncode == 0, first.stderr
        second = stack("up")
        assert second.returncode == 0, second.stderr
        assert pids(first.stdout) == pids(second.stdout) != []

        status = stack("status")
        assert status.returncode == 0
        assert "kafka 4.1.1 (KRaft)" in status.stdout
        assert "redis 7." in status.stdout
        assert "127.0.0.1:39092" in status.stdout
        assert listening(39092) and listening(36379)
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stderr
    assert not listening(39092) and not listening(39093) and not listening(36379)
    assert stack("status").returncode == 3  # not running: probes get a failing exit code
    for pid in pids(first.stdout):
        assert not Path(f"/proc/{pid}").exists()
