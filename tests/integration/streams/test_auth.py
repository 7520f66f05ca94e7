"""Authenticated infrastructure, as production runs it: Kafka over SASL_SSL (SCRAM-SHA-512) with
ACLs, Redis over TLS with ACL users, Qdrant with an API key (deploy/secure.py starts them).

Both runtimes apply a stream as a user holding only the ACLs a worker needs; a wrong password, a
consumer group without an ACL, a Redis user without script permission and a missing Qdrant key
each stop the worker at start (exit 69) with a line naming the cause, before it consumes
anything (so no dead letter is sent twice by a worker that restarts into the same refusal);
no secret appears in any log line.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    KafkaAdminClient,
    ResourcePattern,
    ResourceType,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from deploy import secure
from deploy.stack import StackConfig, purge, up
from state import RedisState
from streams.cli.worker import EXIT_UNAVAILABLE
from streams.devtools.generate import GeneratorConfig, generate_events
from streams.devtools.produce import produce_engagements
from streams.settings import Settings
from streams.wire.topics import ensure_topics
from tests.support.harness import Oracle, committed_offsets, end_offsets, mismatches, read_topic
from tests.support.harness import run_worker as run
from tests.support.services import own_stack

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

STREAM = GeneratorConfig(users=60, items=120, communities=3, events=1500, seed=21)


@pytest.fixture(scope="module")
def stack() -> Iterator[StackConfig]:
    cfg = own_stack(
        qdrant_api_key=secrets.token_urlsafe(16),
        secure=True,
        admin_password=secrets.token_urlsafe(16),
    )
    up(cfg)
    yield cfg
    purge(cfg)


class Tenant:
    """One test's names and a worker user on the secure stack, granted what a worker needs."""

    def __init__(self, stack: StackConfig, tag: str) -> None:
        self.stack, self.tag = stack, tag
        self.user, self.password = f"w-{tag}", secrets.token_urlsafe(16)
        self.redis_password = secrets.token_urlsafe(16)

    def settings(self, user: str | None = None, **sections: dict[str, Any]) -> Settings:
        """The worker's settings (the admin's with `user="admin"`); `sections` override."""
        admin = user == secure.ADMIN
        ca = str(self.stack.tls_dir / "ca.pem")
        values: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": self.stack.bootstrap_servers,
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": secure.MECHANISM,
                "sasl_username": user or self.user,
                "sasl_password": self.stack.admin_password if admin else self.password,
                "ssl_cafile": ca,
                "group_id": f"g-{self.tag}",
            },
            "topics": {"engagements": f"eng-{self.tag}", "items": f"items-{self.tag}"},
            "redis": {
                "url": self.stack.redis_url,
                "username": user or self.user,
                "password": self.stack.admin_password if admin else self.redis_password,
                "tls_ca_file": ca,
                "key_prefix": self.tag,
            },
            "qdrant": {"url": self.stack.qdrant_url, "api_key": self.stack.qdrant_api_key},
            "metrics": {"port": 0},
        }
        for section, fields in sections.items():
            values[section] = {**values[section], **fields}
        return Settings.load(**values)

    def grant_kafka(self, groups: bool = True, topics: bool = True) -> None:
        admin = KafkaAdminClient(**secure.kafka_admin_kwargs(self.stack))
        try:
            upsert = UserScramCredentialUpsertion(
                self.user, ScramMechanism.SCRAM_SHA_512, self.password
            )
            assert admin.alter_user_scram_credentials([upsert]) == {self.user: None}
            principal = f"User:{self.user}"
            # its topics (and Faust's leader topic, named after the group): read, write, create
            patterns = [
                ResourcePattern(ResourceType.TOPIC, name, ACLResourcePatternType.PREFIXED)
                for name in (f"eng-{self.tag}", f"items-{self.tag}", f"g-{self.tag}")
                if topics
            ]
            if groups:
                patterns.append(
                    ResourcePattern(
                        ResourceType.GROUP, f"g-{self.tag}", ACLResourcePatternType.PREFIXED
                    )
                )
            acls = [
                ACL(principal, "*", ACLOperation.ALL, ACLPermissionType.ALLOW, pattern)
                for pattern in patterns
            ]
            admin.create_acls(acls)
        finally:
            admin.close()

    def grant_redis(self, scripts: bool = True) -> None:
        rules = [f"~{self.tag}*", "&*", "+@all", "-@dangerous"]
        if not scripts:
            rules.append("-@scripting")
        client = redis.Redis(**secure.redis_admin_kwargs(self.stack))
        try:
            client.acl_setuser(
                self.user, enabled=True, passwords=[f"+{self.redis_password}"], reset=True
            )
            client.execute_command("ACL", "SETUSER", self.user, *rules)
        finally:
            client.close()

    def secrets(self) -> list[str]:
        values = [self.password, self.redis_password]
        return [*values, self.stack.admin_password or "", self.stack.qdrant_api_key or ""]


@pytest.fixture
def tenant(stack: StackConfig, key_prefix: str) -> Tenant:
    return Tenant(stack, key_prefix)


def run_worker(settings: Settings, *args: str, log_file: Path) -> tuple[int, str, float]:
    started = time.monotonic()
    code = run(settings, *args, log=log_file)
    return code, log_file.read_text(errors="replace"), time.monotonic() - started


def assert_no_secret(text: str, tenant: Tenant) -> None:
    for secret in tenant.secrets():
        assert secret not in text


@pytest.mark.parametrize("runtime", ["batch", "faust"])
async def test_a_worker_with_only_its_own_grants_applies_every_event(
    runtime: str, tenant: Tenant, tmp_path: Path
) -> None:
    tenant.grant_kafka()
    tenant.grant_redis()
    admin = tenant.settings(user=secure.ADMIN)
    ensure_topics(admin)
    produce_engagements(admin, generate_events(STREAM))

    code, text, _ = await asyncio.to_thread(
        run_worker,
        tenant.settings(),
        "--runtime",
        runtime,
        "--until-idle",
        "4",
        log_file=tmp_path / "worker.log",
    )
    assert code == 0, text[-3000:]
    records = await asyncio.to_thread(read_topic, admin, admin.topics.engagements)
    oracle = Oracle.from_records(admin, records)
    assert oracle.valid_count == STREAM.events
    client = aioredis.Redis(**secure.redis_admin_kwargs(tenant.stack))
    try:
        state = RedisState(client, admin.state, prefix=admin.redis.key_prefix)
        assert await mismatches(state, oracle) == []
    finally:
        await client.aclose()
    ends = await asyncio.to_thread(end_offsets, admin, admin.topics.engagements)
    assert await asyncio.to_thread(committed_offsets, admin) == ends
    assert_no_secret(text, tenant)
    log.info("%s runtime over SASL_SSL and Redis TLS: %d events applied", runtime, STREAM.events)


REFUSALS: dict[str, tuple[Callable[[Tenant], Settings], str]] = {
    "wrong Kafka password": (
        lambda t: t.settings(kafka={"sasl_password": "not-" + t.password}),
        "Authentication failed",
    ),
    "no consumer group ACL": (lambda t: t.settings(), "consumer group g-"),
    "no topic ACL": (lambda t: t.settings(), "topic eng-"),
    "no Redis script permission": (lambda t: t.settings(), "may not run the apply script"),
    "wrong Redis password": (
        lambda t: t.settings(redis={"password": "not-" + t.redis_password}),
        "invalid username-password pair",
    ),
    "no Qdrant API key": (lambda t: t.settings(qdrant={"api_key": None}), "qdrant"),
}


# the start-up checks run before either runtime starts; Faust is asked once more about the
# group, since it used to wait in the join forever when refused
CASES = [(case, "batch") for case in REFUSALS] + [("no consumer group ACL", "faust")]


@pytest.mark.parametrize(("case", "runtime"), CASES)
def test_a_refused_credential_stops_the_worker_at_start_naming_the_cause(
    case: str, runtime: str, tenant: Tenant, tmp_path: Path
) -> None:
    tenant.grant_kafka(groups=case != "no consumer group ACL", topics=case != "no topic ACL")
    tenant.grant_redis(scripts=case != "no Redis script permission")
    ensure_topics(tenant.settings(user=secure.ADMIN))
    make, cause = REFUSALS[case]
    # a deadline no loaded machine misses: a refusal is reported when it arrives, not then
    args = ("--runtime", runtime, "--check-timeout", "60")
    code, text, seconds = run_worker(make(tenant), *args, log_file=tmp_path / "worker.log")
    assert code == EXIT_UNAVAILABLE, text[-3000:]
    assert cause in text, text[-3000:]
    assert_no_secret(text, tenant)
    log.info("%s (%s): exit %d after %.1f s", case, runtime, code, seconds)
