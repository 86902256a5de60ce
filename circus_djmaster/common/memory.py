"""Resident memory of a process and its children, read with psutil.

One rule for the worker (its own limits after each job), the master (memory limits of
every worker) and ``djmaster status``: a job may start processes, and their memory is
the worker's. A child that exits while it is read is left out, never the worker.
"""

from __future__ import annotations

import contextlib

import psutil

__all__ = ["rss_with_children"]


def rss_with_children(process: psutil.Process) -> int:
    """RSS of ``process`` and of all its descendants, in bytes.

    Raises psutil's errors when ``process`` itself cannot be read (gone, a zombie, not
    ours); a descendant that cannot be read (it exited meanwhile) counts 0.
    """
    total = int(process.memory_info().rss)
    try:
        children = process.children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        with contextlib.suppress(psutil.Error):  # the child exited meanwhile
            total += int(child.memory_info().rss)
    return total
