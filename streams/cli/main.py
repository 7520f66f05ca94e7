"""`sagestream`: one entry point; settings are built here once and passed down."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from streams.exceptions import ConfigError
from streams.runtimes.client_logs import quiet_chatty_loggers
from streams.seams import NO_SEAMS, Seams

EXIT_CONFIG = 78  # EX_CONFIG

COMMAND_MODULES = (
    "streams.cli.stack",
    "streams.cli.worker",
    "streams.cli.check",
    "streams.cli.data",
    "streams.cli.bench",
    "streams.cli.demo",
    "streams.cli.train",
    "streams.cli.retrain",
    "streams.cli.vectors",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sagestream",
        description="Streaming near-real-time user and item embeddings.",
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (env SAGESTREAM_* wins)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as missing:
            if missing.name and missing.name.startswith(("torch", "onnx", "matplotlib")):
                continue  # the trainer's extra is not installed: its commands are absent
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, seams: Seams = NO_SEAMS) -> int:
    """`seams` reach the worker's wiring: only the fault tests pass others (streams/seams.py)."""
    args = build_parser().parse_args(argv)
    args.seams = seams
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    quiet_chatty_loggers()
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # the operator's to fix: one line, no traceback
        logging.getLogger("sagestream").error("%s", exc)
        return EXIT_CONFIG
    except ValidationError as exc:  # settings refused: which, and why, never the value
        logging.getLogger("sagestream").error("invalid settings: %s", settings_problems(exc))
        return EXIT_CONFIG


def settings_problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
