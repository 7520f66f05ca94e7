"""The worker's garbage-collector policy: a streaming pass should not stop for the start-up heap.

CPython's full collection walks every tracked object, and most of a started worker's are its
start-up's, alive until exit: 136,000 after the worker's imports alone, 568,000 in the goals
bench's process (which also trained a model with torch). With the default thresholds (700, 10,
10) that process ran a full collection every six passes or so at 2,000 events/s, 0.3 s each, with
ingest and the pass stopped behind it (per-pass timings through `gc.callbacks`, issue 11's note).
Freezing what start-up made takes it out of every later collection (0.05 s each there), and a
young generation of 10,000 lets a pass's short-lived replies and rows die before they are examined
or promoted, so full collections became rare (one in 147 passes).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default is 700)


def settle_start_up_heap() -> None:
    """Collect once, then exclude every object alive now from later collections.

    Call it when the worker is wired, before the first batch. Safe to call again: a worker
    restarted in the same process freezes what was added since. An object frozen here is still
    freed by its reference count; only a cycle among frozen objects is never collected.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
