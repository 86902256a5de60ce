"""Process-wide context around every job a worker runs.

A preload module (``app`` in the settings) may register context managers that every job
of the process runs inside, in the job's own thread: the Django preload
(``circus_djmaster.contrib.django.worker``) closes stale database connections before and
after each job this way, as Django does around each request.

Register with :func:`around_every_job` while the app is imported, before any job runs.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager, ExitStack
from typing import Any

# Generator-based coroutines (@types.coroutine) are awaitable without __await__.
_CO_ITERABLE_COROUTINE = 0x100

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
    """``function`` run inside every registered context (itself when there is none).

    For an async job (its result is awaitable) the contexts stay open until the
    awaitable is done: the wrapper then returns an awaitable that closes them, on the
    same thread (the job thread runs its event loop).
    """
    if not _FACTORIES:
        return function
    factories = tuple(_FACTORIES)

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with ExitStack() as stack:
            for factory in factories:
                stack.enter_context(factory())
            result = function(*args, **kwargs)
            if not is_awaitable(result):
                return result
            contexts = stack.pop_all()  # closed once the job is awaited
        return _awaited_in(contexts, result)

    return wrapped


async def _awaited_in(contexts: ExitStack, awaitable: Awaitable[Any]) -> Any:
    with contexts:
        return await awaitable


def is_awaitable(value: object) -> bool:
    """``inspect.isawaitable`` without importing inspect on a worker's start-up path."""
    if isinstance(value, Awaitable):
        return True
    return isinstance(value, types.GeneratorType) and bool(
        value.gi_code.co_flags & _CO_ITERABLE_COROUTINE
    )
