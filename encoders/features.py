"""Content featuriser: an item's text, categories and numeric vectors as fixed-size arrays.

Text becomes a bag of stable-hashed tokens (ItemSage / OmniSearchSage style): word 1-grams, word
2-grams and character 3-grams of the title and text, plus the categorical fields. Each token kind
owns its own slice of one hash table, so the model can pool kinds separately:

    id 0                                   padding
    1 + k * buckets + (hash(token) % buckets)   token of kind k, k = index in TOKEN_KINDS
    1 + K * buckets + (hash(id) % id_buckets)   the item's own id (K = len(TOKEN_KINDS)), first

The id token gives every item a learned identity of its own (the strongest signal a catalogue
with history has) in a range large enough that two items rarely share a bucket; content still
carries new items, and the model drops the id in training so it learns to do without.

The hash is blake2b (8 bytes), stable across processes and machines; Python's salted ``hash()``
is never used. Precomputed numeric vectors (``features`` on a catalog item) are concatenated in
the order of ``FeaturizerConfig.dense_names``, padded or cut to ``dense_dims``; an item without
them gets zeros. Hashing stays outside the ONNX graph: the graph receives the arrays built here.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

TOKEN_KINDS: tuple[str, ...] = ("category", "word", "bigram", "char3")
_WORD_RE = re.compile(r"[0-9a-z]+")

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


class ContentLike(Protocol):
    """Anything with an item's content fields (``streams.wire.events.CatalogItem`` fits)."""

    @property
    def item_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def categories(self) -> tuple[str, ...]: ...
    @property
    def features(self) -> Mapping[str, tuple[float, ...]] | None: ...


@dataclass(frozen=True, slots=True)
class FeaturizerConfig:
    """Hashing and layout settings; saved with every model version (part of the model contract)."""

    buckets_per_kind: int = 4096
    max_tokens: int = 96
    dense_names: tuple[str, ...] = ()
    dense_dims: tuple[int, ...] = ()
    use_text: bool = True  # False: categories and dense vectors only (the no-content ablation)
    id_buckets: int = 0  # hash range of the item-id token; 0: no id token (versions before it)

    def __post_init__(self) -> None:
        assert self.buckets_per_kind > 0 and self.max_tokens > 0 and self.id_buckets >= 0
        assert len(self.dense_names) == len(self.dense_dims), "one dim per dense name"

    @property
    def table_size(self) -> int:
        """Rows of the token embedding table, padding row 0 included."""
        return 1 + len(TOKEN_KINDS) * self.buckets_per_kind + self.id_buckets

    @property
    def dense_width(self) -> int:
        """Width of the dense input; at least 1 so the ONNX input always exists."""
        return max(1, sum(self.dense_dims))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> FeaturizerConfig:
        return cls(
            buckets_per_kind=int(raw["buckets_per_kind"]),
            max_tokens=int(raw["max_tokens"]),
            dense_names=tuple(str(n) for n in raw["dense_names"]),
            dense_dims=tuple(int(d) for d in raw["dense_dims"]),
            use_text=bool(raw.get("use_text", True)),
            id_buckets=int(raw.get("id_buckets", 0)),
        )


def stable_hash(token: str) -> int:
    """A 64-bit hash of ``token`` that is the same in every process (blake2b)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")


def text_tokens(text: str) -> tuple[list[str], list[str], list[str]]:
    """Word 1-grams, word 2-grams and character 3-grams (words padded with '#') of ``text``."""
    words = _WORD_RE.findall(text.lower())
    bigrams = [f"{a} {b}" for a, b in itertools.pairwise(words)]
    chars: list[str] = []
    for word in words:
        padded = f"#{word}#"
        chars.extend(padded[i : i + 3] for i in range(len(padded) - 2))
    return words, bigrams, chars


def infer_dense_layout(items: Iterable[ContentLike]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Names (sorted) and widest length of every named feature vector seen in ``items``."""
    widths: dict[str, int] = {}
    for item in items:
        for name, vector in (item.features or {}).items():
            widths[name] = max(widths.get(name, 0), len(vector))
    names = tuple(sorted(widths))
    return names, tuple(widths[n] for n in names)


class ContentFeaturizer:
    """Turns item content into ``(token_ids [T] int64, dense [F] float32)`` arrays."""

    def __init__(self, config: FeaturizerConfig) -> None:
        self.config = config

    def token_ids(
        self, title: str, text: str, categories: Sequence[str], item_id: str = ""
    ) -> IntArray:
        """Hashed token ids, padded with 0 to ``max_tokens``: the id token first (when the
        config has an id range), then kinds in TOKEN_KINDS order."""
        words, bigrams, chars = (
            text_tokens(f"{title} {text}") if self.config.use_text else ([], [], [])
        )
        kinds = ([c.strip().lower() for c in categories], words, bigrams, chars)
        buckets = self.config.buckets_per_kind
        seen: set[int] = set()
        ids: list[int] = []
        if self.config.id_buckets:
            offset = 1 + len(TOKEN_KINDS) * buckets
            ids.append(offset + stable_hash(f"id:{item_id}") % self.config.id_buckets)
        for kind, tokens in enumerate(kinds):
            for token in tokens:
                token_id = 1 + kind * buckets + stable_hash(token) % buckets
                if token_id not in seen:
                    seen.add(token_id)
                    ids.append(token_id)
        ids = ids[: self.config.max_tokens]
        out = np.zeros(self.config.max_tokens, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def dense(self, features: Mapping[str, Sequence[float]] | None) -> FloatArray:
        """The item's numeric vectors laid out per the config; zeros where absent or non-finite."""
        out = np.zeros(self.config.dense_width, dtype=np.float32)
        offset = 0
        for name, dim in zip(self.config.dense_names, self.config.dense_dims, strict=True):
            vector = (features or {}).get(name, ())
            values = [v if math.isfinite(v) else 0.0 for v in list(vector)[:dim]]
            out[offset : offset + len(values)] = values
            offset += dim
        return out

    def featurise(self, item: ContentLike) -> tuple[IntArray, FloatArray]:
        """One item's arrays: token ids ``[T]`` and dense ``[F]``."""
        tokens = self.token_ids(item.title, item.text, item.categories, item.item_id)
        return tokens, self.dense(item.features)

    def featurise_many(self, items: Sequence[ContentLike]) -> tuple[IntArray, FloatArray]:
        """Stacked arrays for ``items``: token ids ``[N, T]`` and dense ``[N, F]``."""
        cfg = self.config
        ids = np.zeros((len(items), cfg.max_tokens), dtype=np.int64)
        dense = np.zeros((len(items), cfg.dense_width), dtype=np.float32)
        for row, item in enumerate(items):
            ids[row], dense[row] = self.featurise(item)
        return ids, dense
