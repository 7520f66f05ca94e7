"""One typed settings object, built once at the entry point and passed down.

Values come from, highest first: environment variables (`SAGESTREAM_`, nested with `__`, e.g.
`SAGESTREAM_KAFKA__BOOTSTRAP_SERVERS`), then an optional TOML file (`--config` or
`SAGESTREAM_CONFIG_FILE`), then the defaults below. Secrets are `SecretStr`: they print as stars
in logs and reprs, and URLs that carry a password are refused so one cannot leak that way.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from state import StateConfig
from state.retry import Backoff

CONFIG_FILE_ENV = "SAGESTREAM_CONFIG_FILE"


class _Section(BaseModel):
    # A refused value is not echoed: it may be a password (a URL with one, a numeric secret).
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _refuse_password_in_url(url: str) -> str:
    if urlsplit(url).password:
        raise ValueError("put the password in its own setting (…__PASSWORD), not in the URL")
    return url


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "sagestream"
    group_id: str = "sagestream-ingest"
    # A crashed worker's partitions move to the others after this long (Faust's default is 60 s).
    session_timeout_s: float = Field(default=10.0, gt=0)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)

    @model_validator(mode="after")
    def _sasl_complete(self) -> Self:
        """SASL needs its mechanism, and credentials need SASL: either half alone would be
        dropped silently by the clients, and the broker's refusal would come 40 s later."""
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(
                f"{self.security_protocol} needs sasl_mechanism (PLAIN, SCRAM-SHA-...)"
            )
        credentials = self.sasl_username is not None or self.sasl_password is not None
        if credentials and not sasl:
            raise ValueError(
                f"SASL credentials are set but security_protocol is {self.security_protocol}: "
                "choose SASL_PLAINTEXT or SASL_SSL"
            )
        return self

    def member_kwargs(self) -> dict[str, int]:
        """aiokafka's group membership timing, for every group a worker joins: the catalog
        consumer's partitions must leave a dead worker as fast as its engagement partitions."""
        return {
            "session_timeout_ms": int(self.session_timeout_s * 1000),
            "heartbeat_interval_ms": int(self.heartbeat_interval_s * 1000),
        }

    def client_kwargs(self) -> dict[str, Any]:
        """Connection options shared by kafka-python and aiokafka (their names agree)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.sasl_mechanism:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = str(value)
        return kwargs

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """aiokafka takes an SSL context where kafka-python takes file names."""
        kwargs = self.client_kwargs()
        files = {
            name: kwargs.pop(name)
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
            if name in kwargs
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=files.get("ssl_cafile"),
                certfile=files.get("ssl_certfile"),
                keyfile=files.get("ssl_keyfile"),
            )
        return kwargs


class TopicSettings(_Section):
    engagements: str = "engagements"
    items: str = "items"
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)
    # Copies that must hold a record before an acks=all write succeeds; None: the broker's
    # default (min.insync.replicas). 2 of 3 survives one broker down without refusing writes.
    min_insync_replicas: int | None = Field(default=None, ge=1)
    dlq_suffix: str = ".dlq"

    def dlq(self, topic: str) -> str:
        return f"{topic}{self.dlq_suffix}"


class RedisSettings(_Section):
    url: str = "redis://127.0.0.1:16379/0"
    # A Redis Cluster instead of `url`'s server: some of its nodes as host:port (the client
    # learns the rest and follows failovers). Every script call stays in one slot.
    cluster_nodes: tuple[str, ...] = ()
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    tls_ca_file: Path | None = None
    key_prefix: str = "ss"
    # Replicas that must hold a write (Redis WAIT) before the worker commits the offsets it
    # came from: with 1, a master's crash and failover lose no committed batch. 0 trusts the
    # master's AOF alone (a single server, or a cluster that may lose its last second).
    wait_replicas: int = Field(default=0, ge=0)
    wait_timeout_s: float = Field(default=2.0, gt=0)

    _check_url = field_validator("url")(_refuse_password_in_url)

    @field_validator("cluster_nodes")
    @classmethod
    def _host_ports(cls, nodes: tuple[str, ...]) -> tuple[str, ...]:
        for node in nodes:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"cluster node {node!r} is not host:port")
        return nodes


class QdrantSettings(_Section):
    """A server by `url` (what production runs), else embedded mode at `path` (one process
    only: it locks the folder). The collection settings apply to collections created later.

    A cluster's peers are comma-separated in `url`: the client talks to the first and moves to
    the next when one stops answering. New collections get `shard_number` shards of
    `replication_factor` copies; a write is acknowledged once `write_consistency_factor` copies
    of its shard hold it (1 with 2 copies: one peer may be down)."""

    url: str | None = None
    path: Path = Path("var/qdrant")
    api_key: SecretStr | None = None
    collection_prefix: str = ""  # a name part before every collection and alias
    prefer_grpc: bool = False
    grpc_port: int = Field(default=6334, ge=1, le=65535)
    hnsw_m: int = Field(default=16, ge=2)
    hnsw_ef_construct: int = Field(default=100, ge=4)
    on_disk: bool = False
    search_ef: int | None = Field(default=None, ge=1)  # query beam of `sagestream query` reads
    upsert_batch: int = Field(default=256, ge=1)
    write_concurrency: int = Field(default=4, ge=1)  # upsert requests in flight (server only)
    shard_number: int | None = Field(default=None, ge=1)  # None: the server's default
    replication_factor: int | None = Field(default=None, ge=1)
    write_consistency_factor: int | None = Field(default=None, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is not None:
            for peer in url.split(","):
                _refuse_password_in_url(peer.strip())
        return url


class IngestSettings(_Section):
    # The batch runtime takes up to this many events of each partition into one batch, so a
    # backlog keeps every shard's script busy at once; Faust's take() counts all partitions.
    batch_max: int = Field(default=2000, ge=1)
    batch_within_s: float = Field(default=0.25, gt=0)


class RetrySettings(_Section):
    """The one retry policy (state/retry.py) for every Redis, Kafka and Qdrant call of a worker.

    Ingest retries for as long as it takes (its waiting is the backpressure); a vector store
    call gives up after `store_unavailable_after_s`, and the worker pauses consumption until the
    store answers again."""

    initial_s: float = Field(default=0.2, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    store_unavailable_after_s: float = Field(default=30.0, gt=0)

    def backoff(self) -> Backoff:
        return Backoff(self.initial_s, self.max_s)


class ModelSettings(_Section):
    """Where the worker finds its encoders; no registry (or nothing promoted) means ingest only."""

    registry: Path | None = None
    threads: int = Field(default=1, ge=1)  # onnxruntime intra-op threads
    poll_s: float = Field(default=10.0, gt=0)  # how often a worker looks for a newly promoted one
    backfill_page: int = Field(default=500, ge=1)  # entities per backfill step between passes


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)  # 0: any free port (logged at start)
    # /healthz turns 503 when the event loop has not beaten for this long, or when the worker
    # has not finished starting (joined, wired, model loaded) this long after it began.
    stale_after_s: float = Field(default=30.0, gt=0)
    startup_s: float = Field(default=300.0, gt=0)


class ReencodeSettings(_Section):
    """The re-encode scheduler (streams/vectors/reencoder.py): how long marks coalesce, how much
    one pass drains and encodes, and when a changed neighbour list is worth a new item vector."""

    window_s: float = Field(default=0.25, gt=0)  # marks coalesce this long between passes
    marks_per_shard: int = Field(default=2000, ge=1)  # marks read per shard and kind per pass
    encode_batch: int = Field(default=512, ge=1)  # rows per onnxruntime call
    # Relative change of a neighbour weight (or of the degree) that re-encodes an item whose
    # top-K neighbour ids did not change; 0 re-encodes on every change (exact mode, tests).
    item_min_change: float = Field(default=0.1, ge=0)
    content_cache: int = Field(default=50_000, ge=0)  # content vectors kept between passes
    # Neighbour lists (one per item and shard, up to k_max entries) kept between passes and
    # re-read only when their version moved (state/list_cache.py); about 0.5-1 KB each. Size it
    # to the lists a live stream dirties (items x partitions, for the items engaged within a
    # few minutes): once those no longer fit, every pass reads more lists in full. 0: off.
    list_cache: int = Field(default=100_000, ge=0)
    # Fan-out: users marked per pass because an item they hold was re-encoded (the newest
    # holders first, shards taking turns); those over the bound are dropped and counted. 0: off.
    fanout_per_pass: int = Field(default=10_000, ge=0)
    # 1 - cosine between an item's new vector and the one its holders were last rebuilt from,
    # below which they are not rebuilt (their stored vectors stand); 0 rebuilds them on every
    # re-encode (exact mode, tests). Most neighbour-driven re-encodes move a vector by ~1e-5.
    fanout_min_change: float = Field(default=1e-3, ge=0, lt=2)
    # Backpressure: consumption pauses while the vector store is failing, or while more marks
    # than this wait (dirty backlog, read every few seconds), and resumes once below half of it.
    max_backlog: int = Field(default=200_000, ge=1)
    # Catch-up (streams/runtimes/catchup.py): while the worker applies a backlog (a partition
    # filled its batch or left more than a batch waiting), passes wait for the ingest, at most
    # this long after the previous pass began, so a backlog is encoded once rather than pass by
    # pass. 0: never wait.
    catchup_hold_s: float = Field(default=5.0, ge=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SAGESTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        hide_input_in_errors=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    redis: RedisSettings = RedisSettings()
    qdrant: QdrantSettings = QdrantSettings()
    state: StateConfig = StateConfig()
    ingest: IngestSettings = IngestSettings()
    metrics: MetricsSettings = MetricsSettings()
    retry: RetrySettings = RetrySettings()
    models: ModelSettings = ModelSettings()
    reencode: ReencodeSettings = ReencodeSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_serializer("state")
    def _plain_state(self, state: StateConfig) -> dict[str, Any]:
        """StateConfig keeps its weights in a read-only mapping, which JSON cannot hold."""
        return {k: _plain(v) for k, v in vars(state).items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file, so a deployment can override one value of a shared file.
        return env_settings, init_settings

    @classmethod
    def load(cls, path: Path | None = None, **overrides: Any) -> Self:
        """Read the optional TOML file, then let the environment override it."""
        path = path or (
            Path(os.environ[CONFIG_FILE_ENV]) if CONFIG_FILE_ENV in os.environ else None
        )
        values: dict[str, Any] = tomllib.loads(path.read_text()) if path else {}
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables (JSON per section), for child processes.

        Secrets are not among them: an environment is shown by ``ps e``, kept in crash reports
        and copied into every grandchild. They go to a file only this user can read, named by
        `SAGESTREAM_CONFIG_FILE` (the environment's sections are merged over it), removed when
        this process exits.
        """
        env: dict[str, str] = {}
        secrets: dict[str, dict[str, str]] = {}
        for section in type(self).model_fields:
            value = getattr(self, section)
            if not hasattr(value, "__dict__"):
                env[f"SAGESTREAM_{section.upper()}"] = str(value)
                continue
            fields = {}
            hidden = _hidden_fields(value)
            for name, field in vars(value).items():
                if isinstance(field, SecretStr):
                    secrets.setdefault(section, {})[name] = field.get_secret_value()
                elif name in hidden and field is not None:
                    secrets.setdefault(section, {})[name] = str(field)
                elif not name.startswith("_"):
                    fields[name] = _plain(field)
            env[f"SAGESTREAM_{section.upper()}"] = json.dumps(fields)
        if secrets:
            env[CONFIG_FILE_ENV] = str(_private_file(_toml(secrets)))
        return env


def _hidden_fields(section: object) -> set[str]:
    """A dataclass section's fields kept out of its repr (the stack's passwords): secrets too."""
    if not dataclasses.is_dataclass(section):
        return set()
    return {f.name for f in dataclasses.fields(section) if not f.repr}


def _toml(sections: Mapping[str, Mapping[str, str]]) -> str:
    # a JSON string without ASCII escapes is a TOML basic string (control characters as \uXXXX)
    return "".join(
        f"[{section}]\n"
        + "".join(f"{k} = {json.dumps(v, ensure_ascii=False)}\n" for k, v in kv.items())
        for section, kv in sections.items()
    )


_private_dir: Path | None = None


def _private_file(text: str) -> Path:
    """A file of `text` in this process's own 0700 directory, deleted at exit."""
    global _private_dir
    if _private_dir is None:
        _private_dir = Path(tempfile.mkdtemp(prefix="sagestream-"))  # 0700
        atexit.register(shutil.rmtree, _private_dir, True)
    path = _private_dir / f"{hashlib.sha256(text.encode()).hexdigest()[:16]}.toml"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # the same secrets, written before
        return path
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Path):
        return str(value)
    return value
