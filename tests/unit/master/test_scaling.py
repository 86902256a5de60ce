"""The master's pure decisions (scaling.py): tables of snapshots and expected actions."""

from __future__ import annotations

import itertools

import pytest

from circus_djmaster.contracts.titles import WorkerState
from circus_djmaster.master.readings import WorkerReading
from circus_djmaster.master.scaling import (
    GroupPolicy,
    GrowWatcher,
    KillWorker,
    ParkWatcher,
    RetireReason,
    RetireWorker,
    StartWatcher,
    WatcherSnapshot,
    WatcherStatus,
    fair_level,
    plan_group,
    plan_limits,
    plan_scaling,
    processes_needed,
    water_fill,
)

ACTIVE = WatcherStatus.ACTIVE
STOPPED = WatcherStatus.STOPPED
IDLE = WorkerState.IDLE
BUSY = WorkerState.BUSY
OLD = WorkerState.OLD
STARTING = WorkerState.STARTING
MB = 2**20
_pids = itertools.count(1000)


def workers(
    *states: WorkerState, retiring: bool = False, **fields: object
) -> tuple[WorkerReading, ...]:
    return tuple(
        WorkerReading(next(_pids), state, retiring=retiring, **fields)  # type: ignore[arg-type]
        for state in states
    )


def watcher(
    database: str = "primary",
    *,
    group: str = "g",
    ready: int | None = 0,
    status: WatcherStatus = ACTIVE,
    numprocesses: int | None = None,
    live: tuple[WorkerReading, ...] = (),
    blocked: bool = False,
    parked: bool = False,
) -> WatcherSnapshot:
    return WatcherSnapshot(
        name=f"djmaster-{group}-{database}",
        group=group,
        database=database,
        status=status,
        numprocesses=len(live) if numprocesses is None else numprocesses,
        workers=live,
        ready=ready,
        blocked=blocked,
        parked=parked,
    )


def policy(max_processes: int = 3, **fields: object) -> GroupPolicy:
    return GroupPolicy(name="g", max_processes=max_processes, **fields)  # type: ignore[arg-type]


def growth(actions: list[object]) -> dict[str, int]:
    """Watcher -> processes added (start or incr)."""
    result: dict[str, int] = {}
    for action in actions:
        if isinstance(action, StartWatcher):
            result[action.watcher] = action.numprocesses
        elif isinstance(action, GrowWatcher):
            result[action.watcher] = action.count
    return result


# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize(
    ("ready", "threads", "expected"),
    [(0, 1, 0), (-1, 1, 0), (1, 1, 1), (5, 1, 5), (5, 2, 3), (4, 2, 2), (1, 8, 1), (3, 0, 3)],
)
def test_processes_needed(ready: int, threads: int, expected: int) -> None:
    assert processes_needed(ready, threads) == expected


@pytest.mark.parametrize(
    ("capacity", "demands", "base", "rotation", "expected"),
    [
        (0, [5, 5], None, 0, [0, 0]),
        (3, [5, 5], None, 0, [2, 1]),
        (3, [5, 5], None, 1, [1, 2]),
        (4, [5, 5], None, 0, [2, 2]),
        (4, [1, 5], None, 0, [1, 3]),
        (10, [1, 2], None, 0, [1, 2]),  # never more than demanded
        (2, [5, 5], [2, 0], 0, [0, 2]),  # the lower base is filled first
        (3, [5, 5, 5], [1, 0, 0], 0, [1, 1, 1]),
        (3, [5, 5, 5], [1, 0, 0], 2, [0, 1, 2]),
        (6, [3, 3, 3], None, 0, [2, 2, 2]),
        (2, [0, 4, 4], None, 0, [0, 1, 1]),
        (5, [], None, 0, []),
    ],
)
def test_water_fill(
    capacity: int, demands: list[int], base: list[int] | None, rotation: int, expected: list[int]
) -> None:
    assert water_fill(capacity, demands, base, rotation) == expected


def test_water_fill_never_overshoots_and_is_balanced() -> None:
    for capacity, a, b, c in itertools.product(range(7), range(5), range(5), range(5)):
        given = water_fill(capacity, [a, b, c])
        assert sum(given) == min(capacity, a + b + c)
        assert all(g <= d for g, d in zip(given, [a, b, c], strict=True))
        # Max-min fair: an entry below another's share by 2 or more still wanted more.
        for i, j in itertools.permutations(range(3), 2):
            if given[j] - given[i] >= 2:
                assert given[i] == [a, b, c][i]


@pytest.mark.parametrize(
    ("capacity", "demands", "level"),
    [
        (4, [10, 10], 2.0),
        (3, [10, 10], 1.5),
        (4, [1, 10], 3.0),
        (10, [1, 2], 2.0),
        (0, [3], 0.0),
        (3, [], 0.0),
        (6, [1, 10, 10], 2.5),
    ],
)
def test_fair_level(capacity: int, demands: list[int], level: float) -> None:
    assert fair_level(capacity, demands) == pytest.approx(level)


# ---------------------------------------------------------------------- scaling


def test_nothing_ready_nothing_done() -> None:
    assert plan_scaling({"g": policy()}, [watcher(ready=0, status=STOPPED)]) == []


def test_a_stopped_watcher_is_started_with_its_target() -> None:
    actions = plan_scaling({"g": policy(3)}, [watcher(ready=2, status=STOPPED, numprocesses=0)])
    assert actions == [StartWatcher("djmaster-g-primary", 2)]


def test_a_stale_target_of_a_stopped_watcher_is_ignored() -> None:
    # circus keeps numprocesses when it stops a watcher; stopped means nothing runs.
    actions = plan_scaling({"g": policy(3)}, [watcher(ready=5, status=STOPPED, numprocesses=3)])
    assert actions == [StartWatcher("djmaster-g-primary", 3)]


def test_an_active_watcher_is_grown_relatively() -> None:
    actions = plan_scaling({"g": policy(3)}, [watcher(ready=5, live=workers(BUSY))])
    assert actions == [GrowWatcher("djmaster-g-primary", 2)]


@pytest.mark.parametrize(
    ("ready", "live", "numprocesses", "max_processes", "threads", "expected"),
    [
        (1, (), 0, 3, 1, 1),
        (10, (), 0, 3, 1, 3),  # capped at max_processes
        (10, (BUSY,), 1, 3, 1, 2),
        (10, (BUSY, BUSY, BUSY), 3, 3, 1, 0),  # full
        (1, (IDLE,), 1, 3, 1, 0),  # an idle worker takes it
        (1, (STARTING,), 1, 3, 1, 0),  # so does one still starting
        (2, (IDLE,), 1, 3, 1, 1),
        (1, (), 1, 3, 1, 0),  # circus is about to spawn one
        (3, (), 2, 3, 1, 1),  # ... two, and a third is needed
        (1, (OLD,), 1, 3, 1, 1),  # an old worker takes nothing new
        (1, (OLD, OLD, OLD), 3, 3, 1, 0),  # but holds its slot
        (4, (), 0, 3, 2, 2),  # threads: 2 jobs per process
        (5, (), 0, 3, 2, 3),
        (2, (IDLE,), 1, 3, 2, 0),  # an idle process runs 2 jobs
    ],
)
def test_growth_table(
    ready: int,
    live: tuple[WorkerState, ...],
    numprocesses: int,
    max_processes: int,
    threads: int,
    expected: int,
) -> None:
    snapshot = watcher(ready=ready, live=workers(*live), numprocesses=numprocesses)
    actions = plan_scaling({"g": policy(max_processes, max_threads=threads)}, [snapshot])
    assert growth(actions).get("djmaster-g-primary", 0) == expected


def test_retiring_workers_hold_slots_but_take_no_jobs() -> None:
    live = workers(IDLE, retiring=True) + workers(BUSY)
    actions = plan_scaling({"g": policy(3)}, [watcher(ready=2, live=live)])
    assert actions == [GrowWatcher("djmaster-g-primary", 1)]


@pytest.mark.parametrize(
    "status", [WatcherStatus.STOPPING, WatcherStatus.STARTING, WatcherStatus.UNKNOWN]
)
def test_transitional_watchers_are_left_alone(status: WatcherStatus) -> None:
    assert plan_scaling({"g": policy()}, [watcher(ready=3, status=status)]) == []


def test_unknown_ready_count_grows_nothing() -> None:
    assert plan_scaling({"g": policy()}, [watcher(ready=None, status=STOPPED)]) == []


def test_blocked_watcher_is_not_scaled() -> None:
    snapshot = watcher(ready=5, status=STOPPED, blocked=True, parked=True)
    assert plan_scaling({"g": policy()}, [snapshot]) == []


def test_blocked_watcher_is_parked_once_empty() -> None:
    blocked = watcher(ready=5, status=ACTIVE, blocked=True)
    assert plan_scaling({"g": policy()}, [blocked]) == [ParkWatcher("djmaster-g-primary")]
    still_running = watcher(ready=5, live=workers(BUSY), blocked=True)
    assert plan_scaling({"g": policy()}, [still_running]) == []
    parked = watcher(ready=5, status=STOPPED, blocked=True, parked=True)
    assert plan_scaling({"g": policy()}, [parked]) == []


def test_blocked_watcher_keeps_its_slots_counted() -> None:
    # A blocked watcher still running one worker holds a slot of the group.
    blocked = watcher("a", ready=5, live=workers(BUSY), blocked=True)
    other = watcher("b", ready=5, status=STOPPED)
    assert growth(plan_scaling({"g": policy(2)}, [blocked, other])) == {"djmaster-g-b": 1}


def test_unknown_group_is_ignored() -> None:
    assert plan_scaling({}, [watcher(ready=3, status=STOPPED)]) == []


# -------------------------------------------------------------------- fairness


@pytest.mark.parametrize(
    ("max_processes", "ready", "occupied", "expected"),
    [
        # Both databases empty-handed: the slots are split, never overshoot.
        (3, [5, 5], [0, 0], [2, 1]),
        (4, [5, 5], [0, 0], [2, 2]),
        (4, [1, 5], [0, 0], [1, 3]),
        (4, [5, 5, 5], [0, 0, 0], [2, 1, 1]),
        (2, [5, 5, 5], [0, 0, 0], [1, 1, 0]),
        # The database already holding slots gets the rest last.
        (4, [5, 5], [2, 0], [0, 2]),
        (4, [5, 5], [3, 0], [0, 1]),
        (6, [9, 9, 9], [3, 1, 0], [0, 1, 1]),
        # Full: nothing to give.
        (3, [5, 5], [3, 0], [0, 0]),
        # Demand below the free slots.
        (10, [2, 3], [0, 0], [2, 3]),
        (10, [0, 3], [0, 0], [0, 3]),
    ],
)
def test_fair_growth_across_databases(
    max_processes: int, ready: list[int], occupied: list[int], expected: list[int]
) -> None:
    names = ["a", "b", "c"][: len(ready)]
    snapshots = [
        watcher(name, ready=count, live=workers(*[BUSY] * held))
        for name, count, held in zip(names, ready, occupied, strict=True)
    ]
    actions = [
        a for a in plan_group(policy(max_processes), snapshots) if not isinstance(a, RetireWorker)
    ]
    got = growth(actions)
    assert [got.get(f"djmaster-g-{name}", 0) for name in names] == expected
    total = sum(occupied) + sum(expected)
    assert total <= max_processes


def test_rotation_moves_the_odd_slot() -> None:
    snapshots = [watcher("a", ready=5, status=STOPPED), watcher("b", ready=5, status=STOPPED)]
    first = growth(plan_group(policy(3), snapshots, rotation=0))
    second = growth(plan_group(policy(3), snapshots, rotation=1))
    assert first == {"djmaster-g-a": 2, "djmaster-g-b": 1}
    assert second == {"djmaster-g-a": 1, "djmaster-g-b": 2}


def test_old_generation_counts_against_max_processes() -> None:
    # After a restart (USR2) the old workers finish their jobs: they hold slots.
    old = watcher("a", ready=5, live=workers(OLD, OLD))
    other = watcher("b", ready=5, status=STOPPED)
    actions = plan_group(policy(3), [old, other])
    assert growth(actions) == {"djmaster-g-b": 1}
    assert not [a for a in actions if isinstance(a, RetireWorker)]


def test_groups_are_independent() -> None:
    snapshots = [
        watcher("primary", group="g", ready=5, status=STOPPED),
        watcher("primary", group="h", ready=5, status=STOPPED),
    ]
    groups = {"g": policy(2), "h": GroupPolicy(name="h", max_processes=1)}
    assert growth(plan_scaling(groups, snapshots)) == {
        "djmaster-g-primary": 2,
        "djmaster-h-primary": 1,
    }


# -------------------------------------------------------------------- starvation


def retirements(actions: list[object]) -> list[RetireWorker]:
    return [a for a in actions if isinstance(a, RetireWorker)]


def test_a_starved_database_gets_a_slot_by_retirement() -> None:
    hog = watcher("a", ready=50, live=workers(BUSY, BUSY, BUSY))
    starved = watcher("b", ready=5, status=STOPPED)
    actions = plan_group(policy(3), [hog, starved])
    assert growth(actions) == {}
    retired = retirements(actions)
    assert len(retired) == 1
    assert retired[0].watcher == "djmaster-g-a"
    assert retired[0].reason is RetireReason.REBALANCE


def test_retirement_in_flight_is_not_repeated() -> None:
    live = workers(BUSY, BUSY) + workers(BUSY, retiring=True)
    hog = watcher("a", ready=50, live=live)
    starved = watcher("b", ready=5, status=STOPPED)
    assert plan_group(policy(3), [hog, starved]) == []


def test_no_trading_on_rounding() -> None:
    # 3 slots, two busy databases: 2 + 1 is fair either way round.
    a = watcher("a", ready=50, live=workers(BUSY, BUSY))
    b = watcher("b", ready=50, live=workers(BUSY))
    for rotation in range(3):
        assert plan_group(policy(3), [a, b], rotation=rotation) == []
        assert plan_group(policy(3), [b, a], rotation=rotation) == []


def test_idle_workers_are_retired_first_then_the_oldest() -> None:
    live = (
        workers(BUSY, age=100.0)
        + workers(IDLE, age=1.0)
        + workers(BUSY, age=50.0)
        + workers(BUSY, age=10.0)
    )
    hog = watcher("a", ready=0, live=live)
    starved = watcher("b", ready=5, status=STOPPED)
    retired = retirements(plan_group(policy(4), [hog, starved]))
    # Demands: a keeps 3 busy, b could use 4; the fair level over 4 slots is 2 each.
    assert [r.pid for r in retired] == [live[1].pid, live[0].pid]


def test_starting_workers_are_not_retired() -> None:
    # A worker still starting has no TERM handler yet: rebalancing waits for its title.
    hog = watcher("a", ready=50, live=workers(STARTING, STARTING, STARTING))
    starved = watcher("b", ready=5, status=STOPPED)
    assert retirements(plan_group(policy(3), [hog, starved])) == []
    mixed = watcher("a", ready=50, live=workers(STARTING, STARTING) + workers(BUSY))
    (retired,) = retirements(plan_group(policy(3), [mixed, starved]))
    assert retired.pid == mixed.workers[2].pid


def test_no_retirement_for_a_database_without_demand() -> None:
    hog = watcher("a", ready=50, live=workers(BUSY, BUSY, BUSY))
    quiet = watcher("b", ready=0, status=STOPPED)
    unknown = watcher("c", ready=None, status=STOPPED)
    blocked = watcher("d", ready=5, status=STOPPED, blocked=True, parked=True)
    assert plan_group(policy(3), [hog, quiet, unknown, blocked]) == []


def test_three_databases_converge_to_fair_shares() -> None:
    # Simulate: each tick, apply the actions; retired workers leave the next tick.
    pids = itertools.count(1)
    state: dict[str, list[WorkerReading]] = {"a": [], "b": [], "c": []}
    for _ in range(12):
        snapshots = [
            watcher(name, ready=100, live=tuple(state[name]), status=ACTIVE)
            for name in ("a", "b", "c")
        ]
        # Workers marked retiring last tick are gone now.
        for name in state:
            state[name] = [w for w in state[name] if not w.retiring]
        actions = plan_group(policy(7), snapshots)
        for action in actions:
            name = action.watcher.rsplit("-", 1)[1]
            if isinstance(action, GrowWatcher):
                state[name] += [WorkerReading(next(pids), BUSY) for _ in range(action.count)]
            elif isinstance(action, RetireWorker):
                state[name] = [
                    WorkerReading(w.pid, w.state, retiring=True) if w.pid == action.pid else w
                    for w in state[name]
                ]
        assert sum(len(v) for v in state.values()) <= 7
    assert sorted(len(v) for v in state.values()) == [2, 2, 3]


# ----------------------------------------------------------------------- limits


def limits(**fields: object) -> dict[str, GroupPolicy]:
    return {"g": policy(3, **fields)}


@pytest.mark.parametrize(
    ("worker", "fields", "expected"),
    [
        (WorkerReading(1, BUSY, rss=100 * MB), {"max_memory": 200 * MB}, None),
        (
            WorkerReading(1, BUSY, rss=300 * MB),
            {"max_memory": 200 * MB},
            RetireWorker("djmaster-g-primary", 1, RetireReason.MAX_MEMORY),
        ),
        (
            WorkerReading(1, IDLE, rss=300 * MB),
            {"max_memory": 200 * MB, "hard_max_memory": 250 * MB},
            KillWorker("djmaster-g-primary", 1, RetireReason.HARD_MAX_MEMORY),
        ),
        # Hard limit applies to leaving workers too; the soft one does not repeat.
        (
            WorkerReading(1, OLD, rss=300 * MB),
            {"hard_max_memory": 250 * MB},
            KillWorker("djmaster-g-primary", 1, RetireReason.HARD_MAX_MEMORY),
        ),
        (WorkerReading(1, BUSY, rss=300 * MB, retiring=True), {"max_memory": 200 * MB}, None),
        (WorkerReading(1, OLD, rss=300 * MB), {"max_memory": 200 * MB}, None),
        (WorkerReading(1, BUSY, rss=None), {"max_memory": 1}, None),
        (WorkerReading(1, BUSY, age=10.0), {"max_execution": 60.0}, None),
        (
            WorkerReading(1, BUSY, age=61.0),
            {"max_execution": 60.0},
            RetireWorker("djmaster-g-primary", 1, RetireReason.MAX_EXECUTION),
        ),
        (WorkerReading(1, BUSY, age=61.0, retiring=True), {"max_execution": 60.0}, None),
        (WorkerReading(1, BUSY, rss=10 * MB, age=1e9), {}, None),
        # Still starting: no signal handler yet, SIGTERM would kill it. SIGKILL is fine.
        (WorkerReading(1, STARTING, rss=300 * MB), {"max_memory": 200 * MB}, None),
        (WorkerReading(1, STARTING, age=61.0), {"max_execution": 60.0}, None),
        (
            WorkerReading(1, STARTING, rss=300 * MB),
            {"hard_max_memory": 250 * MB},
            KillWorker("djmaster-g-primary", 1, RetireReason.HARD_MAX_MEMORY),
        ),
        # A forked worker (spawn = "fork") is measured by its USS: the 450 MB it shares
        # with the preloader count in its RSS, not against its limits.
        (
            WorkerReading(1, BUSY, rss=450 * MB, forked_pid=2, uss=3 * MB),
            {"max_memory": 200 * MB, "hard_max_memory": 250 * MB},
            None,
        ),
        (
            WorkerReading(1, BUSY, rss=650 * MB, forked_pid=2, uss=210 * MB),
            {"max_memory": 200 * MB},
            RetireWorker("djmaster-g-primary", 1, RetireReason.MAX_MEMORY_USS),
        ),
        (
            WorkerReading(1, BUSY, rss=700 * MB, forked_pid=2, uss=260 * MB),
            {"max_memory": 200 * MB, "hard_max_memory": 250 * MB},
            KillWorker("djmaster-g-primary", 1, RetireReason.HARD_MAX_MEMORY_USS),
        ),
        # Its USS unreadable (the worker just ended): nothing, whatever its RSS.
        (WorkerReading(1, BUSY, rss=700 * MB, forked_pid=2), {"max_memory": 1}, None),
    ],
)
def test_limits(worker: WorkerReading, fields: dict[str, object], expected: object) -> None:
    actions = plan_limits(limits(**fields), [watcher(live=(worker,))])
    assert actions == ([] if expected is None else [expected])


def test_snapshot_occupancy() -> None:
    snapshot = watcher(live=workers(BUSY), numprocesses=3)
    assert (snapshot.live, snapshot.pending, snapshot.occupancy, snapshot.spare) == (1, 2, 3, 2)
    stopped = watcher(status=STOPPED, numprocesses=3)
    assert (stopped.pending, stopped.occupancy) == (0, 0)


def test_status_parse() -> None:
    assert WatcherStatus.parse("active") is ACTIVE
    assert WatcherStatus.parse("Stopped") is STOPPED
    assert WatcherStatus.parse(None) is WatcherStatus.UNKNOWN
