"""Records into Redis state: the engagement ingest core and the catalog consumer. Runtime-free."""
