"""The own stacks' ports: free, distinct, and out of the kernel's reach for outgoing connections."""

from __future__ import annotations

import random
import socket

from tests.support.services import EPHEMERAL_LOW, PORT_WINDOW, free_ports


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    for seed in range(50):
        ports = free_ports(5, random.Random(seed))
        assert len(set(ports)) == 5
        assert all(port in PORT_WINDOW for port in ports)
        # a Redis Cluster node's bus listens 10,000 above its port, and must stay below too
        assert max(PORT_WINDOW) + 10_000 + 25 < EPHEMERAL_LOW


class _Scripted(random.Random):
    """Draws the given tuples in turn."""

    def __init__(self, *draws: tuple[int, ...]) -> None:
        super().__init__(0)
        self.draws = list(draws)

    def sample(self, population: object, k: int, **_: object) -> list[int]:  # type: ignore[override]
        return list(self.draws.pop(0))


def test_a_port_something_listens_on_is_drawn_again() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        fresh = free_ports(1, random.Random(7))[0]
        assert free_ports(1, _Scripted((busy,), (fresh,))) == (fresh,)
