"""The annotated ``djmaster.toml`` that ``djmaster-config init`` writes.

The counterpart of delayed_job_master's generated ``config/delayed_job_master.rb``:
every option of every section, each with its one-line doc and its default. It is built
from the declarations in :mod:`circus_djmaster.config.options` (``SECTIONS``, ``OPTIONS``), so
a new option shows up here without anyone writing it twice. What is written by hand is
only what the declarations cannot know: the two example worker groups (:data:`GROUPS`)
and an example value for options that have no default (:data:`EXAMPLES`).

A line ``# key = value`` shows the default (or, marked ``# example``, a value for an
option that is unset by default); removing the leading ``# `` gives a valid setting.
The text is the same on every run: no date, no path, no environment in it.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from circus_djmaster.config.kinds import describe
from circus_djmaster.config.options import SECTIONS, Option, Section, options_in
from circus_djmaster.config.settings import DEFAULT_DATABASES, Settings, parse_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

__all__ = ["EXAMPLES", "FILENAME", "GROUPS", "annotated_toml", "template_settings"]

FILENAME = "djmaster.toml"
WIDTH = 88

#: The example worker groups, in the spirit of the seed's worker1/worker2. Values are
#: raw TOML values, checked by parsing the generated file (see the unit tests).
GROUPS: tuple[Mapping[str, Any], ...] = (
    {
        "name": "default",
        "queues": ["default"],
        "max_processes": 2,
        "max_threads": 2,
        "max_memory": "300MB",
        "max_execution": "1h",
    },
    {
        "name": "mail",
        "queues": ["mail"],
        "max_processes": 1,
    },
)

#: Example values (TOML literals) of options that are unset by default, or whose default
#: is computed and so has no literal. Keyed by (section, option name).
EXAMPLES: Mapping[tuple[str, str], str] = {
    ("", "working_directory"): '"."',
    ("", "pid_file"): '"tmp/pids/djmaster.pid"',
    ("", "log_file"): '"log/djmaster.log"',
    ("", "app"): '"myapp.jobs"',
    ("workers", "max_memory"): '"300MB"',
    ("workers", "hard_max_memory"): '"1GB"',
    ("workers", "max_execution"): '"1h"',
    ("workers", "read_ahead"): "100",
    ("workers", "min_priority"): "0",
    ("workers", "max_priority"): "10",
    ("recurring", "name"): '"nightly_report"',
    ("recurring", "callable"): '"myapp.jobs:nightly_report"',
    ("recurring", "cron"): '"0 3 * * *"',
    ("recurring", "every"): '"5m"',
    ("recurring", "kwargs"): '{ to = "ops@example.com" }',
    ("recurring", "database"): '"primary"',
    ("circus", "stop_timeout"): '"90s"',
    ("metrics", "port"): "9188",
}

#: Sections in the order they are written; a declared section missing here comes last.
#: TOML needs the top-level keys before any table.
ORDER = ("", "databases", "workers", "callbacks", "circus", "metrics")

_HEADER = """\
# djmaster.toml: settings of circus-djmaster (written by `djmaster-config init`).
#
# Every option is listed with one line on what it does. A commented-out line
# `# key = value` shows the default; one marked `# example` shows a value for an
# option that is unset by default. Remove the leading `# ` to set it.
#
#   Durations: a number of seconds or "500ms", "30s", "5m", "4h", "1h30m".
#   Sizes:     a number of bytes or "512KB", "300MB", "1GB" (powers of 1024).
#   Paths:     relative ones are resolved against the folder holding this file.
#   ${VAR}:    any string may read an environment variable (${VAR:-default}).
#
# Reference: docs/settings.md of circus-djmaster. After editing, check this file
# and render circus.ini again:
#   djmaster-config check djmaster.toml
#   djmaster-config render djmaster.toml -o circus.ini
"""

_DATABASES_NOTE = """\
# Keep secrets out of files and command lines: "${VAR}" reads an environment variable
# when a connection is made (not when circus.ini is rendered), so the password is
# neither in this file nor in circus.ini nor in any `ps` line. Set it where
# `djmaster migrate` and circusd run, e.g.
#   export DJMASTER_DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/DBNAME
"""

#: A second database, shown commented out (the seed's `databases [:primary, :secondary]`).
_SECOND_DATABASE = ("secondary", "${DJMASTER_SECONDARY_DATABASE_URL}")

_QUEUE_NOTE = (
    '# (jobs enqueued without a queue go to "default"; a NULL queue from plain SQL\n'
    "# runs only in a group without `queues`)"
)


def _comment(text: str, width: int = WIDTH) -> list[str]:
    return textwrap.wrap(
        text, width=width, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
    )


def _lines_for(option: Option, raw: Mapping[str, Any], *, doc: bool) -> list[str]:
    """The lines of one option: its doc (if ``doc``) and its setting, set or commented."""
    lines = [f"# {option.doc}"] if doc else []
    default = option.default_toml
    if option.name in raw:
        literal = describe(raw[option.name])  # TOML spelling of strings, numbers, arrays
        line = f"{option.name} = {literal}"
        if default is not None and literal != default:
            line += f"  # default: {default}"
        elif option.default is None and option.default_factory is None:
            line += "  # default: unset"
        return [*lines, line]
    example = EXAMPLES.get((option.section, option.name))
    if default is not None:
        lines.append(f"# {option.name} = {default}")
    elif example is not None:
        suffix = "" if option.default_doc is None else f"; default: {option.default_doc}"
        lines.append(f"# {option.name} = {example}  # example{suffix}")
    elif option.section == "callbacks":
        lines.append(f'# {option.name} = "myapp.hooks:{option.name}"  # example')
    else:  # a new option without an example: still listed; a unit test asks for one
        note = option.default_doc or "unset"
        lines.append(f"# {option.name}: no example (default: {note})")
    return lines


def _section_block(section: Section) -> list[str]:
    if section.name == "workers":
        return _workers(section)
    if section.name == "recurring":
        return _recurring(section)
    lines = ["", *_comment(section.doc)]
    if section.optional:
        # Present, the table turns its feature on: leave it to the user to uncomment.
        lines.append(f"# {section.header}  # uncomment with the lines below to turn it on")
    elif section.name:
        lines.append(section.header)
    if section.name == "databases":
        return lines + _databases()
    for option in options_in(section.name):
        lines += _lines_for(option, {}, doc=True)
    return lines


def _databases() -> list[str]:
    (option,) = options_in("databases")
    lines = [*_DATABASES_NOTE.splitlines(), f"# {option.doc}"]
    for name, url in DEFAULT_DATABASES.items():
        lines.append(f"{name} = {describe(url)}")
    name, url = _SECOND_DATABASE
    lines.append(f"# {name} = {describe(url)}  # example")
    return lines


def _workers(section: Section) -> list[str]:
    lines: list[str] = []
    for index, group in enumerate(GROUPS):
        first = index == 0
        lines.append("")
        if first:
            lines += _comment(section.doc)
        else:
            lines.append("# The same options as above, without their descriptions.")
        lines.append(section.header)
        for option in options_in("workers"):
            option_lines = _lines_for(option, group, doc=first)
            if first and option.name == "queues" and group.get("queues"):
                option_lines.insert(-1, _QUEUE_NOTE)
            lines += option_lines
    return lines


def _recurring(section: Section) -> list[str]:
    """An example entry, wholly commented out (an entry needs a name and a callable)."""
    lines = ["", *_comment(section.doc), f"# {section.header}"]
    for option in options_in("recurring"):
        lines.append(f"# {option.doc}")
        if option.name == "every":  # the alternative to cron: an entry takes one of them
            example = EXAMPLES[("recurring", "every")]
            lines.append(f"# (instead of cron) every = {example}  # example")
            continue
        lines += _lines_for(option, {}, doc=False)
    return lines


def annotated_toml() -> str:
    """The whole annotated ``djmaster.toml``."""
    order = {name: position for position, name in enumerate(ORDER)}
    sections = sorted(SECTIONS, key=lambda section: order.get(section.name, len(ORDER)))
    lines = _HEADER.splitlines()
    for section in sections:
        lines += _section_block(section)
    return "\n".join(lines) + "\n"


def template_settings(path: str | Path, text: str | None = None) -> Settings:
    """Parse the annotated file (or ``text``) as if it were read from ``path``.

    The environment is not read: the template's only ``${VAR}`` is in a database URL,
    which is expanded when a connection is made.
    """
    data = tomllib.loads(annotated_toml() if text is None else text)
    return parse_settings(data, Path(path), environ={})
