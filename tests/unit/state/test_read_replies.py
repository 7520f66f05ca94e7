"""The flat replies of read_users.lua and read_holders.lua, decoded as the per-key reads were:
bytes or str (decode_responses), absent entities, holder scores as Redis formats doubles."""

from __future__ import annotations

import pytest

from state.coengagement import SeqEntry
from state.encode_inputs import UserInputs, decode_users
from state.redis_state import decode_holders


@pytest.mark.parametrize("kind", [bytes, str])
def test_users_reply_is_split_per_user(kind: type) -> None:
    def raw(s: str) -> bytes | str:
        return s.encode() if kind is bytes else s

    flat = [raw("3"), raw("12.5"), 2, raw("a|click|10"), raw("b|save|12.5"), None, None, 0]
    flat += [raw("1"), None, 1, raw("c|view|1e+20")]
    got = decode_users(["u1", "absent", "u3"], flat)
    assert got == {
        "u1": UserInputs(
            "u1", 3, 12.5, [SeqEntry("a", "click", 10.0), SeqEntry("b", "save", 12.5)]
        ),
        "absent": UserInputs("absent", 0, None, []),
        "u3": UserInputs("u3", 1, None, [SeqEntry("c", "view", 1e20)]),
    }
    assert list(got) == ["u1", "absent", "u3"]


@pytest.mark.parametrize("kind", [bytes, str])
def test_holders_reply_leaves_out_items_nobody_holds(kind: type) -> None:
    def raw(s: str) -> bytes | str:
        return s.encode() if kind is bytes else s

    flat = [0, 2, raw("u1"), raw("4"), raw("u2"), raw("1e+17"), 1, raw("u3")]
    flat += [raw("0")]
    got = decode_holders(["none", "hot", "one"], flat)
    assert got == {"hot": {"u1": 4, "u2": 10**17}, "one": {"u3": 0}}
