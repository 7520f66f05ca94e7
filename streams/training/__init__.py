"""Offline: datasets into training data, retraining with a promotion gate, evaluating the store."""
