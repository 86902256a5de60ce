"""The command lines: ``djmaster`` (main.py, admin.py, devdb.py) and ``djmaster-config`` (config.py).

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
