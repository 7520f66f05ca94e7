"""What crosses Kafka: event and catalog formats, the raw record a runtime hands over, topics,
dead letters. The floor every other room of `streams` stands on."""
