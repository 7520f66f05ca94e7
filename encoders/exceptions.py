"""Errors raised by the encoders package."""

from __future__ import annotations


class EncodersError(Exception):
    """Base class for every error the encoders package raises on purpose."""


class ModelRejected(EncodersError):
    """A model version failed validation (checksum, dims, smoke inference) and must not serve."""

    def __init__(self, version: str, reason: str) -> None:
        super().__init__(f"model {version!r} rejected: {reason}")
        self.version = version
        self.reason = reason


class ParityError(EncodersError):
    """onnxruntime and torch disagree beyond tolerance on the golden inputs; the export failed."""


class RegistryError(EncodersError):
    """A registry operation is impossible (unknown version, nothing to roll back to, ...)."""


class DataError(EncodersError):
    """Training or evaluation inputs are unusable (no items, no sequences, bad shapes)."""
