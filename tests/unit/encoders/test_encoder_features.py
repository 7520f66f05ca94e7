"""The content featuriser: stable hashing, kinds in their own slices, dense layout."""

from __future__ import annotations

import numpy as np

from encoders.features import (
    TOKEN_KINDS,
    ContentFeaturizer,
    FeaturizerConfig,
    infer_dense_layout,
    stable_hash,
    text_tokens,
)
from streams.wire.events import CatalogItem


def test_stable_hash_is_fixed_across_processes() -> None:
    assert stable_hash("toy") == int.from_bytes(
        __import__("hashlib").blake2b(b"toy", digest_size=8).digest(), "little"
    )


def test_text_tokens() -> None:
    words, bigrams, chars = text_tokens("Toy Story")
    assert words == ["toy", "story"]
    assert bigrams == ["toy story"]
    assert chars[:3] == ["#to", "toy", "oy#"]


def test_token_ids_fall_in_their_kind_slice_and_pad_with_zero() -> None:
    cfg = FeaturizerConfig(buckets_per_kind=100, max_tokens=64)
    ids = ContentFeaturizer(cfg).token_ids("Toy Story", "", ("Animation",))
    real = ids[ids > 0]
    assert len(real) == len(set(real.tolist()))  # deduplicated
    assert (ids[len(real) :] == 0).all()
    kinds = (real - 1) // 100
    assert kinds[0] == TOKEN_KINDS.index("category")
    assert set(kinds.tolist()) == {0, 1, 2, 3}
    assert real.max() < cfg.table_size


def test_truncation_and_no_text_mode() -> None:
    cfg = FeaturizerConfig(buckets_per_kind=100, max_tokens=4)
    assert (ContentFeaturizer(cfg).token_ids("a long title here", "", ()) > 0).sum() == 4
    no_text = FeaturizerConfig(buckets_per_kind=100, max_tokens=8, use_text=False)
    ids = ContentFeaturizer(no_text).token_ids("Toy Story", "", ("Animation",))
    assert (ids > 0).sum() == 1


def test_dense_layout_pads_cuts_and_zeroes_non_finite() -> None:
    items = [
        CatalogItem("a", "t", features={"img": (1.0, 2.0, 3.0)}),
        CatalogItem("b", "t", features={"img": (1.0,), "aux": (float("nan"), 5.0)}),
        CatalogItem("c", "t"),
    ]
    names, dims = infer_dense_layout(items)
    assert names == ("aux", "img") and dims == (2, 3)
    cfg = FeaturizerConfig(dense_names=names, dense_dims=dims)
    _, dense = ContentFeaturizer(cfg).featurise_many(items)
    np.testing.assert_array_equal(dense[0], [0, 0, 1, 2, 3])
    np.testing.assert_array_equal(dense[1], [0, 5, 1, 0, 0])
    np.testing.assert_array_equal(dense[2], np.zeros(5))
    assert FeaturizerConfig.from_dict(cfg.to_dict()) == cfg
