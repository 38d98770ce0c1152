"""Benchmarks for aggregator: run with `python -m benchmarks run [--quick]` (see README.md here)."""
