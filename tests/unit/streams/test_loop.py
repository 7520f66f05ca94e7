"""The worker's event loop."""

from __future__ import annotations

import asyncio

import uvloop

from streams.runtimes.loop import run_loop


def test_the_worker_runs_on_uvloop_and_gets_its_result_back() -> None:
    async def main() -> str:
        await asyncio.sleep(0)
        found = await asyncio.to_thread(lambda: "from a thread")  # onnxruntime and Qdrant calls
        return f"{type(asyncio.get_running_loop()).__module__}: {found}"

    assert run_loop(main()) == f"{uvloop.Loop.__module__}: from a thread"
