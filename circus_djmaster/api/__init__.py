"""The enqueue API, what applications import: ``@job``, ``enqueue``, ``current_job``.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
