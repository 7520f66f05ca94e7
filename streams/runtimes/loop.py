"""The worker's event loop: uvloop.

A pass is thousands of Redis round trips on one thread, and asyncio's pure-Python transports
and callbacks are a good part of what each costs the worker; uvloop's are C (libuv). Measured
in alternating goals-bench runs (README, "Two levers tried"), it saved about a tenth of the
re-encoder's time a mark, within the day's drift. The benches run the worker, and the consume
ceiling it is judged against, on the same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on a uvloop loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
