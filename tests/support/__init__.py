"""What tests share: the service fixtures' backends, worker processes and oracles, fault seams."""
