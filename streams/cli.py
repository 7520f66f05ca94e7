"""`sagestream`: one entry point; settings are built here once and passed down."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

COMMAND_MODULES = (
    "streams.commands.stack",
    "streams.commands.worker",
    "streams.commands.data",
    "streams.commands.bench",
    "streams.commands.demo",
    "streams.commands.train",
    "streams.commands.retrain",
    "streams.commands.vectors",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
