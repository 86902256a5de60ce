"""Process-wide context around every job a worker runs.

A preload module (``app`` in the settings) may register context managers that every job
of the process runs inside, in the job's own thread: the Django preload
(``circus_djmaster.contrib.django.worker``) closes stale database connections before and
after each job this way, as Django does around each request.

Register with :func:`around_every_job` while the app is imported, before any job runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

_FACTORIES: list[Callable[[], AbstractContextManager[object]]] = []


def around_every_job(factory: Callable[[], AbstractContextManager[object]]) -> None:
    """Run every job of this process inside ``factory()`` (entered in the job's thread).

    ``factory`` is called once per job, with no argument, and must return a context
    manager; the first registered is the outermost. An exception it raises is the job's
    (the job fails and is retried as usual).
    """
    if not callable(factory):
        raise TypeError(f"around_every_job needs a callable, got {type(factory).__name__}")
    _FACTORIES.append(factory)


def wrap(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run inside every registered context (itself when there is none)."""
    if not _FACTORIES:
        return function
    factories = tuple(_FACTORIES)

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            for factory in factories:
                stack.enter_context(factory())
            return function(*args, **kwargs)

    return wrapped
