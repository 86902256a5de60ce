"""The benchmark harness of circus-djmaster: ``python -m benchmarks.run`` (see README.md)."""
