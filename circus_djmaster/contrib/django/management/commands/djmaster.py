"""``manage.py djmaster COMMAND ...``: the ``djmaster`` CLI on the project's settings file.

The settings file is ``settings.DJMASTER`` (a path; relative paths are from the current
folder), else ``$DJMASTER_SETTINGS``. ``--settings`` is Django's own option (the Django
settings module), so it is never passed here: the file comes from the settings.

| ``manage.py djmaster ...`` | runs |
|---|---|
| ``status [--json]`` | ``djmaster status --settings FILE`` |
| ``jobs [--database D] list|retry|delete ...`` | ``djmaster jobs --settings FILE ...`` |
| ``wait [--timeout S] [--scheduled]`` | ``djmaster wait --settings FILE ...`` |
| ``enqueue CALLABLE [--args JSON] ...`` | ``djmaster enqueue --settings FILE ...`` |
| ``migrate [--database D]`` | ``djmaster migrate --settings FILE ...`` |
| ``config render [-o FILE]`` / ``config check`` | ``djmaster-config render|check FILE ...`` |
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from circus_djmaster.cli.options import SETTINGS_ENV

CLI_COMMANDS = ("status", "jobs", "wait", "enqueue", "migrate")
CONFIG_COMMANDS = ("render", "check")


def settings_file() -> Path:
    """The djmaster.toml of this project: ``settings.DJMASTER`` or ``$DJMASTER_SETTINGS``.

    Raises CommandError when neither is set or the file does not exist.
    """
    configured = getattr(settings, "DJMASTER", None) or os.environ.get(SETTINGS_ENV)
    if not configured:
        raise CommandError(
            "no djmaster settings file: set DJMASTER = BASE_DIR / 'djmaster.toml' in your "
            f"Django settings (or ${SETTINGS_ENV})"
        )
    path = Path(configured)
    if not path.is_file():
        raise CommandError(f"the djmaster settings file {path} does not exist")
    return path


class Command(BaseCommand):
    help = (
        "circus-djmaster's commands on the settings file named by settings.DJMASTER: "
        "status, jobs, wait, enqueue, migrate, config render|check. "
        "`manage.py djmaster COMMAND -h` for a command's options."
    )
    requires_system_checks: Any = []  # usable even while a check fails (e.g. migrate)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("command", choices=[*CLI_COMMANDS, "config"], metavar="COMMAND")
        parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...")

    def handle(self, *args: Any, **options: Any) -> None:
        command: str = options["command"]
        rest: list[str] = list(options["arguments"])
        path = str(settings_file())
        with (
            contextlib.redirect_stdout(self.stdout._out),
            contextlib.redirect_stderr(self.stderr._out),
        ):
            code = (
                self._config(path, rest) if command == "config" else self._cli(command, path, rest)
            )
        if code:
            raise CommandError(f"djmaster {command} failed (exit {code})", returncode=code)

    def _cli(self, command: str, path: str, rest: list[str]) -> int:
        from circus_djmaster.cli import main as cli

        parser = cli.build_parser()
        parser.prog = "manage.py djmaster"
        parsed = parser.parse_args([command, "--settings", path, *rest])
        return int(parsed.func(parsed))

    def _config(self, path: str, rest: list[str]) -> int:
        from circus_djmaster.cli import config as config_cli

        if not rest or rest[0] not in CONFIG_COMMANDS:
            raise CommandError(
                f"usage: manage.py djmaster config {{{','.join(CONFIG_COMMANDS)}}} ..."
            )
        return config_cli.main([rest[0], path, *rest[1:]])
