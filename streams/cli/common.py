"""Helpers every command shares, and the settings of the command line."""

from __future__ import annotations

import argparse
import sys

from deploy.stack import StackConfig
from streams.settings import Settings


class CommandSettings(Settings):
    """The worker's settings plus where the local stack lives: only commands start a stack, so
    the product's settings never know about `deploy`."""

    stack: StackConfig = StackConfig()


def settings_of(args: argparse.Namespace) -> CommandSettings:
    return CommandSettings.load(getattr(args, "config", None))


def say(line: str) -> None:
    """A command's product goes to stdout; logs go to stderr."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
