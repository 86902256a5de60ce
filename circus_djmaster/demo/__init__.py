"""``djmaster demo``: the whole system on this machine, and the jobs it runs.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
