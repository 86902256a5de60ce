"""Our side of circusd: the after_reap hook it runs, and clients of its control socket.

Empty on purpose: importing a subpackage imports none of its modules (a worker's
start-up imports only what it runs).
"""
