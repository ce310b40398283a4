"""Benchmarks for resumable: every figure is a ratio to a baseline measured in the same run.

``python -m benchmarks`` (``--quick`` for a run under a minute) runs each workload in its
own subprocess, prints a table and the targets, and writes JSON with ``--json PATH``.
See docs/benchmarks.md for how to read the output.
"""
