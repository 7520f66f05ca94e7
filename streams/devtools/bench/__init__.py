"""The benchmark commands: ingest, end to end (against a naive Faust loop), and training."""
