"""The loops that drive ingest and vectors from Kafka: shared wiring, the aiokafka batch loop and
the Faust agent, plus the objects that own the commit order and backpressure."""
