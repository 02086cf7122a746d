"""Benchmarks: each runs as ``python -m bench.NAME [--quick]``."""
