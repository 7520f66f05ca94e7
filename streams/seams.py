"""Where a test harness may act on a running worker. Production wires `NO_SEAMS`: no-ops.

The crash and outage tests (tests/support/faults.py) pass their own `Seams` into the wiring, so
no product module knows about kills, injected exceptions or unreachable stores. A batch passes its
points in this order: after_dead_letters, after_state_write, before_commit; the updater passes
after_vector_write once per store write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from qdrant_client import QdrantClient

Point = Literal["after_dead_letters", "after_state_write", "after_vector_write", "before_commit"]


def _nothing(_point: Point) -> None:
    return None


def _same(client: QdrantClient) -> QdrantClient:
    return client


@dataclass(frozen=True)
class Seams:
    at: Callable[[Point], None] = _nothing  # called as the pipeline passes each point
    qdrant: Callable[[QdrantClient], QdrantClient] = _same  # wraps the vector store's client


NO_SEAMS = Seams()
