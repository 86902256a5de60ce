"""The worker's callbacks (settings ``[callbacks]``: ``after_fork``, ``before_work``,
``after_work``, ``around_work``; the preloader's ``before_fork``): loaded once at
start, called safely.

A callback that cannot be imported stops the worker from starting (exit 78); an
exception raised by one is logged with its traceback and never stops the worker's
loop. The master's callbacks are master/callbacks.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from circus_djmaster.api.handler import resolve_callbacks
from circus_djmaster.exceptions import PreloadError

log = logging.getLogger(__name__)


WORKER_CALLBACKS = ("after_fork", "before_work", "after_work", "around_work")
#: The preloader (spawn = "fork") also runs before_fork, before each fork.
PRELOADER_CALLBACKS = ("before_fork", *WORKER_CALLBACKS)


class WorkerCallbacks:
    """The worker's callbacks that the settings name, imported."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]]) -> None:
        self._functions = dict(functions)

    @classmethod
    def load(
        cls, paths: Mapping[str, str], names: tuple[str, ...] = WORKER_CALLBACKS
    ) -> WorkerCallbacks:
        """The callbacks ``names`` that ``paths`` sets (default: the worker's);
        PreloadError if one cannot be imported (exit 78)."""
        functions, failures = resolve_callbacks(paths, names)
        for name, exc in failures.items():
            raise PreloadError(f"callbacks.{name}: {exc}") from exc
        return cls(functions)

    def call(self, name: str, *args: Any) -> None:
        function = self._functions.get(name)
        if function is None:
            return
        try:
            function(*args)
        except Exception:
            log.exception("callback %s raised; going on", name)

    def around(self, name: str, block: Callable[[], Any], *args: Any) -> None:
        """Run ``block`` through the ``around_*`` callback ``name`` (or directly).

        If the callback raises before it ran the block, the block runs anyway: a broken
        callback must not silently stop the work it wraps.
        """
        function = self._functions.get(name)
        if function is None:
            block()
            return
        ran = False

        def wrapped() -> None:
            nonlocal ran
            ran = True
            block()

        try:
            function(*args, wrapped)
        except Exception:
            log.exception("callback %s raised; going on", name)
        if not ran:
            block()
