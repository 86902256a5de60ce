"""``@recurring``: a recurring job declared in code (``[[recurring]]`` declares one in
the settings; both are :class:`~circus_djmaster.common.recurring.RecurringJob`).

.. code-block:: python

    @recurring(cron="0 3 * * *", timezone="Europe/Paris")
    @job(queue="reports")
    def nightly_report() -> None: ...

The master finds these by importing the modules the settings list in
``recurring_modules`` (it does not import ``app``): :func:`declared_in` imports them and
returns what they declared. The decorator returns the function (or ``Job``) unchanged.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from circus_djmaster.api import handler as handler_format
from circus_djmaster.api.jobs import DEFAULT_QUEUE, Job
from circus_djmaster.common.recurring import RecurringJob

__all__ = ["declared", "declared_in", "recurring"]

F = TypeVar("F", bound=Callable[..., Any])

#: Every entry declared with @recurring in this process, by name.
_declared: dict[str, RecurringJob] = {}


def recurring(
    *,
    cron: str | None = None,
    every: float | dt.timedelta | None = None,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
    timezone: str = "UTC",
    catch_up: bool = False,
    database: str | None = None,
) -> Callable[[F], F]:
    """Declare a recurring job: the decorated module-level function (or ``@job``) is
    enqueued at each due time of ``cron`` or ``every`` (seconds or a timedelta).

    ``name`` defaults to ``module:function`` (the name its due times are recorded
    under: renaming it starts a new schedule). ``queue`` and ``priority`` default to the
    ``@job``'s. The other arguments are those of ``[[recurring]]`` (docs/settings.md).
    Raises ValueError for a bad schedule, and for a name declared twice.
    """

    def register(func: F) -> F:
        path = func.path if isinstance(func, Job) else handler_format.callable_path(func)
        options = func.options if isinstance(func, Job) else None
        seconds = every.total_seconds() if isinstance(every, dt.timedelta) else every
        handler_format.encode(path, args, kwargs)  # JSON arguments, or HandlerError now
        entry = RecurringJob(
            name=name or path,
            callable=path,
            cron=cron,
            every=None if seconds is None else float(seconds),
            args=tuple(args),
            kwargs=dict(kwargs or {}),
            queue=queue or (options.queue if options else DEFAULT_QUEUE),
            priority=priority if priority is not None else (options.priority if options else 0),
            timezone=timezone,
            catch_up=catch_up,
            database=database,
        )
        known = _declared.get(entry.name)
        if known is not None and known != entry:
            raise ValueError(f"recurring job {entry.name!r} is declared twice")
        _declared[entry.name] = entry
        return func

    return register


def declared() -> list[RecurringJob]:
    """The entries declared with ``@recurring`` in this process so far."""
    return list(_declared.values())


def declared_in(modules: Iterable[str]) -> list[RecurringJob]:
    """Import ``modules`` and return the entries declared in them (and before).

    Raises ImportError (or whatever a module raises when imported).
    """
    for module in modules:
        importlib.import_module(module)
    return declared()
