"""Helpers every command shares."""

from __future__ import annotations

import argparse
import sys

from streams.settings import Settings


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings.load(getattr(args, "config", None))


def say(line: str) -> None:
    """A command's product goes to stdout; logs go to stderr."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
