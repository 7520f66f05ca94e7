"""CLI commands. Each module exposes `register(sub)`, which adds its parsers and sets `func`."""
