"""Joining Qdrant peers to the cluster topology: when the first peer can take them, and what a
failed join leaves behind."""

from pathlib import Path
from typing import Any

import pytest

from deploy import cluster
from deploy.stack import StackConfig, StackError


@pytest.fixture
def cfg(tmp_path: Path) -> StackConfig:
    return StackConfig(home=tmp_path, topology="cluster")


def _first_peer(
    monkeypatch: pytest.MonkeyPatch, *, ready: bool, p2p: bool, status: dict[str, Any]
) -> None:
    monkeypatch.setattr(cluster, "_qdrant_ready", lambda port: ready)
    monkeypatch.setattr(cluster, "_port_open", lambda port: p2p)
    monkeypatch.setattr(cluster, "_qdrant_cluster", lambda port: status)


LEADS = {"peer_id": 7, "raft_info": {"leader": 7, "role": "Leader"}}


def test_a_first_peer_that_answers_http_but_not_p2p_cannot_take_joiners(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first_peer(monkeypatch, ready=True, p2p=False, status=LEADS)
    assert not cluster._qdrant_leads(cfg)


@pytest.mark.parametrize(
    "status",
    [{}, {"peer_id": 7, "raft_info": {"leader": None}}, {"peer_id": 7, "raft_info": {"leader": 9}}],
)
def test_a_first_peer_that_does_not_lead_yet_cannot_take_joiners(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch, status: dict[str, Any]
) -> None:
    _first_peer(monkeypatch, ready=True, p2p=True, status=status)
    assert not cluster._qdrant_leads(cfg)


def test_a_first_peer_that_answers_and_leads_takes_joiners(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first_peer(monkeypatch, ready=True, p2p=True, status=LEADS)
    assert cluster._qdrant_leads(cfg)


class _Starts:
    """start_node's stand-in: the first `failures` calls leave storage behind and die."""

    def __init__(self, cfg: StackConfig, failures: int) -> None:
        self.cfg, self.failures, self.calls, self.found = cfg, failures, 0, []

    def __call__(self, cfg: StackConfig, name: str) -> int:
        storage = cfg.run_dir / name / "storage"
        self.found.append(sorted(p.name for p in storage.glob("*")) if storage.exists() else [])
        self.calls += 1
        if self.calls <= self.failures:
            storage.mkdir(parents=True, exist_ok=True)
            (storage / "half-made").write_text("")
            raise StackError(f"{name} did not start")
        return 4242


def test_a_fresh_joiner_that_dies_is_cleared_and_tried_again(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = _Starts(cfg, failures=2)
    monkeypatch.setattr(cluster, "start_node", starts)
    monkeypatch.setattr(cluster, "_read_pid", lambda cfg, name: None)
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)

    assert cluster.join_qdrant(cfg, "qdrant-2", attempts=3) == 4242
    assert starts.found == [[], [], []]  # each try began on empty storage


def test_a_joiner_gives_up_after_its_attempts(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = _Starts(cfg, failures=5)
    monkeypatch.setattr(cluster, "start_node", starts)
    monkeypatch.setattr(cluster, "_read_pid", lambda cfg, name: None)
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)

    with pytest.raises(StackError):
        cluster.join_qdrant(cfg, "qdrant-2", attempts=3)
    assert starts.calls == 3


def test_a_peer_with_raft_state_is_never_cleared(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = cfg.run_dir / "qdrant-2" / "storage"
    storage.mkdir(parents=True)
    (storage / "raft_state.json").write_text("{}")
    starts = _Starts(cfg, failures=1)
    monkeypatch.setattr(cluster, "start_node", starts)
    monkeypatch.setattr(cluster, "_read_pid", lambda cfg, name: None)

    with pytest.raises(StackError):
        cluster.join_qdrant(cfg, "qdrant-2")
    assert starts.calls == 1 and (storage / "raft_state.json").exists()


def test_a_joiner_that_still_runs_is_never_cleared(
    cfg: StackConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = _Starts(cfg, failures=1)
    monkeypatch.setattr(cluster, "start_node", starts)
    monkeypatch.setattr(cluster, "_read_pid", lambda cfg, name: 999)

    with pytest.raises(StackError):
        cluster.join_qdrant(cfg, "qdrant-2")
    assert starts.calls == 1 and (cfg.run_dir / "qdrant-2" / "storage" / "half-made").exists()
