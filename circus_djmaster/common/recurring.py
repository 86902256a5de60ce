"""Recurring jobs: what an entry is, and when it is due (pure; no I/O).

An entry (``[[recurring]]`` in the settings, or ``@recurring`` in code) enqueues one
job of ``callable`` at each of its due times, given by a cron expression (``cron``,
evaluated by `cronsim <https://pypi.org/project/cronsim/>`_ in ``timezone``, Debian
cron's rules across daylight-saving changes; five fields, or six with seconds first)
or by a period (``every``, seconds: the due times are the multiples of it since the
Unix epoch, so every master on every host agrees on them without talking to the
others).

Which due times the master enqueues, and how it makes each happen once, is
``master/recurring.py``; the one-row-per-due-time table is in ``store/sql/schema.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["RecurringJob", "check_cron", "check_timezone"]

UTC = dt.timezone.utc
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def check_cron(expression: str) -> None:
    """Raise ValueError (cronsim's reason) if ``expression`` is not a cron expression
    cronsim accepts."""
    from cronsim import CronSim, CronSimError  # only where recurring jobs are used

    try:
        CronSim(expression, dt.datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as error:
        raise ValueError(f'"{expression}" is not a cron expression: {error}') from None


def check_timezone(name: str) -> None:
    """Raise ValueError if ``name`` is not an IANA time zone zoneinfo knows."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'"{name}" is not a time zone (examples: UTC, Europe/Paris)') from None


@dataclasses.dataclass(frozen=True)
class RecurringJob:
    """One recurring entry: the job it enqueues and its schedule.

    Exactly one of ``cron`` (an expression) and ``every`` (seconds > 0) is set.
    ``database``: the settings' database it goes to (None: the first). ``catch_up``:
    when due times passed while no master ran, enqueue the last of them once (else they
    are skipped). Raises ValueError for a bad field (a message naming it).
    """

    name: str
    callable: str
    cron: str | None = None
    every: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    timezone: str = "UTC"
    catch_up: bool = False
    database: str | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ValueError("give cron or every (exactly one)")
        if self.cron is not None:
            check_cron(self.cron)
        if self.every is not None and not (math.isfinite(self.every) and self.every > 0):
            raise ValueError(f"every must be more than 0 seconds, got {self.every!r}")
        check_timezone(self.timezone)

    @property
    def schedule(self) -> str:
        """The schedule as written: ``cron "0 3 * * *" (Europe/Paris)`` or ``every 30s``."""
        if self.cron is not None:
            return f'cron "{self.cron}" ({self.timezone})'
        return f"every {self.every:g}s"

    def latest_due(self, now: dt.datetime) -> dt.datetime:
        """The latest due time at or before ``now`` (aware), in UTC."""
        if self.every is not None:
            seconds = (now - _EPOCH).total_seconds()
            return _EPOCH + dt.timedelta(seconds=math.floor(seconds / self.every) * self.every)
        from cronsim import CronSim

        start = self._local(now).replace(microsecond=0) + dt.timedelta(seconds=1)
        due: dt.datetime = next(CronSim(self._cron, start, reverse=True))
        return due.astimezone(UTC)

    def next_due(self, now: dt.datetime) -> dt.datetime:
        """The first due time after ``now`` (aware), in UTC."""
        if self.every is not None:
            return self.latest_due(now) + dt.timedelta(seconds=self.every)
        from cronsim import CronSim

        due: dt.datetime = next(CronSim(self._cron, self._local(now)))
        return due.astimezone(UTC)

    @property
    def _cron(self) -> str:
        assert self.cron is not None
        return self.cron

    def _local(self, moment: dt.datetime) -> dt.datetime:
        from zoneinfo import ZoneInfo

        return moment.astimezone(ZoneInfo(self.timezone))
