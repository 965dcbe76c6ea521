"""pytest-benchmark micro-benchmarks (``make bench-micro``): codecs and the server's pure hot paths.

The one place in bench/ that imports server modules: it measures the pure functions (codecs, protocol
parse/route, frame building) in-process, which is what a micro-benchmark is for.
"""
