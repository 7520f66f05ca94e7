"""`pack_user_histories` computes a batch's time features at once; each row must equal what
`time_features` gives that user's window alone (the rule the trainer and the export share)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from encoders.data import pack_user_histories, time_features

SEQ_LEN, DIM = 6, 3

timestamps = st.lists(
    st.floats(min_value=1.6e9, max_value=1.8e9, allow_nan=False), min_size=0, max_size=10
).map(sorted)


@settings(max_examples=200, deadline=None)
@given(st.lists(timestamps, min_size=1, max_size=6))
def test_each_row_equals_its_window_packed_alone(rows: list[list[float]]) -> None:
    histories = [
        (
            np.arange(len(ts) * DIM, dtype=np.float32).reshape(len(ts), DIM),
            np.arange(len(ts), dtype=np.int64) % 3 + 1,
            np.asarray(ts, dtype=np.float64),
        )
        for ts in rows
    ]
    vectors, actions, features, lengths = pack_user_histories(histories, SEQ_LEN, DIM)
    for row, (vecs, acts, ts) in enumerate(histories):
        n = min(len(ts), SEQ_LEN)
        assert lengths[row] == max(n, 1)
        np.testing.assert_array_equal(vectors[row, :n], vecs[len(vecs) - n :])
        np.testing.assert_array_equal(actions[row, :n], acts[len(acts) - n :])
        if n:  # the action before the window, when there is one, sets the first gap
            want = time_features(ts[-(n + 1) :])[-n:]
            np.testing.assert_array_equal(features[row, :n], want)
        assert not features[row, n:].any() and not vectors[row, n:].any()
        assert not actions[row, n:].any()
