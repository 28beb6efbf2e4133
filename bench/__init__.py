"""Benchmarks: ``make bench`` and ``make bench-growth`` (see docs/performance.md)."""
