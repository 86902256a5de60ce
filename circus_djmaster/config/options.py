"""The declarations of every settings option: section, name, kind, doc and default.

Declared once, here; loading and validation (:mod:`circus_djmaster.config.settings`),
``docs/settings.md`` (:mod:`circus_djmaster.config.docs`) and the annotated file of
``djmaster-config init`` (:mod:`circus_djmaster.config.init_template`) are driven by them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circus_djmaster.config.kinds import (
    ARRAY,
    BOOLEAN,
    CALLABLE,
    CRON,
    ENDPOINT,
    HOST,
    LOGOUTPUT,
    MODULE,
    MODULES,
    NAME,
    PATH,
    PORT,
    SIZE,
    STRING,
    STRINGS,
    TABLE,
    TIMEZONE,
    URL,
    Kind,
    choice,
    count_or_auto,
    duration,
    integer,
)


@dataclass(frozen=True)
class Section:
    name: str  # "" for the top level
    header: str  # as written in the file
    doc: str
    #: A table that turns a feature on by being there (``[metrics]``): absent, the
    #: feature is off and its options' defaults do not apply.
    optional: bool = False


@dataclass(frozen=True)
class _Context:
    base: Path  # folder holding the settings file
    index: int = 0  # position in [[workers]]


@dataclass(frozen=True)
class Option:
    section: str
    name: str
    kind: Kind
    doc: str
    default: Any = None  # used when the key is absent; None means unset
    default_factory: Callable[[_Context], Any] | None = None
    default_doc: str | None = None  # shown instead of the default in docs
    expand_env: bool = True  # database URLs are expanded only when used

    @property
    def type(self) -> str:
        return self.kind.name

    @property
    def default_toml(self) -> str | None:
        """The default as a TOML literal, or None if it is unset or computed."""
        if self.default is None or self.default_factory is not None:
            return None
        return self.kind.to_toml(self.default)

    def default_for(self, context: _Context) -> Any:
        if self.default_factory is not None:
            return self.default_factory(context)
        return self.default


SECTIONS: tuple[Section, ...] = (
    Section("", "top level", "Keys at the top of the file, before any table."),
    Section(
        "callbacks",
        "[callbacks]",
        "Hooks, each a callable named `module.path:attr`. Only the form is checked when "
        "the file is loaded; the callable is imported where it runs. An exception in a "
        "callback is logged and never stops polling or monitoring.",
    ),
    Section(
        "databases",
        "[databases]",
        "One key per database holding `delayed_jobs`. A URL is expanded only when a "
        "connection is made, so `djmaster-config render` works without the secrets.",
    ),
    Section(
        "workers",
        "[[workers]]",
        "One table per worker group; each group runs as one circus watcher per "
        "database, scaled from zero to `max_processes` on demand.",
    ),
    Section("circus", "[circus]", "Values for the generated `circus.ini`."),
    Section(
        "recurring",
        "[[recurring]]",
        "One table per recurring job: the master enqueues `callable` at each due time "
        "of `cron` or `every`, exactly once per due time whatever the number of hosts "
        "and master restarts. `name` and `callable` are required, and exactly one of "
        "`cron` and `every`. `djmaster recurring list` shows the next runs.",
    ),
    Section(
        "metrics",
        "[metrics]",
        "Prometheus metrics (`/metrics`, served by the master) when this table is "
        "present; absent, no port is opened. Labels carry database, group and watcher "
        "names, never a URL (docs/operations.md lists the metrics).",
        optional=True,
    ),
)

_COUNT = integer(minimum=1)
# 0 would make a loop spin, or retire every worker at once.
_POSITIVE = duration(positive=True)
_CALLBACKS = {
    "before_fork": "master: before it starts worker processes for a watcher; with "
    '`spawn = "fork"` the preloader instead, before each worker it forks',
    "after_fork": "worker: in a new worker process, after the `app` import (with "
    '`spawn = "fork"`: in the forked worker)',
    "before_work": "worker: before its run loop starts",
    "after_work": "worker: after its run loop ends",
    "around_work": "worker: wraps its run loop",
    "before_polling": "master: before each count of ready jobs",
    "after_polling": "master: after each count of ready jobs",
    "around_polling": "master: wraps each count of ready jobs",
    "before_monitor": "master: before each memory and age check",
    "after_monitor": "master: after each memory and age check",
    "around_monitor": "master: wraps each memory and age check",
}

OPTIONS: tuple[Option, ...] = (
    Option("", "working_directory", PATH, "worker processes chdir here",
           default_factory=lambda context: context.base,
           default_doc="the folder holding the settings file"),
    Option("", "monitor_interval", _POSITIVE,
           "how often the master checks each worker's memory and age", default=5.0),
    Option("", "polling_interval", _POSITIVE,
           "how often the master counts ready jobs when no NOTIFY arrives", default=30.0),
    Option("", "pid_file", PATH, "where the master plugin writes its pid"),
    Option("", "log_file", PATH, "log file of master and workers",
           default_doc="unset (stderr)"),
    Option("", "log_level", choice("debug", "info", "warning", "error"),
           "level of the log file", default="info"),
    Option("", "log_format", choice("text", "json"), 'log lines as text, or `"json"`: '
           "one JSON object per line (time, level, logger, pid, message and the line's "
           "fields: job id, queue, callable, attempt, duration, outcome, watcher…) for a "
           "log collector", default="text"),
    Option("", "database_timeout", _POSITIVE, "bound on every database round trip of "
           "workers and the master: the server's `statement_timeout`, and a deadline a "
           "few seconds longer on the client for a server that stops answering (the "
           "connection is then dropped and made again)", default=10.0),
    Option("", "listen", BOOLEAN, "use LISTEN/NOTIFY to wake the master at once when "
           "jobs are enqueued", default=True),
    Option("", "app", MODULE, "module every worker imports (preloads) before it runs "
           'jobs, e.g. `"myapp.jobs"`; with `spawn = "fork"` the preloader imports it once '
           "for all workers"),
    Option("", "preload_timeout", _POSITIVE, 'with `spawn = "fork"`: how long a worker\'s '
           "launcher waits for the preloader to fork its worker (while the preloader starts "
           "and imports `app`) before it gives up with exit 78; written into `circus.ini`",
           default=60.0),
    Option("", "recurring_modules", MODULES, "modules the master imports to find the "
           "recurring jobs declared in code with `@recurring` (keep them light: the "
           "master imports them, not your whole application)", default=()),
    *(Option("callbacks", name, CALLABLE, doc) for name, doc in _CALLBACKS.items()),
    Option("databases", "<name>", URL, "connection URL of database `<name>` (letters, "
           "digits, `_`); may read the environment with `${VAR}`",
           default_doc='`primary = "${DJMASTER_DATABASE_URL}"` when the table is absent',
           expand_env=False),
    Option("workers", "name", NAME, "group name (letters, digits, `_`), unique",
           default_factory=lambda context: f"worker{context.index}",
           default_doc="`worker0`, `worker1`, … by position"),
    Option("workers", "queues", STRINGS, "queues this group works on; empty means all",
           default=()),
    Option("workers", "max_processes", _COUNT, "most worker processes, across all "
           "databases", default=1),
    Option("workers", "max_threads", _COUNT, "threads running jobs in each process",
           default=1),
    Option("workers", "spawn", choice("exec", "fork"), "how a worker process starts: "
           '`"exec"`, a new Python that imports `app` itself; `"fork"`, forked on demand '
           "from a preloader that imported `app` once (start in milliseconds, memory "
           "shared copy-on-write; docs/master.md, \"Fork mode\")", default="exec"),
    Option("workers", "max_memory", SIZE, "a worker whose memory exceeds this retires "
           'after its current job: its RSS, or its USS (unique memory) with `spawn = "fork"`'),
    Option("workers", "hard_max_memory", SIZE, "a worker whose memory (as for "
           "`max_memory`) exceeds this is stopped at once; must be greater than "
           "`max_memory`"),
    Option("workers", "max_execution", _POSITIVE, "a worker process this old "
           "retires after its current job"),
    Option("workers", "idle_timeout", duration(), "a worker exits when it has "
           "found no job for this long (0: as soon as a pass finds none)", default=0.0),
    Option("workers", "sleep_delay", _POSITIVE, "how long an idle worker thread "
           "waits before looking for jobs again", default=5.0),
    Option("workers", "read_ahead", count_or_auto(), "jobs reserved per database round "
           'trip; `"auto"`: one per free job thread, more while the recent jobs are short '
           "(the rule: docs/master.md, Reserving jobs)",
           default=None, default_doc='`"auto"`'),
    Option("workers", "max_attempts", _COUNT, "attempts before a job is marked failed",
           default=25),
    Option("workers", "max_run_time", _POSITIVE, "a job running longer fails "
           "and its worker retires; older locks are stale", default=4 * 3600.0),
    Option("workers", "min_priority", integer(), "only run jobs with priority ≥ this"),
    Option("workers", "max_priority", integer(), "only run jobs with priority ≤ this"),
    Option("workers", "destroy_failed_jobs", BOOLEAN, "delete jobs that fail for good "
           "instead of keeping them with `failed_at`", default=False),
    Option("workers", "keep_finished", duration(), "keep each finished job (succeeded, "
           "failed for good, cancelled) this long in `delayed_jobs_finished`, with its "
           "result or error (`djmaster jobs show`); 0: delete a succeeded job at once, "
           "delayed_job's way. A job enqueued with `keep_finished` overrides it",
           default=0.0),
    Option("circus", "endpoint", ENDPOINT, "circusd control socket (loopback or ipc:// only)",
           default="tcp://127.0.0.1:5555"),
    Option("circus", "pubsub_endpoint", ENDPOINT, "circusd event socket (loopback or ipc://)",
           default="tcp://127.0.0.1:5556"),
    Option("circus", "stats_endpoint", ENDPOINT, "circusd stats socket (loopback or ipc://)",
           default="tcp://127.0.0.1:5557"),
    Option("circus", "check_delay", _POSITIVE, "circusd's delay before it "
           "checks (and respawns) processes", default=5.0),
    Option("circus", "logoutput", LOGOUTPUT, 'circusd log; `"-"` means stdout',
           default="-"),
    Option("recurring", "name", NAME, "entry name (letters, digits, `_`), unique: "
           "the database records each due time enqueued under it"),
    Option("recurring", "callable", CALLABLE, 'the job, `"module.path:function"`'),
    Option("recurring", "cron", CRON, "a cron expression (5 fields, or 6 with "
           'seconds first), e.g. `"0 3 * * *"`, evaluated in `timezone`'),
    Option("recurring", "every", _POSITIVE, "a period instead of `cron`: due at each "
           'multiple of it since the Unix epoch, e.g. `"30s"`, `"5m"`'),
    Option("recurring", "args", ARRAY, "positional arguments of the job (JSON values)",
           default=()),
    Option("recurring", "kwargs", TABLE, "keyword arguments of the job (JSON values)",
           default_factory=lambda context: {}, default_doc="`{}`"),
    Option("recurring", "queue", STRING, "queue of the jobs", default="default"),
    Option("recurring", "priority", integer(), "priority of the jobs (lower runs first)",
           default=0),
    Option("recurring", "timezone", TIMEZONE, "IANA time zone of `cron`", default="UTC"),
    Option("recurring", "catch_up", BOOLEAN, "after due times passed while no master "
           "ran, enqueue the last of them once (false: skip them)", default=False),
    Option("recurring", "database", NAME, "the database (of `[databases]`) the jobs go "
           "to", default_doc="the first database"),
    Option("circus", "stop_timeout", _POSITIVE, "how long your service manager waits "
           "for circusd to stop before it kills everything (systemd's `TimeoutStopSec`, "
           "Docker's stop grace period): `djmaster-config check` warns when a group's "
           "`graceful_timeout` (`max_run_time` + 10s) is longer",
           default_doc="unset (no check)"),
    Option("metrics", "port", PORT, "TCP port of the metrics endpoint (required in "
           "`[metrics]`)"),
    Option("metrics", "host", HOST, "address the metrics endpoint listens on; any "
           "other than loopback opens it to other machines (no authentication: `check` "
           "warns)", default="127.0.0.1"),
)  # fmt: skip


def options_in(section: str) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if option.section == section)
