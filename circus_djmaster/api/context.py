"""What a running job knows about itself, and where its follow-up jobs go.

* :func:`current_job` returns the :class:`JobContext` of the job running in the calling
  thread or task (``None`` outside a job). The worker sets it around the job's code and
  its hooks; an ``async def`` job and the tasks it creates see it too (a context
  variable: asyncio copies it into every task). A thread started by job code does not
  inherit it (Python threads start with an empty context); run the thread's target with
  ``contextvars.copy_context().run`` to pass it on.
* A worker process serves exactly one database. :func:`set_worker_database` records its
  URL once, and an enqueue made in that process without an explicit connection or URL
  goes there (:func:`default_database_url`): a job enqueued into database ``secondary``
  that enqueues a follow-up puts it into ``secondary``, not into whatever
  ``$DJMASTER_DATABASE_URL`` names. Process-wide rather than per context, so threads and
  processes forked by job code enqueue into the same database.

The URL itself is never part of :class:`JobContext` (job code may log its context).
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading

from circus_djmaster.exceptions import JobCancelled

__all__ = [
    "DATABASE_URL_ENV",
    "JobContext",
    "current_job",
    "default_database_url",
    "set_worker_database",
]

#: Where an enqueue without a connection or URL goes, outside a worker process.
DATABASE_URL_ENV = "DJMASTER_DATABASE_URL"


@dataclasses.dataclass(frozen=True)
class JobContext:
    """The job running now, as its worker reserved it.

    ``attempts`` counts the runs that failed before this one (0 on the first run), as
    the ``attempts`` column does; ``database`` is the database's name in the settings
    (``[databases]``); ``group`` the worker group running it.

    ``cancel_requested`` turns true when someone cancels the job while it runs
    (``djmaster jobs cancel``, :func:`circus_djmaster.cancel`): the worker learns it
    within about a second and never interrupts the job; the job decides where it can
    stop, returning or raising (:meth:`raise_if_cancel_requested`). A job that raises
    after the request is recorded as cancelled, never retried.
    """

    id: int
    queue: str | None
    priority: int
    attempts: int
    callable: str
    database: str
    group: str
    #: Set by the worker when a cancel is requested (read it with cancel_requested).
    cancel_event: threading.Event = dataclasses.field(
        default_factory=threading.Event, repr=False, compare=False
    )

    @property
    def cancel_requested(self) -> bool:
        """True once the job was asked to stop (cancelled while running)."""
        return self.cancel_event.is_set()

    def raise_if_cancel_requested(self) -> None:
        """Raise :class:`~circus_djmaster.exceptions.JobCancelled` if the job was asked
        to stop: a point where the job's code may end safely."""
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.id} was cancelled")


_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar(
    "circus_djmaster_current_job", default=None
)
_worker_database_url: str | None = None


def current_job() -> JobContext | None:
    """The job running in this thread or task; ``None`` outside a job."""
    return _current.get()


def enter_job(context: JobContext) -> contextvars.Token[JobContext | None]:
    """Set the current job (the worker's job thread, before the job's code)."""
    return _current.set(context)


def leave_job(token: contextvars.Token[JobContext | None]) -> None:
    _current.reset(token)


def set_worker_database(url: str | None) -> None:
    """Record the database this worker process serves (``None`` forgets it)."""
    global _worker_database_url
    _worker_database_url = url


def default_database_url() -> str | None:
    """Where an enqueue without a connection or URL goes in this process: the worker's
    database inside a worker process, else ``None`` (the caller then reads
    ``$DJMASTER_DATABASE_URL``)."""
    return _worker_database_url
