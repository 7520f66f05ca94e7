"""Where the tests find MovieLens 100K: read in place from the shared folder, never copied."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ml100k() -> Path:
    candidates = [
        Path(os.environ["SAGESTREAM_ML100K"]) if "SAGESTREAM_ML100K" in os.environ else None,
        REPO.parent / "shared" / "datasets" / "ml-100k",
        Path("/work/shared/datasets/ml-100k"),
    ]
    for path in candidates:
        if path is not None and (path / "u.data").exists():
            return path
    raise FileNotFoundError("MovieLens 100K not found: set SAGESTREAM_ML100K to its folder")


ML100K = ml100k()
