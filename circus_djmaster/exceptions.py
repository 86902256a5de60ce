"""The project's exceptions, in one place."""

from __future__ import annotations


class DjmasterError(Exception):
    """Base class of circus-djmaster's own errors."""


class HandlerError(DjmasterError):
    """A job's handler cannot be decoded or resolved: the job fails for good."""


class EnqueueError(DjmasterError):
    """A job cannot be enqueued (bad arguments, no database configured)."""


class PreloadError(DjmasterError):
    """The application module or a callback could not be imported in a worker."""
