"""Shared by every side: back-off, logging, memory readings.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
