"""Scaling and limit decisions: pure functions from a snapshot to actions, no I/O.

The master (loop.py) observes circus (watcher status, ``numprocesses``, pids),
reads each worker with psutil (title state, RSS, age) and keeps the latest ready-job
counts of each database; it builds :class:`WatcherSnapshot` values from that and asks
this module what to do. Everything here is deterministic and testable with tables.

The scaling rule, for each worker group (one watcher per database):

* ``occupancy`` of a watcher is what it holds of the group's ``max_processes``: its live
  processes, old (``[OLD]``) and retiring ones included, or circus' ``numprocesses``
  target when that is higher (processes circus is about to spawn or respawn).
  ``free = max_processes - Σ occupancy``.
* ``needed = ceil(ready / max_threads)`` processes would run the ready jobs;
  ``spare`` workers will take jobs without help: idle ones, ones still starting, and
  processes circus is about to spawn. ``want = max(0, needed - spare)``.
* The free slots are given one at a time to the watcher with the lowest occupancy (plus
  what it got so far) among those that still want some: max-min fairness ("water
  filling"), so one database cannot take every slot before another is looked at, and
  the total never exceeds ``max_processes``. Ties go round robin (``rotation``).
* Nothing is ever scaled down here: idle workers retire by themselves. The one exception
  is starvation: when free slots run out and a database still wanting workers holds less
  than its fair share while another holds more than its share, the master retires
  (gracefully: SIGTERM, after the current job) the surplus workers of the latter.

Longer than 400 lines on purpose: the rule above, its arithmetic and its actions read
as one piece, and every function here is pure (tests/unit/master/test_scaling.py).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from circus_djmaster.config.settings import WorkerGroup
from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.master.readings import WorkerReading

__all__ = [
    "Action",
    "GroupPolicy",
    "GrowWatcher",
    "KillWorker",
    "ParkWatcher",
    "RetireReason",
    "RetireWorker",
    "StartWatcher",
    "WatcherSnapshot",
    "WatcherStatus",
    "fair_level",
    "plan_limits",
    "plan_scaling",
    "processes_needed",
    "water_fill",
]


class WatcherStatus(enum.Enum):
    """A watcher's status as circus' ``status`` command reports it."""

    STOPPED = "stopped"
    STARTING = "starting"
    ACTIVE = "active"
    STOPPING = "stopping"
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: object) -> WatcherStatus:
        try:
            return cls(str(text).lower())
        except ValueError:
            return cls.UNKNOWN


class RetireReason(enum.Enum):
    MAX_MEMORY = "RSS over max_memory"
    HARD_MAX_MEMORY = "RSS over hard_max_memory"
    # A worker forked by the preloader (spawn = "fork") is measured by its USS.
    MAX_MEMORY_USS = "USS over max_memory"
    HARD_MAX_MEMORY_USS = "USS over hard_max_memory"
    MAX_EXECUTION = "age over max_execution"
    REBALANCE = "slot needed by a starved database of its group"
    MASTER_STOPS = "the master stops (TERM or WINCH)"


@dataclass(frozen=True)
class WatcherSnapshot:
    name: str  # circus watcher name, djmaster-<group>-<database>
    group: str
    database: str
    status: WatcherStatus
    numprocesses: int  # circus' target
    workers: tuple[WorkerReading, ...] = ()
    ready: int | None = None  # capped ready count; None: unknown (database down, not polled)
    blocked: bool = False  # workers failed at start (exit 78): do not scale
    parked: bool = False  # blocked and already stopped by the master

    @property
    def live(self) -> int:
        return len(self.workers)

    @property
    def runs(self) -> bool:
        return self.status in (WatcherStatus.ACTIVE, WatcherStatus.STARTING)

    @property
    def pending(self) -> int:
        """Processes circus will spawn by itself (target above live processes)."""
        return max(0, self.numprocesses - self.live) if self.runs else 0

    @property
    def occupancy(self) -> int:
        """Slots of the group's max_processes this watcher holds now or soon."""
        return self.live + self.pending

    @property
    def staying(self) -> int:
        """Live workers that are not leaving."""
        return sum(1 for worker in self.workers if not worker.leaving)

    @property
    def spare(self) -> int:
        return sum(1 for worker in self.workers if worker.spare) + self.pending

    @property
    def busy(self) -> int:
        return sum(1 for worker in self.workers if worker.busy)


@dataclass(frozen=True)
class GroupPolicy:
    """The settings of a worker group that decisions need."""

    name: str
    max_processes: int
    max_threads: int = 1
    max_memory: int | None = None
    hard_max_memory: int | None = None
    max_execution: float | None = None

    @classmethod
    def from_settings(cls, group: WorkerGroup) -> GroupPolicy:
        return cls(
            name=group.name,
            max_processes=group.max_processes,
            max_threads=group.max_threads,
            max_memory=group.max_memory,
            hard_max_memory=group.hard_max_memory,
            max_execution=group.max_execution,
        )


# ----------------------------------------------------------------------- actions


@dataclass(frozen=True)
class StartWatcher:
    """A stopped watcher: set ``numprocesses`` (nothing spawns while stopped), then
    ``start`` it: only ever ``start`` a stopped watcher (docs/design.md §9)."""

    watcher: str
    numprocesses: int


@dataclass(frozen=True)
class GrowWatcher:
    """An active watcher: ``incr`` by ``count``. Relative on purpose: the after_reap
    hook lowers ``numprocesses`` concurrently when workers retire."""

    watcher: str
    count: int


@dataclass(frozen=True)
class RetireWorker:
    """SIGTERM: the worker finishes its current jobs, then exits (retired)."""

    watcher: str
    pid: int
    reason: RetireReason


@dataclass(frozen=True)
class KillWorker:
    """SIGKILL now; its jobs are released with an attempt charged."""

    watcher: str
    pid: int
    reason: RetireReason


@dataclass(frozen=True)
class ParkWatcher:
    """A blocked watcher with no process left: ``stop`` it and set ``numprocesses`` to 1,
    so an operator's ``circusctl start`` brings one worker back (and unblocks it)."""

    watcher: str


Action = StartWatcher | GrowWatcher | RetireWorker | KillWorker | ParkWatcher


# ------------------------------------------------------------------ arithmetic


def processes_needed(ready: int, max_threads: int) -> int:
    """Processes that would run ``ready`` jobs at ``max_threads`` jobs each."""
    if ready <= 0:
        return 0
    return math.ceil(ready / max(1, max_threads))


def water_fill(
    capacity: int,
    demands: Sequence[int],
    base: Sequence[int] | None = None,
    rotation: int = 0,
) -> list[int]:
    """Share ``capacity`` units: each goes to the entry with the lowest ``base + given``
    among those whose ``given < demand``. Ties go to the first entry in index order
    rotated by ``rotation``, so repeated calls with a moving rotation share evenly.

    Returns the units given to each entry; ``sum <= capacity`` and ``given <= demand``.
    """
    count = len(demands)
    levels = list(base) if base is not None else [0] * count
    if len(levels) != count:
        raise ValueError("base and demands differ in length")
    given = [0] * count
    order = [(rotation + offset) % count for offset in range(count)] if count else []
    for _ in range(max(0, capacity)):
        candidates = [index for index in order if given[index] < demands[index]]
        if not candidates:
            break
        # min() keeps the first of equal keys: the rotated order breaks ties.
        chosen = min(candidates, key=lambda index: levels[index] + given[index])
        given[chosen] += 1
    return given


def fair_level(capacity: int, demands: Sequence[int]) -> float:
    """The level L of max-min fairness: ``Σ min(demand, L) == capacity`` (or L is the
    largest demand when the demands fit). Each entry's fair share is ``min(demand, L)``."""
    positive = sorted(demand for demand in demands if demand > 0)
    if not positive or capacity <= 0:
        return 0.0
    if sum(positive) <= capacity:
        return float(positive[-1])
    remaining = float(capacity)
    for index, demand in enumerate(positive):
        share = remaining / (len(positive) - index)
        if demand >= share:
            return share
        remaining -= demand
    return float(positive[-1])  # pragma: no cover - unreachable: the demands exceed capacity


# ---------------------------------------------------------------------- scaling


@dataclass
class _Plan:
    snapshot: WatcherSnapshot
    want: int
    demand: int
    give: int = 0
    retire: list[WorkerReading] = field(default_factory=list)

    @property
    def can_grow(self) -> bool:
        snapshot = self.snapshot
        return (
            not snapshot.blocked
            and snapshot.ready is not None
            and snapshot.status in (WatcherStatus.STOPPED, WatcherStatus.ACTIVE)
        )


def plan_scaling(
    groups: Mapping[str, GroupPolicy],
    watchers: Iterable[WatcherSnapshot],
    *,
    rotation: int = 0,
) -> list[Action]:
    """Every scaling action for this snapshot: starts, grows, rebalancing retirements,
    and parking of blocked watchers."""
    by_group: dict[str, list[WatcherSnapshot]] = {}
    actions: list[Action] = []
    for snapshot in watchers:
        by_group.setdefault(snapshot.group, []).append(snapshot)
        if (
            snapshot.blocked
            and not snapshot.parked
            and snapshot.status is WatcherStatus.ACTIVE
            and snapshot.live == 0
        ):
            actions.append(ParkWatcher(snapshot.name))
    for name in sorted(by_group):
        group = groups.get(name)
        if group is None:
            continue
        actions.extend(plan_group(group, by_group[name], rotation=rotation))
    return actions


def plan_group(
    group: GroupPolicy, watchers: Sequence[WatcherSnapshot], *, rotation: int = 0
) -> list[Action]:
    """Scaling actions for one group's watchers (one per database)."""
    watchers = sorted(watchers, key=lambda snapshot: snapshot.database)
    plans = [_plan_for(group, snapshot) for snapshot in watchers]
    occupancy = sum(plan.snapshot.occupancy for plan in plans)
    free = max(0, group.max_processes - occupancy)
    wants = [plan.want if plan.can_grow else 0 for plan in plans]
    gifts = water_fill(
        free, wants, base=[plan.snapshot.occupancy for plan in plans], rotation=rotation
    )
    for plan, give in zip(plans, gifts, strict=True):
        plan.give = give
    _rebalance(group, plans)

    actions: list[Action] = []
    for plan in plans:
        snapshot = plan.snapshot
        if plan.give > 0:
            if snapshot.status is WatcherStatus.STOPPED:
                actions.append(StartWatcher(snapshot.name, plan.give))
            else:
                actions.append(GrowWatcher(snapshot.name, plan.give))
        for worker in plan.retire:
            actions.append(RetireWorker(snapshot.name, worker.pid, RetireReason.REBALANCE))
    return actions


def _plan_for(group: GroupPolicy, snapshot: WatcherSnapshot) -> _Plan:
    if snapshot.ready is None or snapshot.blocked:
        # Unknown or blocked: ask for nothing, but keep what is busy.
        return _Plan(snapshot, want=0, demand=snapshot.busy)
    needed = processes_needed(snapshot.ready, group.max_threads)
    want = max(0, needed - snapshot.spare)
    # What this database could keep busy right now: running jobs plus ready ones.
    demand = min(group.max_processes, snapshot.busy + needed)
    return _Plan(snapshot, want=want, demand=demand)


def _rebalance(group: GroupPolicy, plans: list[_Plan]) -> None:
    """Retire surplus workers of over-served databases for starved ones.

    A watcher is starved when, after this tick's gifts, it holds fewer slots than the
    floor of its fair share and still wants more; a donor keeps more staying workers
    than the ceiling of its share. Floor/ceiling leave a band of one slot, so two
    databases never trade a worker back and forth on rounding.
    """
    if len(plans) < 2:
        return
    level = fair_level(group.max_processes, [plan.demand for plan in plans])
    deficit = 0
    for plan in plans:
        if not plan.can_grow:
            continue
        floor_share = math.floor(min(plan.demand, level))
        have = plan.snapshot.occupancy + plan.give
        unmet = plan.want - plan.give
        if unmet > 0 and have < floor_share:
            deficit += min(unmet, floor_share - have)
    if deficit == 0:
        return
    donors: list[tuple[int, _Plan]] = []
    for plan in plans:
        ceiling_share = math.ceil(min(plan.demand, level))
        surplus = plan.snapshot.staying - ceiling_share
        if surplus > 0:
            donors.append((surplus, plan))
    # Largest surplus first; database name breaks ties (plans are sorted by it).
    donors.sort(key=lambda item: -item[0])
    for surplus, plan in donors:
        if deficit == 0:
            break
        take = min(surplus, deficit)
        plan.retire = _pick_to_retire(plan.snapshot.workers, take)
        deficit -= len(plan.retire)


def _pick_to_retire(workers: Sequence[WorkerReading], count: int) -> list[WorkerReading]:
    """Idle workers first, they lose nothing; then busy ones, oldest first (a graceful
    retire lets the current job finish either way). Workers still starting are left for
    a later pass: they cannot take a signal yet."""
    staying = [worker for worker in workers if not worker.leaving and worker.signalable]
    rank = {WorkerState.IDLE: 0, WorkerState.BUSY: 1}
    staying.sort(key=lambda worker: (rank.get(worker.state, 2), -(worker.age or 0.0)))
    return staying[:count]


# ----------------------------------------------------------------------- limits


def plan_limits(
    groups: Mapping[str, GroupPolicy], watchers: Iterable[WatcherSnapshot]
) -> list[Action]:
    """Memory and lifetime limits of every worker (the monitor's decisions)."""
    actions: list[Action] = []
    for snapshot in watchers:
        group = groups.get(snapshot.group)
        if group is None:
            continue
        for worker in snapshot.workers:
            action = _limit_for(group, snapshot.name, worker)
            if action is not None:
                actions.append(action)
    return actions


def _limit_for(group: GroupPolicy, watcher: str, worker: WorkerReading) -> Action | None:
    memory = worker.memory  # RSS, or USS for a forked worker (readings.WorkerReading)
    forked = worker.forked_pid is not None
    # The hard limit applies to everyone, old and retiring workers included: it exists
    # for the process that would take the host down before its job ends.
    if group.hard_max_memory is not None and memory is not None and memory > group.hard_max_memory:
        reason = RetireReason.HARD_MAX_MEMORY_USS if forked else RetireReason.HARD_MAX_MEMORY
        return KillWorker(watcher, worker.pid, reason)
    if worker.leaving or not worker.signalable:
        # Already finishing (a second SIGTERM would stop it at once), or still starting
        # (no handler yet: SIGTERM would kill it); the next pass looks again.
        return None
    if group.max_memory is not None and memory is not None and memory > group.max_memory:
        reason = RetireReason.MAX_MEMORY_USS if forked else RetireReason.MAX_MEMORY
        return RetireWorker(watcher, worker.pid, reason)
    if (
        group.max_execution is not None
        and worker.age is not None
        and worker.age > group.max_execution
    ):
        return RetireWorker(watcher, worker.pid, RetireReason.MAX_EXECUTION)
    return None
