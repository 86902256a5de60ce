"""The settings file: value kinds, option declarations, loader, circus.ini rendering.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
