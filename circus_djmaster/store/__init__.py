"""The ``delayed_jobs`` table: SQL, statements, the sync and async executors, the embedded server.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
