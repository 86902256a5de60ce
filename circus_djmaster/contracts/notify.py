"""The NOTIFY that wakes masters and waiting workers when jobs become ready.

The trigger on ``delayed_jobs`` (``store/sql/schema.sql``) notifies channel
:data:`CHANNEL` with a JSON array of the queue names of inserted (or again available)
jobs, :data:`NO_QUEUE` for jobs without a queue, or the JSON string :data:`ALL_QUEUES`
meaning every queue. Masters and workers of other versions read it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["ALL_QUEUES", "CHANNEL", "NO_QUEUE", "queues_from_payload"]

CHANNEL = "delayed_jobs"
#: The payload meaning "any queue may have new jobs".
ALL_QUEUES = "*"
#: How the payload names jobs without a queue (a NULL queue).
NO_QUEUE = ""


def queues_from_payload(payload: str) -> frozenset[str] | None:
    """The queues a notification names; None means "every queue" (:data:`ALL_QUEUES`,
    or a payload this version does not understand: waking up too often is cheap,
    missing a job is not)."""
    try:
        value: Any = json.loads(payload)
    except ValueError:
        return None
    if value == ALL_QUEUES:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None
