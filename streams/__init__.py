"""sagestream's application layer: settings, the event contract, stream runtimes, CLI, metrics."""
