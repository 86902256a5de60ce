"""``hooks.after_reap = circus_djmaster.hooks.after_reap`` and ``hooks.before_spawn =
circus_djmaster.hooks.before_spawn``: the paths every ``circus.ini`` names
(``djmaster-config render`` writes them). The hooks live in
:mod:`circus_djmaster.circusd.hooks`; this module only keeps their dotted paths working.
"""

from __future__ import annotations

from circus_djmaster.circusd.hooks import after_reap, before_spawn

__all__ = ["after_reap", "before_spawn"]
