"""Errors of the application layer."""


class SagestreamError(Exception):
    """Base of sagestream's own errors."""


class TransientError(SagestreamError):
    """A dependency is unreachable for now: pause, retry, and commit nothing past it."""


class FatalError(SagestreamError):
    """Continuing would lose or corrupt data: stop the worker without committing."""


class ConfigError(SagestreamError):
    """The settings ask for something this machine cannot give (a taken port, a missing file)."""
