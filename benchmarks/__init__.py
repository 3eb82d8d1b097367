"""Benchmark and demo scripts; ``python -m benchmarks.regenerate`` rewrites the committed docs/ tables and figures."""
