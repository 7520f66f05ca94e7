"""Model registries the switch tests share."""

from __future__ import annotations

from pathlib import Path

from streams.devtools.generate import GeneratorConfig
from streams.devtools.tiny_model import publish_tiny_model


def two_versions(root: Path, stream: GeneratorConfig) -> tuple[Path, str, str]:
    """Two versions of the tiny model (seeds 3 and 4) in one registry at `root`; the first
    promoted. Returns the root and both versions."""
    registry, first = publish_tiny_model(root, stream, seed=3)
    _, second = publish_tiny_model(root, stream, seed=4)
    registry.promote(first)
    return root, first, second
