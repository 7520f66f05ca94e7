"""The serving contract of an exported model version: file names and ONNX input/output names.

Torch-free, so the streaming side can import it with onnxruntime alone.
"""

from __future__ import annotations

NUM_ACTIONS = 4  # 0 = padding, then view, click, save (see encoders.data.ACTION_CODES)
NUM_TIME_FEATURES = 5  # see encoders.data.time_features
NUM_TOKEN_KINDS = 4  # see encoders.features.TOKEN_KINDS

CONTENT_FILE = "content.onnx"
ITEM_FILE = "item.onnx"
USER_FILE = "user.onnx"
MODEL_CONFIG_FILE = "model_config.json"
FEATURIZER_FILE = "featurizer.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.json"
CURVES_FILE = "curves.png"
WEIGHTS_FILE = "weights.npz"  # the torch state dict, for benchmarks and fine-tuning (no pickle)

# content.onnx: token_ids [B, T] int64, dense [B, F] float32 -> content [B, d] float32
CONTENT_INPUTS = ("token_ids", "dense")
CONTENT_OUTPUT = "content"
# item.onnx: content [B, d], neighbour_content [B, K, d], neighbour_weights [B, K] (0 = absent),
#            degree [B] (the item's engagement count, as the state keeps it)
ITEM_INPUTS = ("content", "neighbour_content", "neighbour_weights", "degree")
ITEM_OUTPUT = "item_vector"
# user.onnx: item_vectors [B, M, D], actions [B, M] int64, time_features [B, M, 5], lengths [B]
USER_INPUTS = ("item_vectors", "actions", "time_features", "lengths")
USER_OUTPUT = "user_vector"

METADATA_MODEL_CONFIG = "sagestream.model_config"
METADATA_FEATURIZER = "sagestream.featurizer"
