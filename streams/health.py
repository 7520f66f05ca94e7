"""The worker's health on its metrics port, for probes: `/healthz` (liveness) and `/readyz`.

Liveness asks one thing a restart can cure: does the event loop still turn? A task beats once a
second; a loop blocked or wedged stops beating and `/healthz` turns 503 after `stale_after_s`. A
worker that never finishes starting (a group it may not join, a broker that never answers) is not
live either once `startup_s` has passed, so an orchestrator restarts it rather than wait forever.

Readiness adds: the worker has connected its consumer, Redis and the dead-letter producer and
loaded its model (wiring done), and it is not shutting down. A worker paused by backpressure stays
ready: pausing is it doing its job, and restarting it would only lose its place; the body says
why it is paused, and the `consumption_paused` alert watches for how long.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from streams.exceptions import ConfigError

log = logging.getLogger(__name__)
BEAT_EVERY_S = 1.0
Details = Callable[[], dict[str, Any]]
StartResponse = Callable[..., Any]


def _nothing() -> dict[str, Any]:
    return {}


class Health:
    """Set by the runtime (`started`, `stopping`, the heartbeat), read by the probe endpoints."""

    def __init__(
        self,
        stale_after_s: float = 30.0,
        startup_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.startup_s = startup_s
        self._clock = clock
        self._born = clock()
        self._beat_at: float | None = None
        self._started = False
        self._stopping = False
        self.details: Details = _nothing  # what /readyz reports besides its verdict

    def beat(self) -> None:
        self._beat_at = self._clock()

    def started(self, details: Details = _nothing) -> None:
        self._started, self.details = True, details
        self.beat()

    def stopping(self) -> None:
        self._stopping = True

    def live(self) -> tuple[bool, str]:
        now = self._clock()
        if self._beat_at is None:
            waited = now - self._born
            if waited > self.startup_s:
                return False, f"not started after {waited:.0f}s"
            return True, "starting"
        age = now - self._beat_at
        if age > self.stale_after_s:
            return False, f"event loop silent for {age:.0f}s"
        return True, "alive"

    def ready(self) -> tuple[bool, str]:
        live, why = self.live()
        if not live:
            return False, why
        if self._stopping:
            return False, "stopping"
        if not self._started:
            return False, "starting"
        return True, "ready"

    async def heartbeat(self, every_s: float = BEAT_EVERY_S) -> None:
        """Beat until cancelled; run as a task on the worker's own loop."""
        while True:
            self.beat()
            await asyncio.sleep(every_s)


def start_heartbeat(health: Health) -> Callable[[], None]:
    """Start beating on the running loop; returns what stops it."""
    task = asyncio.get_running_loop().create_task(health.heartbeat(), name="health-heartbeat")

    def stop() -> None:
        task.cancel()

    return stop


def probe_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    """One WSGI app: the two probe paths, and Prometheus' exposition for everything else."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, why = health.live()
            return _reply(start_response, ok, {"status": why})
        if path == "/readyz":
            ok, why = health.ready()
            body = {"status": why, **(health.details() if ok else {})}
            return _reply(start_response, ok, body)
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


def _reply(start_response: StartResponse, ok: bool, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body, sort_keys=True).encode() + b"\n"
    status = "200 OK" if ok else "503 Service Unavailable"
    start_response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
    return [payload]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the worker's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the worker's own log lines."""


def serve(registry: CollectorRegistry, health: Health, host: str, port: int) -> int:
    """Serve /metrics, /healthz and /readyz on `port` (0: any free port, so workers can share a
    host) from a daemon thread; returns the port bound. A taken port is a clear error."""
    try:
        server = make_server(
            host, port, probe_app(registry, health), _Server, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}): choose another "
            "port (SAGESTREAM_METRICS__PORT), or 0 for any free one"
        ) from exc
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    bound = int(server.server_port)
    log.info("metrics, /healthz and /readyz on http://%s:%d", host, bound)
    return bound
