"""The names circus knows us by: watchers, the plugin, the hook.

``djmaster-config render`` writes them into ``circus.ini``; the master finds its
watchers by them in circus' answers and events; ``djmaster status`` and operators
(``circusctl start djmaster-mail-primary``) use them. ``circus.ini`` files already
deployed name :data:`PLUGIN_CLASS`, :data:`AFTER_REAP_HOOK` (and, since issue 11,
:data:`BEFORE_SPAWN_HOOK`).
"""

from __future__ import annotations

__all__ = [
    "AFTER_REAP_HOOK",
    "BEFORE_SPAWN_HOOK",
    "PLUGIN_CLASS",
    "PLUGIN_SECTION",
    "PLUGIN_WATCHER",
    "WATCHER_PREFIX",
    "watcher_name",
]

WATCHER_PREFIX = "djmaster"
#: ``[plugin:djmaster]``; circus names the plugin's own watcher ``plugin:djmaster``.
PLUGIN_SECTION = "djmaster"
PLUGIN_WATCHER = f"plugin:{PLUGIN_SECTION}"
PLUGIN_CLASS = "circus_djmaster.plugin.DelayedJobMaster"
AFTER_REAP_HOOK = "circus_djmaster.hooks.after_reap"
BEFORE_SPAWN_HOOK = "circus_djmaster.hooks.before_spawn"


def watcher_name(group: str, database: str) -> str:
    """The circus watcher of worker group ``group`` on database ``database``.

    Group and database names are ``[A-Za-z0-9_]+`` (config.kinds.NAME_PATTERN), so the
    hyphens separate them unambiguously. circus lower-cases watcher names in ``list``
    and in event topics: ``config.render.watcher_index`` maps them back.
    """
    return f"{WATCHER_PREFIX}-{group}-{database}"
