"""``[plugin:djmaster] use = circus_djmaster.plugin.DelayedJobMaster``: the path every
``circus.ini`` names (``djmaster-config render`` writes it). The plugin lives in
:mod:`circus_djmaster.master.plugin`; this module only keeps its dotted path working.
"""

from __future__ import annotations

from circus_djmaster.master.plugin import DelayedJobMaster

__all__ = ["DelayedJobMaster"]
