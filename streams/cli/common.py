"""Helpers every command shares, and the settings of the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

from pydantic import SecretStr

from deploy import stack
from deploy.stack import StackConfig
from streams.settings import Settings


class CommandSettings(Settings):
    """The worker's settings plus where the local stack lives: only commands start a stack, so
    the product's settings never know about `deploy`."""

    stack: StackConfig = StackConfig()


def on_server(settings: CommandSettings) -> CommandSettings | None:
    """The settings with vectors on a Qdrant server: the one `qdrant.url` names, else the local
    stack's (its URL, gRPC port and API key); None when there is neither."""
    if settings.qdrant.url is not None:
        return settings
    if settings.stack.qdrant_server() is None:
        return None
    key = settings.stack.qdrant_api_key
    qdrant = settings.qdrant.model_copy(
        update={
            "url": settings.stack.qdrant_url,
            "grpc_port": settings.stack.qdrant_grpc_port,
            "api_key": SecretStr(key) if key else None,
        }
    )
    return settings.model_copy(update={"qdrant": qdrant})


def settings_of(args: argparse.Namespace) -> CommandSettings:
    """The command's settings; `--topology cluster` points the clients at the cluster stack's
    nodes (`StackConfig.client_settings`)."""
    settings = CommandSettings.load(getattr(args, "config", None))
    topology = getattr(args, "topology", None) or settings.stack.topology
    if topology == "single":
        return settings
    cfg = replace(settings.stack, topology=topology)
    updates: dict[str, Any] = {"stack": cfg}
    for section, fields in cfg.client_settings().items():
        updates[section] = getattr(settings, section).model_copy(update=fields)
    return settings.model_copy(update=updates)


def bench_settings_up(args: argparse.Namespace, qdrant: str) -> CommandSettings:
    """A bench's settings with the local stack up, pointed at its Qdrant server when `qdrant`
    is "server" (refused when the stack has none)."""
    settings = settings_of(args)
    stack.up(settings.stack)
    if qdrant != "server":
        return settings
    server = on_server(settings)
    if server is None:
        raise SystemExit(f"--qdrant server: {stack.NO_QDRANT}")
    return server


def add_topology(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--topology",
        choices=["single", "cluster"],
        help="the local stack: one node of each service, or three Kafka brokers, a Redis "
        "Cluster and three Qdrant peers (default: stack.topology, single)",
    )


def say(line: str) -> None:
    """A command's product goes to stdout; logs go to stderr."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
