"""Benchmarks: `make bench` (or `python -m bench.e2e`, `python -m bench.zip`)."""
