"""`sagestream stack`: a real Kafka, Redis and Qdrant of its own; up is idempotent, down leaves
nothing; without a Qdrant binary the stack says what embedded mode loses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from deploy.stack import StackConfig
from tests.support.services import own_stack

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


OWN = own_stack(qdrant_api_key="stack-test-key")
KAFKA, QDRANT = OWN.kafka_port, OWN.qdrant_port
PORTS = (KAFKA, OWN.controller_port, OWN.redis_port, QDRANT, OWN.qdrant_grpc_port)


def stack(*args: str, cfg: StackConfig = OWN) -> subprocess.CompletedProcess[str]:
    fields = {k: str(v) for k, v in asdict(cfg).items() if v is not None}
    env = dict(os.environ, SAGESTREAM_STACK=json.dumps(fields))
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
        assert f"127.0.0.1:{KAFKA}" in status.stdout
        assert "qdrant 1.19.0" in status.stdout and f"http://127.0.0.1:{QDRANT}" in status.stdout
        with urllib.request.urlopen(f"http://127.0.0.1:{QDRANT}/readyz", timeout=5) as ready:
            assert ready.status == 200  # health needs no key
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{QDRANT}/collections", timeout=5)
        keyed = urllib.request.Request(
            f"http://127.0.0.1:{QDRANT}/collections", headers={"api-key": "stack-test-key"}
        )
        with urllib.request.urlopen(keyed, timeout=5) as listed:
            assert listed.status == 200
        assert all(listening(port) for port in PORTS)
        assert not (REPO / ".qdrant-initialized").exists()  # daemons run in the run directory
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stderr
    assert not any(listening(port) for port in PORTS)
    assert stack("status").returncode == 3  # not running: probes get a failing exit code
    for pid in pids(first.stdout):
        assert not Path(f"/proc/{pid}").exists()
    assert stack("purge").returncode == 0  # its ports are new each run: leave no data behind
    assert not OWN.run_dir.exists()


def test_without_a_qdrant_binary_the_stack_says_what_embedded_mode_loses() -> None:
    bare = replace(OWN, run_qdrant=False)
    status = stack("status", cfg=bare)
    assert "qdrant" not in [line.split()[0] for line in status.stdout.splitlines() if line]
    assert "no Qdrant server binary" in status.stdout and "second worker" in status.stdout
