"""Applications the server loads with ``--app`` in benchmarks: they run inside the server, not in the harness."""
