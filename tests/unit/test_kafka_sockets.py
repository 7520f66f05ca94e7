"""kafka-python's cut-short connect (tests/support/kafka_sockets.py), without a broker:
a listening socket nobody accepts from, a connect held in progress, the selector closed under it."""

from __future__ import annotations

import errno
import gc
import socket
import warnings
from collections.abc import Iterator

import pytest
from kafka.net.inet import KafkaNetSocket, create_connection
from kafka.net.selector import NetworkSelector

from tests.support.kafka_sockets import close_cut_short_connects


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def _unclosed_after_cut_short_connect(port: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """ResourceWarnings raised when a selector closes while a connect to `port` is under way."""

    def still_connecting(self: KafkaNetSocket, sock: socket.socket, addr: object) -> int:
        sock.connect_ex(addr)  # type: ignore[arg-type]
        return errno.EALREADY  # as if the handshake had not finished yet

    monkeypatch.setattr(KafkaNetSocket, "connect_ex", still_connecting)
    net = NetworkSelector()
    task = net.call_soon(create_connection(net, "127.0.0.1", port))
    net.poll(timeout_ms=0)
    assert not task.is_done  # held at the connect's await
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        net.close()
        gc.collect()
    return [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]


def test_a_connect_cut_short_closes_its_socket(
    listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    close_cut_short_connects()  # conftest did already; idempotent
    assert _unclosed_after_cut_short_connect(listener, monkeypatch) == []


def test_kafka_python_itself_still_leaks_it(listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason for the patch: fails once kafka-python closes the socket itself."""
    close_cut_short_connects()
    monkeypatch.setattr(
        KafkaNetSocket,
        "sock_connect",
        KafkaNetSocket.sock_connect.__wrapped__,  # type: ignore[attr-defined]
    )
    leaked = _unclosed_after_cut_short_connect(listener, monkeypatch)
    assert len(leaked) == 1 and "unclosed <socket.socket" in leaked[0]
