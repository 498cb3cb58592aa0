"""Benchmarks for data-puller-dagster (issue 10): run with `python -m benchmarks [--quick]`.

Each module measures one thing and exposes `run(quick: bool) -> list[dict]`; `__main__` runs every module
in its own subprocess (so peak RSS is per benchmark) and writes the table to benchmarks/results/latest.md.
These are scripts, never timed tests.
"""
