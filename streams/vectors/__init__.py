"""State into vectors: the re-encoder, its rules, the updater loop beside the consumer, model
switches and backfills, and the factory of the vector store."""
