"""The master: the circus plugin that scales the watchers (docs/master.md).

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
