"""Benchmarks, run as ``python -m benchmarks``.

Empty for now: the workloads (W10, F100, L10k, R1k) and their side-by-side baselines are
the subject of the benchmarks issue. Every figure will be a ratio against a baseline
measured in the same run, never a timed assertion in the tests.
"""
