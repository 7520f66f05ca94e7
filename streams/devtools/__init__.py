"""Developer tooling: stream generators, producers, the tiny test model and the benches.

No product module imports this package; only the CLI does, for its dev commands."""
