"""What crosses a process boundary: exit codes, ``locked_by``, watcher names, process
titles, the running-jobs file, the NOTIFY channel and payload.

Workers, masters, circusd's hook, ``djmaster status`` and other hosts read what these
modules write, possibly from another version during a deploy, so changing any of them
needs a compatibility decision. They import nothing of the package and nothing heavy
(the standard library; setproctitle only when a title is set).
"""
