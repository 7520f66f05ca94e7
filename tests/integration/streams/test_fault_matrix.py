"""The fault matrix command (tests/support/fault_matrix.py) runs on its own stack and judges
its rows; the full table is in the README."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[3]


def test_the_fault_matrix_runs_faults_and_judges_them(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    rows = ["Redis CLIENT KILL", "poison records"]
    command = [sys.executable, "-m", "tests.support.fault_matrix", "--events", "600"]
    done = subprocess.run(
        [*command, "--only", *rows, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("| fault | sent | applied |") and len(lines) == 4
    poison = next(line for line in lines if line.startswith("| poison records |"))
    cells = [c.strip() for c in poison.strip("|").split("|")]
    assert cells[1:8] == ["600", "600", "3", "12 (12)", "0", "0", "0"]
