"""What the master tells its metrics: a recorder the loop and the pollers call.

:class:`MetricsRecorder` records nothing: it is what the master uses when the settings
have no ``[metrics]`` table, so the loop calls the same methods either way and
``prometheus_client`` is imported only when the table is there (the plugin then makes a
:class:`~circus_djmaster.master.prometheus.PrometheusMetrics`: plugin.py).

Labels are names from the settings (database, group, watcher) and fixed words (state,
reason, outcome): never a URL, a host or a job's arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from circus_djmaster.master.scaling import WatcherSnapshot

__all__ = ["SELF_RETIRED", "MetricsRecorder"]

#: The reason label of a worker that retired by itself (exit 0 the master did not ask
#: for: idle, its own memory or age limit, a signal from an operator).
SELF_RETIRED = "self"


class MetricsRecorder:
    """The master's metrics, recording nothing (no ``[metrics]`` table).

    Every method returns at once and never raises: the loop calls them on its hot path.
    """

    def observed(self, snapshots: Sequence[WatcherSnapshot]) -> None:
        """The loop's latest observation of circus and the workers (every turn)."""

    def scaled_up(self, watcher: str, workers: int) -> None:
        """The master asked circus for ``workers`` more processes of ``watcher``."""

    def retired(self, watcher: str, reason: str) -> None:
        """A worker of ``watcher`` retires: the master sent it TERM to retire it
        (``reason``: a lower-cased :class:`~circus_djmaster.master.scaling.RetireReason`
        name of a ``RetireWorker`` action), or it exited 0 on its own
        (:data:`SELF_RETIRED`: idle, its own limits, a signal from someone else, or the
        TERM the master sends every worker when it stops)."""

    def killed(self, watcher: str, reason: str) -> None:
        """The master sent SIGKILL to a worker of ``watcher`` (``hard_max_memory``)."""

    def crashed(self, watcher: str) -> None:
        """A worker of ``watcher`` exited with a code circus respawns it for."""

    def config_error(self, watcher: str) -> None:
        """A worker of ``watcher`` exited 78: settings or preload error."""

    def released(self, database: str, outcome: str) -> None:
        """A dead worker's job on ``database`` was released (``outcome``: a lower-cased
        :class:`~circus_djmaster.store.statements.ReleaseOutcome` name)."""

    def database_error(self, database: str) -> None:
        """A round trip of the master to ``database`` failed (it backs off, reconnects)."""

    def close(self) -> None:
        """Stop serving (the master exits)."""
