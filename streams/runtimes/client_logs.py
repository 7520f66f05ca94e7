"""The Kafka clients' repeated lines, said once per window with a count.

During a broker outage aiokafka logs every reconnect attempt, metadata refresh and fetch
failure at ERROR: about a hundred lines a second, in which the one line that matters (when it
started, whether it is over) drowns. Each distinct message (logger and format string) passes
once per `window_s`; the next one to pass says how many were held back. Nothing is lost that an
operator reads: the first line of an outage passes at once, and its end shows as the absence of
new ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

CLIENT_PREFIXES = ("aiokafka", "kafka")
# INFO of these is per request or per rebalance step: an httpx line per Qdrant call drowned the
# naive bench's log in thousands of lines
CHATTY_LOGGERS = (*CLIENT_PREFIXES, "faust", "mode", "httpx")


def quiet_chatty_loggers() -> None:
    """Warnings and worse only from the client libraries, in every process of ours that logs."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class RepeatFilter(logging.Filter):
    """Lets each (logger, message format) through once per `window_s`, then with a count."""

    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s, self.clock = window_s, clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # last passed, held back
        self._lock = threading.Lock()  # kafka-python logs from its own thread

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), self.clock()
        with self._lock:
            passed, held = self._seen.get(key, (float("-inf"), 0))
            if now - passed < self.window_s:
                self._seen[key] = (passed, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like it in the last {self.window_s:g}s)"
        return True


_installed = RepeatFilter()


def quiet_client_repeats(repeats: RepeatFilter = _installed) -> None:
    """Put `repeats` on every logger of the Kafka clients imported so far (a filter on a logger
    sees only its own records, so each module's logger gets it). Idempotent."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not name.startswith(CLIENT_PREFIXES):
            continue  # a placeholder (a package with no logger of its own), or not a client
        if repeats not in logger.filters:
            logger.addFilter(repeats)
