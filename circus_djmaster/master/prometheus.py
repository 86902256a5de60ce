"""Prometheus metrics served by the master (``[metrics]`` in the settings).

prometheus_client's own WSGI server answers ``GET /metrics`` on ``[metrics] host:port``
in daemon threads of the master's process, so a scrape never runs on the master's
asyncio loop. A scrape reads:

* the loop's latest observation (:meth:`PrometheusMetrics.observed`, an immutable
  tuple replaced every turn): workers per watcher by state, their memory, targets,
  blocked watchers;
* each database's job counts, queried at the scrape on a connection of its own
  (``djmaster-master-metrics`` in ``pg_stat_activity``), bounded by
  ``database_timeout``; a database that fails is shown as ``djmaster_database_up 0``;
* the counters the loop and the pollers increment.

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/):
a ``djmaster_`` prefix, ``_total`` for counters, base units (seconds, bytes). Labels
are names from the settings and fixed words: never a URL, a host or a job argument.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, start_wsgi_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from circus_djmaster.config.settings import Settings
from circus_djmaster.contracts.titles import WorkerState, master_application_name
from circus_djmaster.contracts.watchers import watcher_name
from circus_djmaster.master.metrics import MetricsRecorder
from circus_djmaster.master.scaling import WatcherSnapshot
from circus_djmaster.store import statements
from circus_djmaster.store.errors import describe_error
from circus_djmaster.store.statements import GroupStats, JobFilter
from circus_djmaster.store.sync_executor import connect, execute

__all__ = ["BIND_RETRY", "PrometheusMetrics"]

log = logging.getLogger(__name__)

#: While another process holds the port (the master circus starts during `circusctl
#: reload` before it stops the old one), binding is tried again this often (seconds).
BIND_RETRY = 1.0


class PrometheusMetrics(MetricsRecorder):
    """The master's metrics in a registry of their own, served over HTTP."""

    def __init__(self, settings: Settings) -> None:
        assert settings.metrics is not None, "only for settings with [metrics]"
        self.settings = settings
        self.address = (settings.metrics.host, settings.metrics.port)
        self.registry = CollectorRegistry()
        self._snapshots: tuple[WatcherSnapshot, ...] = ()
        self._server: Any = None
        self._stopped = threading.Event()
        self._jobs = _JobCounts(settings, self)

        def counter(name: str, doc: str, labels: Sequence[str]) -> Counter:
            return Counter(name, doc, labels, registry=self.registry)

        self._started = counter(
            "djmaster_workers_started",
            "Worker processes the master asked circus for (scale-ups)",
            ["watcher"],
        )
        self._retirements = counter(
            "djmaster_worker_retirements",
            "Workers retired, by reason: max_memory, max_execution, rebalance (the master "
            "sent TERM) or self (exited 0 on their own)",
            ["watcher", "reason"],
        )
        self._kills = counter(
            "djmaster_worker_kills", "Workers the master killed (SIGKILL)", ["watcher", "reason"]
        )
        self._crashes = counter(
            "djmaster_worker_crashes", "Workers that crashed (circus respawns them)", ["watcher"]
        )
        self._config_errors = counter(
            "djmaster_worker_config_errors",
            "Workers that exited 78: settings or preload error (the watcher is blocked)",
            ["watcher"],
        )
        self._releases = counter(
            "djmaster_job_releases",
            "Jobs of dead workers released, by outcome: released, isolated, retry, "
            "failed, destroyed",
            ["database", "outcome"],
        )
        self._database_errors = counter(
            "djmaster_database_errors",
            "Failed round trips of the master to a database",
            ["database"],
        )
        for group in settings.workers:
            for database in settings.databases:
                self._started.labels(watcher_name(group.name, database.name))
        for database in settings.databases:
            self._database_errors.labels(database.name)
        self.registry.register(_Observed(self))
        self.registry.register(self._jobs)

    # --- serving ------------------------------------------------------------------

    def serve(self) -> None:
        """Listen on ``[metrics] host:port``, now or, while the port is taken, as soon
        as it is free (a thread tries every :data:`BIND_RETRY` seconds)."""
        if not self._bind(first=True):
            threading.Thread(target=self._bind_later, name="metrics-bind", daemon=True).start()

    def _bind(self, *, first: bool) -> bool:
        host, port = self.address
        try:
            self._server, _thread = start_wsgi_server(port, addr=host, registry=self.registry)
        except OSError as error:
            if error.errno != errno.EADDRINUSE or first:
                retry = f"; trying again every {BIND_RETRY:g}s"
                log.error(
                    "metrics: cannot listen on %s:%d: %s%s",
                    host,
                    port,
                    error.strerror or error,
                    retry if error.errno == errno.EADDRINUSE else "",
                )
            if error.errno != errno.EADDRINUSE:
                self._stopped.set()  # a bad address does not get better
            return False
        log.info("metrics: serving http://%s:%d/metrics", _url_host(host), port)
        return True

    def _bind_later(self) -> None:
        while not self._stopped.wait(BIND_RETRY):
            if self._bind(first=False):
                return

    def close(self) -> None:
        self._stopped.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        self._jobs.close()

    # --- what the master tells --------------------------------------------------------

    def observed(self, snapshots: Sequence[WatcherSnapshot]) -> None:
        self._snapshots = tuple(snapshots)

    def scaled_up(self, watcher: str, workers: int) -> None:
        self._started.labels(watcher).inc(workers)

    def retired(self, watcher: str, reason: str) -> None:
        self._retirements.labels(watcher, reason).inc()

    def killed(self, watcher: str, reason: str) -> None:
        self._kills.labels(watcher, reason).inc()

    def crashed(self, watcher: str) -> None:
        self._crashes.labels(watcher).inc()

    def config_error(self, watcher: str) -> None:
        self._config_errors.labels(watcher).inc()

    def released(self, database: str, outcome: str) -> None:
        self._releases.labels(database, outcome).inc()

    def database_error(self, database: str) -> None:
        self._database_errors.labels(database).inc()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Observed(Collector):
    """Gauges of the loop's latest observation: workers and watchers."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshots = self.metrics._snapshots
        workers = GaugeMetricFamily(
            "djmaster_workers",
            "Live worker processes by the state their title shows",
            labels=["watcher", "state"],
        )
        memory = GaugeMetricFamily(
            "djmaster_workers_resident_memory_bytes",
            "Resident memory of a watcher's workers, their children included",
            labels=["watcher"],
        )
        largest = GaugeMetricFamily(
            "djmaster_worker_max_resident_memory_bytes",
            "Resident memory of the largest worker of a watcher, children included",
            labels=["watcher"],
        )
        target = GaugeMetricFamily(
            "djmaster_watcher_target_processes",
            "circus' numprocesses of a watcher (0 while it is stopped)",
            labels=["watcher"],
        )
        blocked = GaugeMetricFamily(
            "djmaster_watcher_blocked",
            "1 while the master does not scale a watcher (its workers exited 78)",
            labels=["watcher"],
        )
        for snapshot in snapshots:
            name = watcher_name(snapshot.group, snapshot.database)
            for state in WorkerState:
                count = sum(1 for worker in snapshot.workers if worker.state is state)
                workers.add_metric([name, state.name.lower()], count)
            sizes = [worker.rss for worker in snapshot.workers if worker.rss is not None]
            memory.add_metric([name], sum(sizes))
            largest.add_metric([name], max(sizes, default=0))
            target.add_metric([name], snapshot.numprocesses)
            blocked.add_metric([name], int(snapshot.blocked))
        yield from (workers, memory, largest, target, blocked)


class _JobCounts(Collector):
    """Job counts per database and group, queried at each scrape (one scrape at a time)."""

    def __init__(self, settings: Settings, metrics: PrometheusMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._lock = threading.Lock()
        self._connections: dict[str, psycopg.Connection[Any]] = {}

    def collect(self) -> Iterator[Metric]:
        families = {
            "ready": GaugeMetricFamily(
                "djmaster_jobs_ready", "Jobs due and not locked", labels=["database", "group"]
            ),
            "running": GaugeMetricFamily(
                "djmaster_jobs_running", "Jobs locked by a worker", labels=["database", "group"]
            ),
            "scheduled": GaugeMetricFamily(
                "djmaster_jobs_scheduled",
                "Jobs due later (retries waiting for their back-off included)",
                labels=["database", "group"],
            ),
            "failed": GaugeMetricFamily(
                "djmaster_jobs_failed",
                "Jobs failed for good (failed_at set)",
                labels=["database", "group"],
            ),
        }
        oldest = GaugeMetricFamily(
            "djmaster_oldest_ready_job_age_seconds",
            "How long the oldest ready job has been due (0: none ready)",
            labels=["database", "group"],
        )
        up = GaugeMetricFamily(
            "djmaster_database_up",
            "1 if the job counts of this scrape could be read from the database",
            labels=["database"],
        )
        duration = GaugeMetricFamily(
            "djmaster_job_counts_duration_seconds",
            "How long this scrape took to count the jobs of a database",
            labels=["database"],
        )
        with self._lock:
            for database in self.settings.databases:
                started = time.monotonic()
                counts = self._counts(database.name)
                duration.add_metric([database.name], time.monotonic() - started)
                up.add_metric([database.name], int(counts is not None))
                for group, stats in (counts or {}).items():
                    labels = [database.name, group]
                    for field, family in families.items():
                        family.add_metric(labels, getattr(stats, field))
                    oldest.add_metric(labels, stats.oldest_ready_age or 0.0)
        yield from families.values()
        yield from (oldest, up, duration)

    def _counts(self, database: str) -> dict[str, GroupStats] | None:
        settings = self.settings
        try:
            conn = self._connections.get(database)
            if conn is None or conn.closed:
                conn = connect(
                    settings.database(database).url(),
                    application_name=master_application_name("metrics"),
                    timeout=settings.database_timeout,
                )
                self._connections[database] = conn
            return {
                group.name: execute(
                    conn,
                    statements.group_stats(JobFilter.of(group), lock_timeout=settings.lock_timeout),
                )
                for group in settings.workers
            }
        except Exception as error:  # a scrape reports a database down, never raises
            log.warning("metrics: database %s: %s", database, describe_error(error))
            self.metrics.database_error(database)
            conn = self._connections.pop(database, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            return None

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                with contextlib.suppress(Exception):
                    conn.close()
            self._connections.clear()
