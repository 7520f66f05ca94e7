"""Encoders: feature hashing, torch models, losses, training, evaluation, ONNX export,
onnxruntime sessions and the model registry.

This package imports nothing else of sagestream; it takes plain Python and numpy inputs.
The serving API (what the streaming updater calls) lives in :mod:`encoders.runtime`.
"""
