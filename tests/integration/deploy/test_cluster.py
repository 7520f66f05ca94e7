"""The cluster topology (deploy/cluster.py) under a steady stream: one Redis master, one Kafka
broker and one Qdrant peer killed and brought back in turn, a model switch and a worker crash;
every row ends with Redis equal to the from-scratch oracle, every vector equal to the vector
oracle, nothing lost or doubled and the offsets committed to the end (the fault matrix judges
each row; tests/support/fault_matrix.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]
ROWS = [
    "Redis master kill -9",
    "Kafka broker kill -9",
    "Qdrant peer kill -9",
    "model switch",
    "worker SIGKILL",
]


@pytest.mark.timeout(1600)
def test_the_cluster_loses_nothing_when_one_node_of_each_engine_dies(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    command = [sys.executable, "-m", "tests.support.fault_matrix", "--topology", "cluster"]
    done = subprocess.run(
        [*command, "--events", "2400", "--only", *ROWS, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = out.read_text().splitlines()
    assert len(lines) == 2 + len(ROWS)
    for row, line in zip(ROWS, lines[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row
        sent, applied, lost, doubled, state = cells[1], cells[2], cells[5], cells[6], cells[7]
        assert (sent, applied, lost, doubled, state) == ("2400", "2400", "0", "0", "0"), line
        checked, differ = cells[8].split()
        assert int(checked) > 0 and differ == "(0)", line
        assert cells[9] == "end" and cells[11] == "0", line
