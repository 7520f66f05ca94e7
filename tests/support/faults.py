"""Crash and outage injection for the reliability tests, through the worker's seams.

`python -m tests.support.faults worker ...` is the real `sagestream worker` with the seams a
`FaultPlan` (in ``SAGESTREAM_TEST_FAULTS``) describes; `harness.run_worker(..., faults=plan)`
starts it. A point fires on the n-th time the pipeline passes it: ``kill`` is a SIGKILL of the
worker itself (a power cut: nothing after it runs), ``raise`` is an unexpected exception (a bug),
which must never let the runtime ack or commit the batch. ``store_outage_s`` makes the vector
store's client refuse every call for that long from its first upsert, beneath the store's retry
loop, so the retries, the unavailable deadline and the worker's pause all run for real.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from qdrant_client import QdrantClient

from streams.cli import main
from streams.seams import Point, Seams

ENV = "SAGESTREAM_TEST_FAULTS"
log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised by a `raise` plan; nothing may treat it as transient."""


@dataclass(frozen=True)
class FaultPlan:
    point: Point | None = None
    after: int = 1  # fire on this pass of the point
    action: Literal["kill", "raise"] = "kill"
    store_outage_s: float = 0.0

    def to_env(self) -> dict[str, str]:
        return {ENV: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls) -> FaultPlan:
        return cls(**json.loads(os.environ.get(ENV, "{}")))

    def seams(self) -> Seams:
        passes = {"n": 0}

        def at(point: Point) -> None:
            if point != self.point:
                return
            passes["n"] += 1
            if passes["n"] != self.after:
                return
            log.warning("fault injected at %s (pass %d): %s", point, passes["n"], self.action)
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"injected at {point}")

        def qdrant(client: QdrantClient) -> QdrantClient:
            if self.store_outage_s <= 0:
                return client
            return OutageClient(client, self.store_outage_s)  # type: ignore[return-value]

        return Seams(at=at, qdrant=qdrant)


class OutageClient:
    """A Qdrant client that refuses every call for `outage_s` from its first upsert."""

    def __init__(self, client: QdrantClient, outage_s: float) -> None:
        self._client = client
        self._outage_s = outage_s
        self._began: float | None = None

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "http":  # the store's upserts to a server go through the raw REST client
            self._refuse("upsert")
            return attr
        if not callable(attr) or name == "close":
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._refuse(name)
            return attr(*args, **kwargs)

        return call

    def _refuse(self, name: str) -> None:
        """Raise during the outage, which the first upsert starts."""
        now = time.monotonic()
        if self._began is None and name == "upsert":
            self._began = now
            log.warning("fault injected: vector store down for %.1fs", self._outage_s)
        if self._began is not None and now - self._began < self._outage_s:
            raise ConnectionRefusedError(f"injected outage during {name}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], seams=FaultPlan.from_env().seams()))
