"""The systems under test, behind one small interface (B1 drain, B2 warm pickup).

Each adapter owns one database on the benchmark server, creates its schema the way its
documentation says, enqueues with its own API, and runs its own workers as subprocesses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from benchmarks import jobs
from benchmarks.common import BenchError, Context, percentile, wait_for


@dataclasses.dataclass(frozen=True)
class Drain:
    """How long ``jobs`` no-op jobs took to drain."""

    jobs: int
    wall: float  # workers spawned -> last worker exited
    window: float | None  # first job started -> last job started (from the job records)

    @property
    def rate(self) -> float:
        return self.jobs / self.wall

    @property
    def window_rate(self) -> float | None:
        if not self.window:
            return None
        return (self.jobs - 1) / self.window


@dataclasses.dataclass(frozen=True)
class DrainSetting:
    """``processes`` worker processes with ``concurrency`` jobs at once each; ``batch``
    jobs reserved per round trip where the system has that knob (None: the system's
    default, for ours ``read_ahead = "auto"``)."""

    processes: int
    concurrency: int
    batch: int | None = 1
    label: str = ""

    def describe(self) -> str:
        text = f"{self.processes}x{self.concurrency}"
        return f"{text}, {self.label}" if self.label else text


class System(Protocol):
    name: str

    def version(self) -> str: ...

    def setup(self) -> None: ...

    def drain(self, setting: DrainSetting, count: int) -> Drain: ...

    def pickup_latencies(self, count: int, gap: float) -> list[float]: ...


def drain_result(count: int, started: float, ended: float, record: Path) -> Drain:
    times = [r.time for r in jobs.read_records(record) if r.kind == "noop"]
    if len(times) < count:
        raise BenchError(f"only {len(times)} of {count} jobs ran")
    return Drain(count, ended - started, max(times) - min(times) if len(times) > 1 else None)


def paced(count: int, gap: float, send: Callable[[str], None]) -> dict[str, float]:
    """Call ``send(key)`` ``count`` times, ``gap`` seconds apart; return key -> time.time()
    as each call returned, i.e. when its commit was done (issue 6: "commit -> job
    start"; a job may even start before the client has read the commit's answer)."""
    sent: dict[str, float] = {}
    next_at = time.monotonic()
    for i in range(count):
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key = f"k{i}"
        send(key)
        sent[key] = time.time()
        next_at += gap
    return sent


async def apaced(
    count: int, gap: float, send: Callable[[str], Awaitable[object]]
) -> dict[str, float]:
    """:func:`paced` for an async ``send``."""
    sent: dict[str, float] = {}
    next_at = time.monotonic()
    for i in range(count):
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"k{i}"
        await send(key)
        sent[key] = time.time()
        next_at += gap
    return sent


def latencies_ms(record: Path, sent: dict[str, float], timeout: float = 15.0) -> list[float]:
    """Start time of each sent job (from the record file) minus its send time, in ms."""

    def started() -> dict[str, float] | None:
        seen = {r.key: r.time for r in jobs.read_records(record) if r.kind == "job"}
        return seen if all(key in seen for key in sent) else None

    try:
        seen = wait_for(started, timeout, "the jobs to start", interval=0.05)
    except BenchError:
        seen = {r.key: r.time for r in jobs.read_records(record) if r.kind == "job"}
        missing = [key for key in sent if key not in seen]
        raise BenchError(f"{len(missing)} of {len(sent)} jobs never started") from None
    return [(seen[key] - at) * 1000 for key, at in sent.items()]


def warm_up(record: Path, send: Callable[[str], None], timeout: float = 30.0) -> None:
    """Send one job and wait until it ran: the worker is up, connected and idle."""
    send("warmup")
    wait_for(
        lambda: any(r.key == "warmup" for r in jobs.read_records(record)),
        timeout,
        "the warm-up job to run",
        interval=0.05,
    )
    time.sleep(0.5)  # let it go back to waiting


async def awarm_up(
    record: Path, send: Callable[[str], Awaitable[object]], timeout: float = 30.0
) -> None:
    """:func:`warm_up` for an async ``send``."""
    await send("warmup")
    await asyncio.to_thread(
        wait_for,
        lambda: any(r.key == "warmup" for r in jobs.read_records(record)),
        timeout,
        "the warm-up job to run",
        0.05,
    )
    await asyncio.sleep(0.5)


def summary(latencies: list[float]) -> dict[str, float]:
    return {f"p{p}": percentile(latencies, p) for p in (50, 90, 99)}


def set_up(system: System | Unavailable) -> str | None:
    """Create the system's database and schema; the reason it cannot be measured, if any."""
    if isinstance(system, Unavailable):
        return system.reason
    try:
        system.setup()
    except Exception as error:
        return f"setup failed: {type(error).__name__}: {error}"
    return None


@dataclasses.dataclass(frozen=True)
class Unavailable:
    """A peer that cannot run here, and why (e.g. "not installed")."""

    name: str
    reason: str


def make_systems(ctx: Context) -> list[System | Unavailable]:
    """Ours first, then each peer (or why it cannot run)."""
    from benchmarks.peers.ours import Ours

    systems: list[System | Unavailable] = [Ours(ctx)]
    for name, reason in ctx.peers.items():
        if reason is not None:
            systems.append(Unavailable(name, reason))
        elif name == "procrastinate":
            from benchmarks.peers.procrastinate_peer import Procrastinate

            systems.append(Procrastinate(ctx))
        elif name == "pgqueuer":
            from benchmarks.peers.pgqueuer_peer import PgQueuer

            systems.append(PgQueuer(ctx))
    return systems
