"""A worker process: ``djmaster worker``, its main thread, job threads and job code.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
