"""The command lines: ``djmaster`` (main, admin, devdb) and ``djmaster-config`` (config).

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
