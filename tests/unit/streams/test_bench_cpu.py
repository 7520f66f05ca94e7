"""CPU by role in the goals bench (streams/devtools/bench/cpu.py): where services are found, how
the budget is summed, and the meter on this process. No services: a socket of the test's own
stands in for a listener, and the test burns CPU until the kernel has counted it."""

from __future__ import annotations

import os
import socket

import psutil
import pytest

from streams.devtools.bench.cpu import (
    CpuMeter,
    budget,
    describe,
    host_port,
    is_loopback,
    listener_pids,
    service_addresses,
    service_pids,
)
from streams.settings import KafkaSettings, QdrantSettings, RedisSettings, Settings


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("redis://127.0.0.1:16379/0", ("127.0.0.1", 16379)),
        ("rediss://cache.example:6380", ("cache.example", 6380)),
        ("127.0.0.1:19092", ("127.0.0.1", 19092)),
        ("http://localhost", ("localhost", 6333)),
        ("[::1]:9092", ("::1", 9092)),
    ],
)
def test_addresses_give_their_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert host_port(address, 6333) == expected


def test_only_loopback_hosts_are_local() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.5") and not is_loopback("redis.internal")


def test_every_peer_of_every_service_is_listed() -> None:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:19092, 127.0.0.1:19093"),
        redis=RedisSettings(cluster_nodes=("127.0.0.1:17000", "127.0.0.1:17001")),
        qdrant=QdrantSettings(url="http://127.0.0.1:16333,http://127.0.0.1:16334"),
    )
    assert service_addresses(settings) == {
        "redis": [("127.0.0.1", 17000), ("127.0.0.1", 17001)],
        "kafka": [("127.0.0.1", 19092), ("127.0.0.1", 19093)],
        "qdrant": [("127.0.0.1", 16333), ("127.0.0.1", 16334)],
    }


def listening() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    return server


def test_the_listener_of_a_port_is_found() -> None:
    with listening() as server:
        port = server.getsockname()[1]
        assert listener_pids([port]) == {port: os.getpid()}


def test_a_service_partly_elsewhere_or_not_listening_is_named_unmeasured() -> None:
    with listening() as server, listening() as closed:
        port = server.getsockname()[1]
        gone = closed.getsockname()[1]
        closed.close()
        settings = Settings(
            redis=RedisSettings(url=f"redis://127.0.0.1:{port}/0"),
            kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{port},10.9.9.9:9092"),
            qdrant=QdrantSettings(url=f"http://127.0.0.1:{gone}"),
        )
        found, missing = service_pids(settings)
    assert found == {"redis": [os.getpid()]}
    assert sorted(missing) == ["kafka", "qdrant"]


def burn(cpu_seconds: float) -> None:
    """Spin until the kernel has counted this much more CPU time for this process."""
    me = psutil.Process()
    start = sum(me.cpu_times()[:2])
    while sum(me.cpu_times()[:2]) - start < cpu_seconds:
        sum(i * i for i in range(10_000))


def test_the_meter_counts_a_process_cpu_time_over_its_window() -> None:
    meter = CpuMeter({"worker": [os.getpid()]}, unmeasured=["qdrant"])
    with pytest.raises(RuntimeError, match="before settle"):
        meter.cores()
    meter.start()
    burn(0.05)
    meter.settle()
    cores = meter.cores()
    assert cores["qdrant"] is None
    worker, machine = cores["worker"], cores["machine"]
    assert worker is not None and worker > 0
    # the machine counts at least what this process spent (ticks of 10 ms may round either)
    assert machine is not None and machine >= worker * 0.5


def test_a_role_that_vanished_before_the_window_is_not_measured() -> None:
    gone = psutil.Popen(["true"])
    gone.wait()
    meter = CpuMeter({"producer": [gone.pid], "worker": [os.getpid()]})
    meter.start()
    meter.settle()
    assert meter.cores()["producer"] is None


def test_the_budget_sums_the_system_without_the_load_generator() -> None:
    cores = {
        "worker": 0.5,
        "redis": 0.4,
        "kafka": 0.1,
        "producer": 0.2,
        "qdrant": None,
        "machine": 1.5,
    }
    figures = budget(cores, 1000.0, 2)
    assert figures["system_cores"] == 1.0
    assert figures["system_core_ms_per_event"] == 1.0
    assert figures["cores"]["other"] == 0.3
    assert figures["core_ms_per_event"]["redis"] == 0.4
    assert figures["core_ms_per_event"]["qdrant"] is None
    assert figures["not_measured"] == ["qdrant"]
    line = describe(figures)
    assert "worker 0.50" in line and "producer 0.20" in line and "of 2" in line
    assert "1.00 core-ms/event" in line and "not measured: qdrant" in line


def test_a_window_with_no_events_has_no_cost_per_event() -> None:
    figures = budget({"worker": 0.5, "machine": 0.5}, 0.0, 2)
    assert figures["system_core_ms_per_event"] is None
    assert figures["core_ms_per_event"]["worker"] is None
    assert "core-ms/event" not in describe(figures)


def test_windows_add_up() -> None:
    meter = CpuMeter({"worker": [os.getpid()]})
    for _ in range(2):
        meter.start()
        burn(0.03)
        meter.settle()
    first_two = meter.elapsed_s
    worker = meter.cores()["worker"]
    assert worker is not None and worker * first_two >= 0.05
