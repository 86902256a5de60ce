"""One task per database: counts ready jobs when the master asks, keeps the polling
timer, and releases the jobs of dead workers. A database that is down or slow only
delays its own task: the master waits a bounded time for each count and treats a
missing one as "unknown".

Why the master asks for counts instead of the task pushing them: a count is only
meaningful next to the workers observed *before* it. A job counted ready and then taken
by a worker would otherwise be counted twice (ready and busy) and start a worker for
nothing. So a scaling pass of the master observes circus and the workers first, then
asks every database for a count (concurrently), then decides.

The task triggers a scaling pass (``on_due``) when:

* ``polling_interval`` passed since its last count;
* the ``run_at`` of the next scheduled job of one of its groups is reached (each count
  also asks for the seconds until then), so a job due in 3 s starts then;
* it (re)connected after a failure.

NOTIFY wake-ups go from the listener straight to the master's trigger (see
:meth:`DatabasePoller.wake`); any number of triggers before the pass costs one pass.

On the same connection, between counts, the task enqueues the database's recurring
jobs at their due times (recurring.py) and, every :data:`PRUNE_INTERVAL`, prunes kept
finished jobs past their ``keep_until`` and old recurring runs, in bounded DELETEs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import psutil
import psycopg

from circus_djmaster.common.backoff import Backoff
from circus_djmaster.common.logs import event
from circus_djmaster.config.settings import Settings, WorkerGroup
from circus_djmaster.contracts.locked_by import host_prefix, pid_of
from circus_djmaster.contracts.running_jobs import forget, read_running
from circus_djmaster.master.callbacks import MasterCallbacks
from circus_djmaster.master.metrics import MetricsRecorder
from circus_djmaster.master.recurring import RecurringRunner
from circus_djmaster.master.releases import Release, charge_for_death
from circus_djmaster.store import statements
from circus_djmaster.store.async_executor import execute
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import JobFilter, ReleaseOutcome

log = logging.getLogger(__name__)

#: A round trip's client-side bound is the settings' database_timeout (the server's
#: statement_timeout) plus this, so the server normally gives up first.
CLIENT_SLACK = 5.0
#: Wake a little after run_at: the database clock decides, and it must be past it.
SCHEDULE_SLACK = 0.02
#: How often kept finished jobs and old recurring runs are pruned (seconds), and how
#: many rows one DELETE removes at most (a full batch is followed by another at once).
PRUNE_INTERVAL = 60.0
PRUNE_BATCH = 1000
#: Recurring runs enqueued longer ago than this are forgotten (each entry's latest kept).
RECURRING_RUNS_KEPT = 86400.0

Connect = Callable[[], Awaitable[psycopg.AsyncConnection[Any]]]
Counts = dict[str, int]


class Health(enum.Enum):
    CONNECTING = "connecting"  # first connection, or reconnecting after a back-off
    READY = "ready"
    BACKING_OFF = "backing off"  # failed: counts are "unknown" until it reconnects


def groups_for_queues(queues: frozenset[str] | None, groups: Iterable[WorkerGroup]) -> set[str]:
    """Names of the groups that serve any of ``queues`` (None: every group). A group with
    no queues serves every queue; ``""`` stands for jobs without a queue, which only such
    groups take."""
    names: set[str] = set()
    if queues is not None and not queues:
        return names
    for group in groups:
        if queues is None or not group.queues or queues & set(group.queues):
            names.add(group.name)
    return names


class DatabasePoller:
    def __init__(
        self,
        settings: Settings,
        database: str,
        connect: Connect,
        on_due: Callable[[], None],
        *,
        callbacks: MasterCallbacks | None = None,
        master: object = None,
        backoff: Backoff | None = None,
        host: str | None = None,
        metrics: MetricsRecorder | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics or MetricsRecorder()
        self.database = database
        self._connect = connect
        self._on_due = on_due
        self._callbacks = callbacks or MasterCallbacks()
        self._master = master
        self._backoff = backoff or Backoff()
        self.host = host or socket.gethostname()
        self._timeout = settings.database_timeout + CLIENT_SLACK
        self._fresh = False
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._wake = asyncio.Event()
        self._requests: list[asyncio.Future[Counts | None]] = []
        self._releases: list[Release] = []
        self._failures = 0
        self._deadline = 0.0  # monotonic time of the next timed trigger
        #: This database's recurring entries (the master sets them: loop.py).
        self.recurring = RecurringRunner(database)
        self._recurring_deadline = 0.0  # monotonic time of the next due time
        self._prune_deadline = 0.0  # monotonic time of the next pruning
        self._missing_table_reported = False
        self.health = Health.CONNECTING
        self.last_count: float | None = None  # monotonic time of the last good count

    # --- called by the listener and the master (never block) ---------------------

    def wake(self, queues: frozenset[str] | None = None) -> None:
        """A NOTIFY (or a reconnected listener): trigger a pass if a group cares."""
        if groups_for_queues(queues, self.settings.workers):
            self._on_due()

    def release(self, releases: Iterable[Release]) -> None:
        added = list(releases)
        if added:
            self._releases.extend(added)
            self._wake.set()

    async def count(self, timeout: float) -> Counts | None:
        """Ready jobs per group, counted after this call; None if the database is down
        or does not answer within ``timeout``."""
        # Down, or connecting again after a failure (up to the connect timeout when the
        # server hangs): "unknown" at once, so the other databases' scaling never waits.
        if self.health is Health.BACKING_OFF or (
            self.health is Health.CONNECTING and self._failures
        ):
            return None
        future: asyncio.Future[Counts | None] = asyncio.get_running_loop().create_future()
        self._requests.append(future)
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            log.warning(
                "database %s: no count within %.1fs; skipping it this pass", self.database, timeout
            )
            return None

    # --- the task -----------------------------------------------------------------

    async def run(self) -> None:
        while True:
            try:
                conn = await self._connection()
                if self._fresh:
                    await self._release_orphans(conn)
                    self._fresh = False
                await self._release_pending(conn)
                if self._requests:
                    await self._answer(conn)
                await self._background(conn)
                if self._failures:
                    log.info("database %s: reachable again", self.database)
                    self._on_due()  # look at it now that it answers
                self._failures = 0
                self._backoff.reset()
                self.health = Health.READY
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await self._failed(error)
                continue
            if time.monotonic() >= self._deadline:
                self._deadline = time.monotonic() + self.settings.polling_interval
                self._on_due()
            await self._sleep()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):  # it is going away either way
                await asyncio.wait_for(conn.close(), 2.0)
        self._settle(None)

    async def _sleep(self) -> None:
        if self._releases or self._requests:
            return
        wake_at = self._deadline
        if self.recurring.entries:
            wake_at = min(wake_at, self._recurring_deadline)
        wake_at = min(wake_at, self._prune_deadline)
        timeout = max(0.0, wake_at - time.monotonic())
        # asyncio.wait, not wait_for: Python < 3.12's wait_for swallows a cancellation
        # that arrives once the event is set (it returns the result instead), and the
        # task would then never stop (seen when a count request and the master's stop
        # came together).
        waiter = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
        self._wake.clear()

    async def _failed(self, error: BaseException) -> None:
        self._failures += 1
        self._metrics.database_error(self.database)
        self.health = Health.BACKING_OFF
        self._settle(None)
        await self.close()
        delay = self._backoff.next()
        log.warning(
            "database %s: %s; retrying in %.1fs (attempt %d)",
            self.database,
            describe_error(error),
            delay,
            self._failures,
        )
        await asyncio.sleep(delay)
        self.health = Health.CONNECTING

    def _settle(self, counts: Counts | None) -> None:
        requests, self._requests = self._requests, []
        for future in requests:
            if not future.done():
                future.set_result(counts)

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await asyncio.wait_for(self._connect(), self._timeout)
            self._fresh = True
        return self._conn

    async def _release_orphans(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Release the jobs of this host's workers that no longer exist.

        The master releases the jobs of a worker it saw die; one that died while no
        master was running (or while this database was unreachable) is found here, on
        every (re)connect. A pid that still exists is left alone: it is a live worker,
        or a reused pid whose lock will expire by itself.
        """
        owners = await self._timed(
            execute(conn, statements.locked_by_on_host(host_prefix(self.host)))
        )
        releases = []
        for owner in owners:
            pid = pid_of(owner)
            if pid is not None and not psutil.pid_exists(pid):
                releases.append(
                    Release(
                        owner,
                        f"worker pid {pid} on {self.host} was gone (found when the master "
                        "connected)",
                        charge_for_death(read_running(pid)),
                    )
                )
                forget(pid)
        if releases:
            log.warning(
                "database %s: releasing the jobs of %d vanished worker(s) of this host",
                self.database,
                len(releases),
            )
            self.release(releases)

    async def _answer(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Count every group for the waiting requests; set the next timed trigger."""
        counts: Counts = {}
        soonest = self.settings.polling_interval

        async def block() -> None:
            nonlocal soonest
            for group in self.settings.workers:
                flt = JobFilter.of(group)
                limit = group.max_processes * group.max_threads
                count = statements.count_ready(
                    flt, lock_timeout=self.settings.lock_timeout, limit=limit
                )
                counts[group.name] = await self._timed(execute(conn, count))
                next_due = await self._timed(execute(conn, statements.seconds_to_next(flt)))
                if next_due is not None:
                    soonest = min(soonest, max(0.0, next_due) + SCHEDULE_SLACK)

        await self._callbacks.call("before_polling", self._master, self.database)
        await self._callbacks.around("around_polling", block, self._master, self.database)
        await self._callbacks.call("after_polling", self._master, self.database)
        self.last_count = time.monotonic()
        self._deadline = self.last_count + soonest
        log.debug("database %s: ready %s; next look in %.2fs", self.database, counts, soonest)
        self._settle(counts)

    async def _background(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Recurring jobs when one is due, pruning when its interval passed. A database
        not migrated to this version yet (no such table) is told once, then left alone
        until the next interval: counts and releases go on."""

        async def run(statement: statements.Statement[Any]) -> Any:
            return await self._timed(execute(conn, statement))

        now = time.monotonic()
        try:
            if self.recurring.entries and now >= self._recurring_deadline:
                wait = await self.recurring.enqueue_due(run, dt.datetime.now(dt.timezone.utc))
                self._recurring_deadline = time.monotonic() + (
                    PRUNE_INTERVAL if wait is None else wait + SCHEDULE_SLACK
                )
            if now >= self._prune_deadline:
                self._prune_deadline = now + PRUNE_INTERVAL
                await self._prune(run)
        except psycopg.errors.UndefinedTable as error:
            self._recurring_deadline = self._prune_deadline = now + PRUNE_INTERVAL
            if not self._missing_table_reported:
                self._missing_table_reported = True
                log.warning(
                    "database %s: %s: run `djmaster migrate` (recurring jobs and the "
                    "pruning of finished jobs wait for it)",
                    self.database,
                    describe_error(error),
                )

    async def _prune(self, run: Callable[[statements.Statement[Any]], Awaitable[Any]]) -> None:
        pruned = 0
        for _ in range(10):  # at most 10 batches per interval: never hog the connection
            deleted = int(await run(statements.prune_finished_jobs(limit=PRUNE_BATCH)))
            pruned += deleted
            if deleted < PRUNE_BATCH:
                break
        runs = int(
            await run(
                statements.prune_recurring_runs(older_than=RECURRING_RUNS_KEPT, limit=PRUNE_BATCH)
            )
        )
        if pruned or runs:
            log.info(
                "database %s: pruned %d finished job(s) past keep_until, %d old recurring run(s)",
                self.database,
                pruned,
                runs,
                extra=event("pruned", database=self.database, jobs=pruned, runs=runs),
            )

    async def _release_pending(self, conn: psycopg.AsyncConnection[Any]) -> None:
        released_any = False
        while self._releases:
            release = self._releases[0]
            released = await self._timed(execute(conn, release.statement()))
            self._releases.pop(0)  # only once done: a failure retries it
            for job in released:
                released_any = True
                self._metrics.released(self.database, job.outcome.name.lower())
                self._log_release(release, job.id, job.attempts, job.outcome)
        if released_any:
            self._on_due()  # jobs are ready again: count them now

    def _log_release(
        self, release: Release, job_id: int, attempts: int, outcome: ReleaseOutcome
    ) -> None:
        extra = event(
            "job_released",
            database=self.database,
            job_id=job_id,
            owner=release.locked_by,
            outcome=outcome.name,
            attempts=attempts,
        )
        if outcome in (ReleaseOutcome.FAILED, ReleaseOutcome.DESTROYED):
            log.error(
                "database %s: job %d of a dead worker (%s) %s for good after %d attempt(s): %s",
                self.database,
                job_id,
                release.locked_by,
                "failed" if outcome is ReleaseOutcome.FAILED else "failed and was deleted",
                attempts,
                release.charged_error(),
                extra=extra,
            )
        elif outcome is ReleaseOutcome.RETRY:
            log.warning(
                "database %s: released job %d of a dead worker (%s) for an immediate retry "
                "(attempt %d charged): %s",
                self.database,
                job_id,
                release.locked_by,
                attempts,
                release.charged_error(),
                extra=extra,
            )
        elif outcome is ReleaseOutcome.ISOLATED:
            log.warning(
                "database %s: released job %d of a dead worker (%s) to run alone, no "
                "attempt charged: %s",
                self.database,
                job_id,
                release.locked_by,
                release.isolated_error(),
                extra=extra,
            )
        else:
            log.info(
                "database %s: released job %d that a dead worker (%s) held without running it",
                self.database,
                job_id,
                release.locked_by,
                extra=extra,
            )

    async def _timed(self, awaitable: Awaitable[Any]) -> Any:
        return await asyncio.wait_for(awaitable, self._timeout)
