"""Indicator enrichment (the default indicator set) on 1M normalized candles."""

from __future__ import annotations

from benchmarks.common import base_config, normalized_frame, row, timed


def enrich(quick: bool) -> list[dict]:
    import tempfile
    from pathlib import Path

    from data_puller_dagster.transform.indicators import compute_indicators

    cfg = base_config(Path(tempfile.mkdtemp()))
    n, runs = (200_000, 2) if quick else (1_000_000, 5)
    df = normalized_frame(n)
    t, _, out = timed(lambda: compute_indicators(df, cfg.indicators), runs)
    cols = len(out.columns) - len(df.columns)
    return [row("enrich (default indicators)", n, t, target=">= 1M rows/s", note=f"{cols} new columns")]


CASES = {"enrich": enrich}
