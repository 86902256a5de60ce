"""How a job thread calls job code (the job's function and its hooks).

Three rules, whatever the code does:

* **Async code runs to completion.** A coroutine function, or any callable whose result
  is awaitable (a wrapped or ``functools.partial`` async function, a function returning
  a coroutine), is awaited on the job thread's own event loop. The loop is made on the
  thread's first async job and reused, so later async jobs pay no loop start-up. As
  ``asyncio.run`` does, tasks the job created and left running are cancelled and awaited
  when it ends, so none of them runs on into the next job.
* **max_run_time stops async code too.** :meth:`JobCode.interrupt` cancels the job's
  task (waking the loop at once, even from a long ``await asyncio.sleep``); code that
  does not yield to the loop gets :class:`JobTimeout` raised in its thread instead
  (:meth:`JobCode.interrupt_thread`, as for sync jobs). A loop that was interrupted that
  way is discarded: the next async job gets a fresh one.
* **A fork never returns into the worker.** When control leaves job code in a process
  that is not the worker (the code called ``os.fork()``; the child returned, raised,
  called ``sys.exit``), that process ends at once with ``os._exit``: 0 for a return,
  ``sys.exit``'s code, 130 for ``KeyboardInterrupt``, 1 with the traceback on stderr for
  an exception. It never touches the job's row, the worker's connections, its
  running-jobs file or the queue; the job completes once, in the worker.
  :func:`install_fork_handler` also resets the worker's signal handlers in every child
  forked from it (``os.fork``, ``multiprocessing``'s fork and forkserver), so such a
  child dies of TERM as any process does instead of recording it for a worker loop that
  does not run there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

from circus_djmaster.api.wrappers import is_awaitable
from circus_djmaster.exceptions import JobTimeout

if TYPE_CHECKING:
    import asyncio

# Exit status of a forked child whose job code raised KeyboardInterrupt (128 + SIGINT,
# what a shell reports for a process ended by Ctrl-C).
KEYBOARD_INTERRUPT_STATUS = 130


def set_async_exc(thread_id: int, exc: type[BaseException] | None) -> int:
    """Raise ``exc`` in the thread ``thread_id`` at its next bytecode (None: cancel a
    pending one). Returns the number of threads affected (CPython's C API)."""
    affected = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )
    return int(affected)


class JobCode:
    """The caller of job code for one job thread (see the module's rules)."""

    def __init__(self, worker_pid: int) -> None:
        self._worker_pid = worker_pid
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._timed_out = False

    def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run job code to completion and return its result; its exceptions propagate
        (a timed-out async job raises :class:`JobTimeout`)."""
        try:
            result = function(*args, **kwargs)
            if is_awaitable(result):
                result = self._await(result)
        except BaseException as exc:
            self._end_if_forked(exc)
            raise
        self._end_if_forked(None)
        return result

    # --- max_run_time ---------------------------------------------------------------

    @property
    def awaiting(self) -> bool:
        """True while an awaitable runs on this thread's loop."""
        return self._task is not None

    def interrupt(self, thread_id: int) -> bool:
        """Stop the running job code: cancel its task if it is async, else raise
        :class:`JobTimeout` in ``thread_id``. Called by the watchdog thread."""
        with self._lock:
            task, loop = self._task, self._loop
            if task is not None and loop is not None:
                self._timed_out = True
                with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                    loop.call_soon_threadsafe(task.cancel)
                return True
        return self.interrupt_thread(thread_id)

    def interrupt_thread(self, thread_id: int) -> bool:
        """Raise :class:`JobTimeout` in ``thread_id`` (code that never yields to the
        event loop). The thread's loop is replaced afterwards."""
        with self._lock:
            self._timed_out = True
        return set_async_exc(thread_id, JobTimeout) == 1

    def cancel_thread_interrupt(self, thread_id: int) -> None:
        """Drop a pending :meth:`interrupt_thread` that has not fired yet."""
        set_async_exc(thread_id, None)

    # --- async ------------------------------------------------------------------------

    def _await(self, awaitable: Awaitable[Any]) -> Any:
        import asyncio  # only workers that run async jobs pay for the import

        loop = self._event_loop()
        task = loop.create_task(self._to_completion(awaitable))
        with self._lock:
            self._task = task
            self._timed_out = False
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if self._timed_out:
                raise JobTimeout() from None
            raise
        except JobTimeout:
            # Raised by interrupt_thread wherever the thread was, possibly inside the
            # loop's own code: this loop cannot be trusted any more.
            self._discard_loop()
            raise
        finally:
            with self._lock:
                self._task = None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        import asyncio

        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    def _discard_loop(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            with contextlib.suppress(Exception):
                loop.close()

    def close(self) -> None:
        """Close this thread's event loop, if it made one."""
        self._discard_loop()

    async def _to_completion(self, awaitable: Awaitable[Any]) -> Any:
        """Await the job, then cancel (and wait for) the tasks it left running. A child
        the job forked ends here: its copy of the loop is not running any more (asyncio
        resets it in a forked child) and must not go on."""
        import asyncio

        error: BaseException | None = None
        try:
            return await awaitable
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._end_if_forked(error)
            me = asyncio.current_task()
            leftovers = [task for task in asyncio.all_tasks() if task is not me]
            for task in leftovers:
                task.cancel()
            if leftovers:
                await asyncio.gather(*leftovers, return_exceptions=True)

    # --- forks ------------------------------------------------------------------------

    def _end_if_forked(self, error: BaseException | None) -> None:
        if os.getpid() != self._worker_pid:
            end_forked_child(error)


def end_forked_child(error: BaseException | None) -> NoReturn:
    """End a process forked by job code, now, with the status its code asked for."""
    status = 0
    if isinstance(error, SystemExit):
        code = error.code
        if isinstance(code, int) and not isinstance(code, bool):
            status = code & 0xFF
        elif code is not None:
            with contextlib.suppress(Exception):
                print(code, file=sys.stderr)
            status = 1
    elif isinstance(error, KeyboardInterrupt):
        status = KEYBOARD_INTERRUPT_STATUS
    elif error is not None:
        with contextlib.suppress(Exception):
            traceback.print_exception(type(error), error, error.__traceback__)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


_fork_handler_installed = False
_child_signals: tuple[int, ...] = ()
_masks = threading.local()


def install_fork_handler(signals: tuple[int, ...], title: Callable[[int], str]) -> None:
    """In every process forked from this one: default signal handlers for ``signals``
    (SIGINT raises KeyboardInterrupt again) and the process title ``title(parent_pid)``.
    Installed once per process (``os.register_at_fork`` cannot be undone).

    ``signals`` are blocked in the forking thread from just before the fork until the
    child has reset them: a TERM sent to the child at once (``Process.terminate()`` right
    after ``start()``) would otherwise reach the worker's handler copied into the child,
    which only records it, and the child would never end.
    """
    global _fork_handler_installed, _child_signals
    _child_signals = signals
    if _fork_handler_installed:
        return
    _fork_handler_installed = True

    def before() -> None:
        _masks.previous = signal.pthread_sigmask(signal.SIG_BLOCK, _child_signals)

    def in_parent() -> None:
        previous = getattr(_masks, "previous", None)
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            _masks.previous = None

    def in_child() -> None:
        for signum in _child_signals:
            with contextlib.suppress(Exception):
                handler = signal.default_int_handler if signum == signal.SIGINT else None
                signal.signal(signum, handler or signal.SIG_DFL)
        with contextlib.suppress(Exception):
            from circus_djmaster.contracts import titles

            titles.set_title(title(os.getppid()))
        in_parent()  # the same mask as the thread that forked: signals pending arrive now

    os.register_at_fork(before=before, after_in_parent=in_parent, after_in_child=in_child)
