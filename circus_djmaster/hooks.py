"""``hooks.after_reap = circus_djmaster.hooks.after_reap``: the path every ``circus.ini``
names (``djmaster-config render`` writes it). The hook lives in
:mod:`circus_djmaster.circusd.hooks`; this module only keeps its dotted path working.
"""

from __future__ import annotations

from circus_djmaster.circusd.hooks import after_reap

__all__ = ["after_reap"]
