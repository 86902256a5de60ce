"""The master's callbacks (settings ``[callbacks]``), called from its asyncio loop.

* ``before_fork(master, target)``: before the master starts or grows a watcher of a
  group with ``spawn = "exec"``; ``target`` is a :class:`~circus_djmaster.config.targets.
  ForkTarget` (group, database, watcher, how many processes). With ``spawn = "fork"``
  the preloader calls it before each fork instead (worker/preloader.py).
* ``before_polling(master, database)`` / ``after_polling(master, database)`` and
  ``around_polling(master, database, block)``: around each count of ready jobs of one
  database (each database polls on its own).
* ``before_monitor(master)`` / ``after_monitor(master)`` / ``around_monitor(master,
  block)``: around each memory and age check.

Callbacks are plain (synchronous) functions, as in the seed. They run in a thread, so a
slow one never freezes the loop; ``block()`` runs the wrapped step on the loop and
returns when it is done. An exception is logged and the work goes on (docs/design.md §5); a
callback that cannot be imported is logged once and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from circus_djmaster.api.handler import resolve_callbacks

log = logging.getLogger(__name__)

MASTER_CALLBACKS = (
    "before_fork",
    "before_polling",
    "after_polling",
    "around_polling",
    "before_monitor",
    "after_monitor",
    "around_monitor",
)


class MasterCallbacks:
    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._functions = dict(functions or {})

    @classmethod
    def load(cls, paths: Mapping[str, str]) -> MasterCallbacks:
        """The master's callbacks; one that cannot be imported is logged and skipped."""
        functions, failures = resolve_callbacks(paths, MASTER_CALLBACKS)
        for name, error in failures.items():
            log.error(
                "callbacks.%s = %r cannot be loaded, skipping it: %s", name, paths[name], error
            )
        return cls(functions)

    def __contains__(self, name: str) -> bool:
        return name in self._functions

    async def call(self, name: str, *args: Any) -> None:
        function = self._functions.get(name)
        if function is None:
            return
        try:
            await asyncio.to_thread(function, *args)
        except Exception:
            log.exception("callback %s raised; going on", name)

    async def around(
        self, name: str, block: Callable[[], Coroutine[Any, Any, None]], *args: Any
    ) -> None:
        """Run ``block`` through the ``around_*`` callback ``name`` (or directly).

        A callback that raises before running the block, or never runs it, does not stop
        the work: the block then runs anyway.
        """
        function = self._functions.get(name)
        if function is None:
            await block()
            return
        loop = asyncio.get_running_loop()
        ran = False
        failure: BaseException | None = None

        def run_block() -> None:
            nonlocal ran, failure
            if ran:
                return
            ran = True
            try:
                asyncio.run_coroutine_threadsafe(block(), loop).result()
            except BaseException as error:
                failure = error  # the block's own error belongs to the caller
                raise

        try:
            await asyncio.to_thread(function, *args, run_block)
        except Exception:
            if failure is None:
                log.exception("callback %s raised; going on", name)
        if failure is not None:
            raise failure
        if not ran:
            await block()
