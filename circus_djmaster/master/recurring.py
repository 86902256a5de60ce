"""Recurring jobs in the master: which due times to enqueue (pure), and the database
side of it, run by each database's poller (polling.py) on its own connection.

Rules (:func:`plan_recurring`), from the database clock's ``now`` and the latest due
time each entry had enqueued (``delayed_jobs_recurring_runs``):

* an entry's latest due time at or before ``now`` is enqueued if it is not yet, and
  is on time: at most :data:`GRACE` old (a master is that late only when it was not
  running, or its database was down);
* an older one was missed while no master ran: skipped, unless the entry has
  ``catch_up`` and ran before, in which case that one (the last missed, never the ones
  before it) is enqueued once;
* a new entry starts with its next due time (or the current one, if on time).

Exactly once per due time, however many masters try: the insert of the run and of the
job is one statement that a primary key admits once (``enqueue_recurring_job`` in
store/sql/queries.sql). No clock race decides it: a late master finds the row there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from circus_djmaster.api import handler as handler_format
from circus_djmaster.common.logs import event
from circus_djmaster.common.recurring import RecurringJob
from circus_djmaster.store import statements
from circus_djmaster.store.statements import RecurringState, Statement

__all__ = ["GRACE", "Due", "RecurringRunner", "plan_recurring", "seconds_to_next_due"]

log = logging.getLogger(__name__)

#: How late a due time may be enqueued and still count as on time (seconds).
GRACE = 60.0


@dataclasses.dataclass(frozen=True)
class Due:
    """Enqueue ``entry`` for ``due_at``; ``caught_up``: a due time missed while no
    master ran (``catch_up``)."""

    entry: RecurringJob
    due_at: dt.datetime
    caught_up: bool = False


def plan_recurring(
    entries: Iterable[RecurringJob], state: RecurringState, *, grace: float = GRACE
) -> list[Due]:
    """The due times to enqueue now (the module's rules)."""
    planned = []
    for entry in entries:
        due = entry.latest_due(state.now)
        last = state.last_due.get(entry.name)
        if last is not None and due <= last:
            continue  # enqueued already (by this master or another)
        if (state.now - due).total_seconds() <= grace:
            planned.append(Due(entry, due))
        elif entry.catch_up and last is not None:
            planned.append(Due(entry, due, caught_up=True))
    return planned


def seconds_to_next_due(entries: Iterable[RecurringJob], now: dt.datetime) -> float | None:
    """Seconds from ``now`` to the soonest next due time (None: no entry)."""
    waits = [(entry.next_due(now) - now).total_seconds() for entry in entries]
    return max(0.0, min(waits)) if waits else None


Run = Callable[[Statement[Any]], Awaitable[Any]]


class RecurringRunner:
    """The recurring entries of one database, run on its poller's connection."""

    def __init__(self, database: str, entries: Sequence[RecurringJob] = ()) -> None:
        self.database = database
        self.entries = list(entries)

    async def enqueue_due(self, run: Run, fallback_now: dt.datetime) -> float | None:
        """Enqueue what is due (``run`` executes a statement on the poller's
        connection); the seconds until the next due time (None: no entry)."""
        if not self.entries:
            return None
        names = [entry.name for entry in self.entries]
        state: RecurringState = await run(statements.recurring_last_runs(names, now=fallback_now))
        for due in plan_recurring(self.entries, state):
            entry = due.entry
            job_id = await run(
                statements.enqueue_recurring_job(
                    name=entry.name,
                    due_at=due.due_at,
                    handler=handler_format.encode(entry.callable, entry.args, entry.kwargs),
                    queue=entry.queue,
                    priority=entry.priority,
                )
            )
            if job_id is None:
                log.debug(
                    "database %s: recurring %s due %s was enqueued by another master",
                    self.database,
                    entry.name,
                    due.due_at.isoformat(),
                )
                continue
            log.info(
                "database %s: recurring %s due %s enqueued as job %d%s",
                self.database,
                entry.name,
                due.due_at.isoformat(),
                job_id,
                " (missed while no master ran: catch_up)" if due.caught_up else "",
                extra=event(
                    "recurring_enqueued",
                    database=self.database,
                    recurring=entry.name,
                    job_id=job_id,
                ),
            )
        return seconds_to_next_due(self.entries, state.now)
