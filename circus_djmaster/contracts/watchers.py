"""The names circus knows us by: watchers, the plugin, the hook.

``djmaster-config render`` writes them into ``circus.ini``; the master finds its
watchers by them in circus' answers and events; ``djmaster status`` and operators
(``circusctl start djmaster-mail-primary``) use them. ``circus.ini`` files already
deployed name :data:`PLUGIN_CLASS` and :data:`AFTER_REAP_HOOK`.
"""

from __future__ import annotations

import re

__all__ = [
    "AFTER_REAP_HOOK",
    "PLUGIN_CLASS",
    "PLUGIN_SECTION",
    "PLUGIN_WATCHER",
    "WATCHER_PREFIX",
    "parse_watcher_name",
    "watcher_name",
]

WATCHER_PREFIX = "djmaster"
#: ``[plugin:djmaster]``; circus names the plugin's own watcher ``plugin:djmaster``.
PLUGIN_SECTION = "djmaster"
PLUGIN_WATCHER = f"plugin:{PLUGIN_SECTION}"
PLUGIN_CLASS = "circus_djmaster.plugin.DelayedJobMaster"
AFTER_REAP_HOOK = "circus_djmaster.hooks.after_reap"

# Group and database names are [A-Za-z0-9_]+ (config.kinds.NAME_PATTERN), so "-"
# separates them unambiguously.
_WATCHER_NAME = re.compile(rf"{WATCHER_PREFIX}-([A-Za-z0-9_]+)-([A-Za-z0-9_]+)", re.IGNORECASE)


def watcher_name(group: str, database: str) -> str:
    """The circus watcher of worker group ``group`` on database ``database``."""
    return f"{WATCHER_PREFIX}-{group}-{database}"


def parse_watcher_name(name: str) -> tuple[str, str] | None:
    """``(group, database)`` of a djmaster watcher name, or None for any other watcher.

    circus lower-cases watcher names in ``list`` and in event topics, so the parts
    come back as given: ``config.render.watcher_index`` gives the settings' spelling.
    """
    match = _WATCHER_NAME.fullmatch(name)
    if match is None:
        return None
    return match.group(1), match.group(2)
