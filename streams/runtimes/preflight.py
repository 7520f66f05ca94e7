"""Preflight: can a worker with these settings reach everything it needs, and load its model?

Each dependency is asked once, in its own daemon thread, under one deadline: a broker that never
answers costs the deadline, not kafka-python's bootstrap retries (about 40 s), and a hung call
cannot hold the process at exit. Every verdict is one line an operator can act on; secrets
from the settings never appear in it, even when a client library echoes them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import (
    CoordinatorLoadInProgressError,
    CoordinatorNotAvailableError,
    GroupAuthorizationFailedError,
    KafkaError,
    NotCoordinatorError,
    TopicAuthorizationFailedError,
)
from pydantic import BaseModel, SecretStr

from encoders.registry import ModelRegistry
from state import RedisState, VectorStoreUnavailable
from streams.runtimes.wiring import redis_client
from streams.settings import Settings
from streams.vectors.store import vector_store

OK, FAILED, SKIPPED = "ok", "FAIL", "--"
CLIENT_LOGGERS = ("kafka", "qdrant_client", "httpx", "state.retry")  # the verdicts say it all


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # OK, FAILED or SKIPPED (not configured, nothing to check)
    detail: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def line(self) -> str:
        return f"{self.name:<9} {self.status:<4}  {self.detail}  ({self.seconds:.2f}s)"


class Skip(Exception):
    """A dependency that is not configured: nothing to check, and not a failure."""


def reachable(servers: str, timeout_s: float) -> None:
    """A TCP connection to one of `servers` (host:port, comma-separated), or an error naming
    why none answers: kafka-python only says it was "unable to bootstrap"."""
    why = []
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
            return
        except socket.gaierror:
            why.append(f"{server}: unknown host")
        except ConnectionRefusedError:
            why.append(f"{server}: connection refused")
        except (TimeoutError, OSError) as exc:
            why.append(f"{server}: {exc.strerror or 'no answer'}")
    raise ConnectionError("; ".join(why))


def check_kafka(settings: Settings, timeout_s: float) -> str:
    """Bootstrap, then the topics a worker reads (it creates them itself when absent)."""
    reachable(settings.kafka.bootstrap_servers, timeout_s)
    try:
        consumer = KafkaConsumer(
            **settings.kafka.client_kwargs(),
            group_id=None,
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
    except KafkaError as exc:
        cause = _kafka_cause(settings)
        if cause is None:
            raise
        raise ConnectionError(cause) from exc
    try:
        topics = consumer.topics()
        found = []
        for topic in (settings.topics.engagements, settings.topics.items):
            parts = consumer.partitions_for_topic(topic) if topic in topics else None
            found.append(f"{topic} x{len(parts)}" if parts else f"{topic} absent")
    finally:
        consumer.close()
    groups = check_groups(settings, timeout_s)
    return f"{settings.kafka.bootstrap_servers}: {', '.join(found)}; {groups}"


def check_groups(settings: Settings, timeout_s: float) -> str:
    """May this user read the worker's topics and join its consumer groups? Denied, a worker
    would wait in the join forever (Faust) or fail only after its first poll: asked here, it is
    one line at start."""
    group = settings.kafka.group_id
    admin = KafkaAdminClient(
        **settings.kafka.client_kwargs(), request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        for topic in (settings.topics.engagements, settings.topics.items):
            (found,) = admin.describe_topics([topic])
            if found.get("error_code") == TopicAuthorizationFailedError.errno:
                raise PermissionError(
                    f"topic {topic}: not authorised (the user needs READ on it, WRITE on its "
                    "dead-letter topic, and CREATE on both where they do not exist yet)"
                )
        for name in (group, f"{group}.catalog"):
            try:
                admin.list_group_offsets([name])
            except GroupAuthorizationFailedError as exc:
                raise PermissionError(
                    f"consumer group {name}: not authorised (the user needs READ on the groups "
                    f"{group} and {group}.catalog)"
                ) from exc
            except (
                CoordinatorNotAvailableError,
                CoordinatorLoadInProgressError,
                NotCoordinatorError,
            ):  # the group's coordinator is (re)starting or moving, as after a broker's crash:
                # the worker's own join waits for it; the access question is left to the join
                return f"groups {group}(.catalog): coordinator starting"
    finally:
        admin.close()
    return f"groups {group}(.catalog) allowed"


def check_redis(settings: Settings, _timeout_s: float) -> str:
    async def ping() -> str:
        client = redis_client(settings.redis)
        try:
            await client.ping()
            # may this user run the state scripts on the prefix's keys? (a NOPERM names it)
            await RedisState(client, settings.state, settings.redis.key_prefix).check_access()
            try:
                info = await client.info("server")
            except Exception:  # an ACL user may PING without INFO: the worker needs neither
                return "PING answered, scripts allowed"
            return f"redis {info.get('redis_version', '?')}, scripts allowed"
        finally:
            await client.aclose()

    r = settings.redis
    where = f"cluster {','.join(r.cluster_nodes)}" if r.cluster_nodes else r.url
    return f"{where}: {asyncio.run(ping())}"


def check_qdrant(settings: Settings, timeout_s: float) -> str:
    if settings.qdrant.url is None:
        raise Skip(f"embedded at {settings.qdrant.path}: no server to ask (the worker locks it)")
    serving = _ask_peers(settings)
    plain = settings.qdrant.api_key is not None and settings.qdrant.url.startswith("http://")
    return (
        f"{settings.qdrant.url}: "
        + (f"aliases serve {serving}" if serving else "answers; nothing served yet")
        + ("; its API key travels over plain HTTP" if plain else "")
    )


def _ask_peers(settings: Settings) -> str | None:
    """The serving version, asked of each peer of a cluster in turn until one answers."""
    once = settings.retry.model_copy(update={"store_unavailable_after_s": 0.001})  # ask once
    peers = str(settings.qdrant.url).split(",")
    for n, peer in enumerate(peers, 1):
        qdrant = settings.qdrant.model_copy(update={"url": peer.strip()})
        store = vector_store(settings.model_copy(update={"retry": once, "qdrant": qdrant}))
        try:
            with warnings.catch_warnings():  # said below, once, instead of a warning per client
                warnings.filterwarnings("ignore", "Api key is used with an insecure connection")
                return store.serving_version()
        except VectorStoreUnavailable:
            if n == len(peers):
                raise
        finally:
            store.close()
    return None


def check_registry(settings: Settings, _timeout_s: float) -> str:
    root = settings.models.registry
    if root is None:
        raise Skip("no registry configured: the worker ingests without vectors")
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (SAGESTREAM_MODELS__REGISTRY)")
    registry = ModelRegistry(root)
    promoted = registry.promoted()
    versions = registry.list()
    count = f"{len(versions)} version{'' if len(versions) == 1 else 's'}"
    if promoted is None:
        return f"{root}: {count}, none promoted (the worker ingests only)"
    return f"{root}: {count}, {promoted} promoted"


def check_model(settings: Settings, _timeout_s: float) -> str:
    """Load the promoted version the way a worker does: checksums, dims, a smoke inference."""
    root = settings.models.registry
    promoted = ModelRegistry(root).promoted() if root is not None and root.is_dir() else None
    if root is None or promoted is None:
        raise Skip("no promoted model to load")
    bundle = ModelRegistry(root).load(promoted, settings.models.threads)
    return f"{promoted} loads: {bundle.dim}-d vectors"


CHECKS: dict[str, Callable[[Settings, float], str]] = {
    "kafka": check_kafka,
    "redis": check_redis,
    "qdrant": check_qdrant,
    "registry": check_registry,
    "model": check_model,
}


# error names in kafka-python's lines that say why a bootstrap failed, most telling first
CAUSES = (
    "AuthenticationFailed",
    "AuthorizationFailed",
    "CERTIFICATE_VERIFY_FAILED",
    "SSLError",
    "UnsupportedSaslMechanism",
    "IllegalSaslState",
)


class _ClientErrors(logging.Handler):
    """Keeps kafka-python's connection errors while the checks run: the exception it raises
    says only "unable to bootstrap"; the cause (a refused password, an untrusted certificate)
    is in a log line.

    A refused SASL password does not always leave that line: the broker answers the last
    authentication request with the error and closes the connection, and the client often
    reads the close first ("socket disconnected"). So the connection's request lines are
    followed too: a connection lost while an authentication request awaits its answer is a
    refusal of the credentials.
    """

    CONNECTION = "kafka.net.connection"  # its DEBUG lines name each request and response

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.authenticating = False
        self.dropped_while_authenticating = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.lines.append(message)
        if record.name != self.CONNECTION:
            return
        if "SaslAuthenticateRequest" in message:
            self.authenticating = True
        elif "SaslAuthenticateResponse" in message:
            self.authenticating = False
        elif "Connection lost" in message and self.authenticating:
            self.authenticating = False
            self.dropped_while_authenticating += 1

    def cause(self) -> str | None:
        """The most telling error seen, without the connection's own description."""
        for marker in CAUSES:
            for line in self.lines:
                if marker in line:  # from the error on: "[Error 58] SaslAuthentication..."
                    return line[line.find("[Error") :] if "[Error" in line else line
        if self.dropped_while_authenticating:
            return (
                "Authentication failed: the broker closed the connection on the SASL "
                "credentials (a wrong user name or password, or no credentials for the "
                "mechanism)"
            )
        return None

    def reset(self) -> None:
        self.lines.clear()
        self.authenticating, self.dropped_while_authenticating = False, 0


_kafka_errors = _ClientErrors()


@contextmanager
def clients_quiet() -> Iterator[None]:
    """Silence the clients' own retry and connection lines while the checks run (kafka-python's
    errors are kept for the verdict, see `_ClientErrors`)."""
    loggers = [logging.getLogger(name) for name in CLIENT_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    kafka = logging.getLogger("kafka")
    kafka.setLevel(logging.ERROR)
    kafka.propagate = False
    kafka.addHandler(_kafka_errors)
    connection = logging.getLogger(_ClientErrors.CONNECTION)
    connection_level = connection.level
    connection.setLevel(logging.DEBUG)  # to the collector only: "kafka" propagates no further
    try:
        yield
    finally:
        kafka.removeHandler(_kafka_errors)
        connection.setLevel(connection_level)
        _kafka_errors.reset()
        for logger, (level, propagate) in zip(loggers, saved, strict=True):
            logger.setLevel(level)
            logger.propagate = propagate


def preflight(
    settings: Settings, timeout_s: float = 5.0, names: Sequence[str] | None = None
) -> list[Verdict]:
    """Run the checks (all, or `names`) at once; each has `timeout_s` (a model load, four
    times that)."""
    started = time.monotonic()
    chosen = {name: CHECKS[name] for name in (names or CHECKS)}
    runs = {name: _Run(name, check, settings, timeout_s) for name, check in chosen.items()}
    verdicts = []
    for name, run in runs.items():
        slack = 4 * timeout_s if name == "model" else timeout_s + 1  # their own error first
        early = _early_causes.get(name)
        while run.thread.is_alive() and time.monotonic() < started + slack:
            run.thread.join(0.05)
            if early is not None and (cause := early(settings)) is not None:
                run.fail_early(cause)  # the client would retry to its deadline: no need
                break
        verdicts.append(run.verdict(slack, _secrets(settings)))
    return verdicts


def _kafka_cause(settings: Settings) -> str | None:
    cause = _kafka_errors.cause()
    return None if cause is None else f"{settings.kafka.security_protocol}: {cause}"


# a cause a check's client logs before it gives up (kafka-python retries a refused password
# until its bootstrap deadline)
_early_causes: dict[str, Callable[[Settings], str | None]] = {"kafka": _kafka_cause}


class _Run:
    def __init__(
        self,
        name: str,
        check: Callable[[Settings, float], str],
        settings: Settings,
        timeout_s: float,
    ) -> None:
        self.name = name
        self._started = time.monotonic()
        self._outcome: tuple[str, str, float] | None = None

        def run() -> None:
            try:
                status, detail = OK, check(settings, timeout_s)
            except Skip as skip:
                status, detail = SKIPPED, str(skip)
            except Exception as exc:
                status, detail = FAILED, _explain(exc)
            self._outcome = (status, detail, time.monotonic() - self._started)

        self.thread = threading.Thread(target=run, name=f"check-{name}", daemon=True)
        self.thread.start()

    def fail_early(self, cause: str) -> None:
        self._outcome = (FAILED, cause, time.monotonic() - self._started)

    def verdict(self, limit_s: float, secrets: list[str]) -> Verdict:
        if self._outcome is None:
            return Verdict(self.name, FAILED, f"no answer within {limit_s:g}s", limit_s)
        status, detail, seconds = self._outcome
        for secret in secrets:
            detail = detail.replace(secret, "***")
        return Verdict(self.name, status, detail, seconds)


def _explain(exc: BaseException) -> str:
    """The exception and its first cause, on one line: the cause names what went wrong."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return " ".join(text.split())[:400]


def _secrets(settings: Settings) -> list[str]:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                found.append(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))

    walk(settings)
    return found
