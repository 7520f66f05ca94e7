"""The `sagestream` command line: the top floor. Each command module exposes `register(sub)`."""

from streams.cli.main import main

__all__ = ["main"]
