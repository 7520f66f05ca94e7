"""KRaft cluster ids that kafka-storage's command line accepts."""

import base64
import uuid

import pytest

from deploy import stack


def test_an_id_that_would_read_as_an_option_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dash = uuid.UUID(bytes=base64.urlsafe_b64decode("-" + "A" * 21 + "=="))
    plain = uuid.UUID(int=1)
    draws = iter([dash, dash, plain])
    monkeypatch.setattr(stack.uuid, "uuid4", lambda: next(draws))

    cluster_id = stack.new_cluster_id()

    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert next(draws, None) is None


def test_ids_are_22_characters_of_the_url_safe_alphabet() -> None:
    ids = {stack.new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    for cluster_id in ids:
        assert len(cluster_id) == 22 and not cluster_id.startswith("-")
        assert base64.urlsafe_b64decode(cluster_id + "==")
