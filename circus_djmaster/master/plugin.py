"""``[plugin:djmaster] use = circus_djmaster.plugin.DelayedJobMaster``: the circus side.

A thin adapter: it reads the plugin options, loads the settings, sets up the log file,
the pid file and the process title, installs the signal handlers, and runs the
:class:`~circus_djmaster.master.loop.Master` on the plugin's event loop (circus gives each
plugin a tornado IOLoop, which runs on asyncio). circus' pubsub events reach the master
through :meth:`DelayedJobMaster.handle_recv`.

circus starts the plugin as ``python -c 'from circus import plugins; plugins.main()'
--config settings:/abs/path.toml:::name:plugin:djmaster…``: every option of the
section is pasted into that command line, so values must not hold spaces or ``:::``
(docs/master.md, "circus 0.19, measured"). The plugin's stdout and stderr go nowhere:
everything is logged to the settings' ``log_file``, or, when it is unset, to
``<settings stem>-master.log`` next to the settings file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from circus.plugins import CircusPlugin

from circus_djmaster.circusd.async_client import AsyncCircus
from circus_djmaster.common import logs
from circus_djmaster.config.settings import Settings, load_settings
from circus_djmaster.contracts import titles
from circus_djmaster.contracts.watchers import PLUGIN_WATCHER
from circus_djmaster.exceptions import SettingsError
from circus_djmaster.master.loop import Master
from circus_djmaster.master.metrics import MetricsRecorder
from circus_djmaster.master.signals import HANDLED_SIGNALS, circus_stops_me, stop_own_watcher
from circus_djmaster.master.state import LoopExit, mtime_ns

__all__ = [
    "DelayedJobMaster",
    "default_log_file",
    "metrics_for",
    "remove_pid_file",
    "write_pid_file",
]

log = logging.getLogger(__name__)

#: How often a master whose settings failed to load looks at the file again.
SETTINGS_RECHECK = 1.0
#: What every JSON log line of the master says about its process.
MASTER_LOG_CONTEXT = {"role": "master"}


def default_log_file(settings_path: Path) -> Path:
    """Where the master logs when the settings name no ``log_file``."""
    return settings_path.with_name(f"{settings_path.stem}-master.log")


class DelayedJobMaster(CircusPlugin):  # type: ignore[misc]  # circus has no type hints
    """The circus plugin: what ``[plugin:djmaster]`` runs (contracts.watchers.PLUGIN_CLASS)."""

    name = "djmaster"

    def __init__(
        self,
        endpoint: str,
        pubsub_endpoint: str,
        check_delay: float,
        ssh_server: str | None = None,
        **config: Any,
    ) -> None:
        super().__init__(endpoint, pubsub_endpoint, check_delay, ssh_server=ssh_server, **config)
        self.settings_path = Path(str(config.get("settings", ""))).expanduser()
        self.own_watcher = str(config.get("name") or PLUGIN_WATCHER)
        self.master: Master | None = None
        self.loop_exit: LoopExit | None = None

    # --- CircusPlugin hooks ------------------------------------------------------------

    def handle_init(self) -> None:
        # Runs in start() before the loop; the coroutine runs once the loop does.
        self.loop.add_callback(self._main)

    def handle_recv(self, data: Any) -> None:
        if self.master is None:
            return
        try:
            watcher, event, message = self.split_data(data)
            payload = self.load_message(message)
        except Exception:
            return
        self.master.on_event(watcher, event, payload)

    def handle_stop(self) -> None:
        pass

    # --- the process -------------------------------------------------------------------

    async def _main(self) -> None:
        circus = AsyncCircus(self.endpoint, timeout=5.0)
        pid_file: Path | None = None
        metrics: MetricsRecorder | None = None
        try:
            titles.set_title(titles.master_title(self.settings_path))
            settings = await self._load_settings(circus)
            if settings is None:
                return
            pid_file = settings.pid_file
            if pid_file is not None:
                write_pid_file(pid_file, os.getpid())
            metrics = metrics_for(settings)
            master = Master(settings, circus, own_watcher=self.own_watcher, metrics=metrics)
            self._install_signals(master.record_signal)
            self.master = master
            self.loop_exit = await master.run()
            log.info("master exits (%s)", self.loop_exit.value)
        except Exception:
            log.exception("the master failed; circus will start it again")
        finally:
            self.master = None
            if metrics is not None:
                metrics.close()
            if pid_file is not None and self.loop_exit is not LoopExit.RESTART:
                remove_pid_file(pid_file, os.getpid())
            circus.close()
            logging.shutdown()
            self.loop.stop()

    def _install_signals(self, record: Any) -> None:
        loop = asyncio.get_running_loop()
        for signum in HANDLED_SIGNALS:
            loop.add_signal_handler(signum, record, int(signum))

    async def _load_settings(self, circus: AsyncCircus) -> Settings | None:
        """The settings, or None after waiting out a broken file (see below).

        A master that cannot read its settings must not crash-loop (circus would
        respawn it every check_delay): it logs the problem once, then waits for the
        file to change (and exits, so circus starts a fresh one) or for a signal.
        """
        try:
            settings = load_settings(self.settings_path)
        except SettingsError as error:
            logs.configure(
                default_log_file(self.settings_path),
                "info",
                prefix="master ",
                context=MASTER_LOG_CONTEXT,
            )
            log.error("cannot load the settings; waiting for the file to change:\n%s", error)
            await self._wait_for_settings(circus)
            return None
        logs.configure(
            settings.log_file or default_log_file(settings.path),
            settings.log_level,
            prefix="master ",
            log_format=settings.log_format,
            context=MASTER_LOG_CONTEXT,
        )
        titles.set_title(titles.master_title(settings.path))
        return settings

    async def _wait_for_settings(self, circus: AsyncCircus) -> None:
        signals: asyncio.Queue[int] = asyncio.Queue()
        self._install_signals(signals.put_nowait)
        mtime = mtime_ns(self.settings_path)
        while mtime_ns(self.settings_path) == mtime:
            try:
                signum = await asyncio.wait_for(signals.get(), SETTINGS_RECHECK)
            except asyncio.TimeoutError:
                continue
            if signum in (signal.SIGUSR2, signal.SIGHUP):
                self.loop_exit = LoopExit.RESTART
                return
            if signum == signal.SIGUSR1:
                logs.reopen()
                continue
            if await circus_stops_me(circus, self.own_watcher, os.getpid()):
                self.loop_exit = LoopExit.RELEASED
                return
            await stop_own_watcher(circus, self.own_watcher, os.getpid())
            self.loop_exit = LoopExit.STOPPED
            return
        log.info("%s changed: restarting the master to read it", self.settings_path)
        self.loop_exit = LoopExit.RESTART


def metrics_for(settings: Settings) -> MetricsRecorder:
    """A recorder serving Prometheus metrics when the settings have ``[metrics]`` (it
    starts listening at once, in threads of its own), else one recording nothing:
    prometheus_client is imported only then."""
    if settings.metrics is None:
        return MetricsRecorder()
    from circus_djmaster.master.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics(settings)
    metrics.serve()
    return metrics


def write_pid_file(path: Path, pid: int) -> None:
    """Write ``pid`` atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{pid}.tmp")
    temporary.write_text(f"{pid}\n", encoding="ascii")
    os.replace(temporary, path)


def remove_pid_file(path: Path, pid: int) -> None:
    """Remove the pid file if it still holds ``pid`` (a newer master may own it)."""
    try:
        if path.read_text(encoding="ascii").strip() == str(pid):
            path.unlink()
    except (OSError, ValueError):
        pass
