"""Where a bench window's cores go: CPU time by role, per second and per 1,000 events.

A live step's freshness says whether the worker kept up, not what the machine paid for it. On a
small machine the worker, Redis, the broker, Qdrant and the paced producer share the same cores,
so the next step fails when their sum reaches the core count, whoever is slow. This module reads
each role's CPU time (user + system, psutil) at the start and end of a window: the bench's own
process (the worker, and the once-a-second backlog probe), the producer, and each service found
as the process listening on its configured loopback port. A service elsewhere, one whose
listener this user cannot see, or one behind a container's port proxy is left out and named
so. `machine` is every busy core of the host over the window, `other` what no role accounts for.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from streams.settings import Settings

LOAD_ROLES = ("producer",)  # the bench's load generator: not part of what is measured
# A port published from a container is held by a proxy, whose CPU is not the service's.
PORT_PROXIES = frozenset({"docker-proxy", "rootlessport", "slirp4netns", "pasta", "gvproxy"})


def host_port(address: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a URL or a host:port pair."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    return parts.hostname or "", parts.port or default_port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def service_addresses(settings: Settings) -> dict[str, list[tuple[str, int]]]:
    """Every (host, port) the worker talks to, by service."""
    redis = list(settings.redis.cluster_nodes) or [settings.redis.url]
    kafka = settings.kafka.bootstrap_servers.split(",")
    qdrant = settings.qdrant.url.split(",") if settings.qdrant.url else []
    return {
        "redis": [host_port(a.strip(), 6379) for a in redis],
        "kafka": [host_port(a.strip(), 9092) for a in kafka],
        "qdrant": [host_port(a.strip(), 6333) for a in qdrant],
    }


def listener_pids(ports: Iterable[int]) -> dict[int, int]:
    """The pid listening on each of these TCP ports on this host, where it can be seen."""
    wanted = set(ports)
    found: dict[int, int] = {}
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return found
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.pid is not None:
            port = conn.laddr.port
            if port in wanted and not _is_proxy(conn.pid):
                found.setdefault(port, conn.pid)
    return found


def _is_proxy(pid: int) -> bool:
    try:
        return psutil.Process(pid).name() in PORT_PROXIES
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True


def service_pids(settings: Settings) -> tuple[dict[str, list[int]], list[str]]:
    """The local processes behind each service, and the services that could not be measured."""
    addresses = service_addresses(settings)
    local = {name: [p for h, p in hosts if is_loopback(h)] for name, hosts in addresses.items()}
    pids = listener_pids(port for ports in local.values() for port in ports)
    found: dict[str, list[int]] = {}
    missing = []
    for name, hosts in addresses.items():
        seen = sorted({pids[p] for p in local[name] if p in pids})
        if seen and len(local[name]) == len(hosts):
            found[name] = seen
        elif hosts:
            missing.append(name)
    return found, missing


def _cpu_seconds(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def _machine_busy() -> float:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return float(sum(times) - idle)


@dataclass
class CpuMeter:
    """CPU seconds of each role's processes over one or more windows (`start` ... `settle`).

    A role's processes are named up front; read at `settle`, before the bench stops any of
    them (a producer ends with its step). A role is measured when every process of it was read
    at both ends of every window; windows add up, so a few short runs read as one."""

    roles: Mapping[str, Sequence[int]]
    unmeasured: Sequence[str] = ()
    _first: dict[int, float] = field(default_factory=dict)
    _spent: dict[int, float] = field(default_factory=dict)
    _lost: set[int] = field(default_factory=set)
    _t0: float = 0.0
    _machine0: float = 0.0
    _elapsed: float = 0.0
    _machine: float = 0.0

    def start(self) -> None:
        self._t0, self._machine0 = time.monotonic(), _machine_busy()
        self._first = {}
        for pid in self._pids():
            seconds = _cpu_seconds(pid)
            if seconds is None:
                self._lost.add(pid)
            else:
                self._first[pid] = seconds

    def settle(self) -> None:
        """End the window: read every process now."""
        self._elapsed += time.monotonic() - self._t0
        self._machine += _machine_busy() - self._machine0
        for pid, first in self._first.items():
            seconds = _cpu_seconds(pid)
            if seconds is None:
                self._lost.add(pid)
            else:
                self._spent[pid] = self._spent.get(pid, 0.0) + seconds - first

    @property
    def elapsed_s(self) -> float:
        """The windows' length in seconds (0 until `settle`)."""
        return self._elapsed

    def cores(self) -> dict[str, float | None]:
        """Cores each role kept busy on average over the windows (CPU seconds per second)."""
        if self._elapsed <= 0:
            raise RuntimeError("CpuMeter.cores before settle()")
        out: dict[str, float | None] = {}
        for role, pids in self.roles.items():
            whole = all(p in self._spent and p not in self._lost for p in pids)
            out[role] = sum(self._spent[p] for p in pids) / self._elapsed if whole else None
        for role in self.unmeasured:
            out[role] = None
        out["machine"] = self._machine / self._elapsed
        return out

    def _pids(self) -> list[int]:
        return [pid for pids in self.roles.values() for pid in pids]


def budget(cores: Mapping[str, float | None], events_per_s: float, cpus: int) -> dict[str, Any]:
    """Cores by role, what each costs per 1,000 events, and the system's sum.

    `system` is every measured role but the load generator: what running sagestream at this
    rate cost, the services included. `other` is the machine's busy cores no role accounts for
    (the kernel's own work, the bench's other processes, anything else on the host)."""
    measured = {role: c for role, c in cores.items() if role != "machine" and c is not None}
    system = sum(c for role, c in measured.items() if role not in LOAD_ROLES)
    machine = cores.get("machine")
    per_k = 1000.0 / events_per_s if events_per_s > 0 else None
    by_role = {role: round(c, 3) if c is not None else None for role, c in cores.items()}
    if machine is not None:
        by_role["other"] = round(max(0.0, machine - sum(measured.values())), 3)
    return {
        "cpus": cpus,
        "cores": by_role,
        "not_measured": sorted(role for role, c in cores.items() if c is None),
        "system_cores": round(system, 3),
        "core_ms_per_event": {
            role: round(c * per_k, 3) if c is not None and per_k is not None else None
            for role, c in by_role.items()
        },
        "system_core_ms_per_event": round(system * per_k, 3) if per_k is not None else None,
    }


def describe(figures: Mapping[str, Any]) -> str:
    """One line: cores by role, and the system's cost per event."""
    cores = figures["cores"]
    parts = [f"{role} {cores[role]:.2f}" for role in cores if cores[role] is not None]
    cost = figures.get("system_core_ms_per_event")
    tail = f"; sagestream + services {cost:.2f} core-ms/event" if cost is not None else ""
    gone = figures.get("not_measured")
    missing = f" (not measured: {', '.join(gone)})" if gone else ""
    return f"cores: {', '.join(parts)} of {figures['cpus']}{tail}{missing}"


ROLE_COLOURS = {
    "worker": "tab:blue",
    "redis": "tab:red",
    "kafka": "tab:olive",
    "qdrant": "tab:purple",
    "producer": "tab:grey",
    "other": "lightgrey",
}


def save_cores_png(windows: Sequence[tuple[str, Mapping[str, Any]]], path: Path) -> None:
    """Stacked cores by role for each labelled window, against the machine's core count."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5))
    ax = fig.add_subplot(1, 1, 1)
    labels = [label for label, _ in windows]
    bottoms = [0.0] * len(windows)
    for role, colour in ROLE_COLOURS.items():
        values = [figures["cores"].get(role) or 0.0 for _, figures in windows]
        ax.bar(labels, values, bottom=bottoms, color=colour, label=role)
        bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
    for x, (_, figures) in enumerate(windows):
        cost = figures.get("system_core_ms_per_event")
        if cost is not None:
            ax.annotate(f"{cost:.2f} core-ms/event", (x, bottoms[x]), ha="center", va="bottom")
    cpus = max((figures["cpus"] for _, figures in windows), default=1)
    ax.axhline(cpus, color="black", linestyle="--", label=f"{cpus} cores")
    ax.set_ylabel("cores busy (CPU seconds per second)")
    ax.set_title(
        "where the cores go (core-ms per event: sagestream and its services, not the producer)"
    )
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
