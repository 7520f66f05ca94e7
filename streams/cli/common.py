"""Helpers every command shares, and the settings of the command line."""

from __future__ import annotations

import argparse
import sys

from pydantic import SecretStr

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
    return CommandSettings.load(getattr(args, "config", None))


def say(line: str) -> None:
    """A command's product goes to stdout; logs go to stderr."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
