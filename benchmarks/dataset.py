"""LLM dataset generation: build_examples (JSON lines) + write_dataset (JSONL files + manifest), in MB/s."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import base_config, normalized_frame, row, timed


def dataset(quick: bool) -> list[dict]:
    from data_puller_dagster.transform.indicators import compute_indicators
    from data_puller_dagster.transform.llm_dataset import build_examples, write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench-ds-"))
    cfg = base_config(tmp, feed={"derived_timeframes": [], "enrich_timeframes": ["1m"], "dataset_timeframe": "1m"},
                      dataset={"min_quality": 0.0, "split": {"validation_start": "2024-03-01",
                                                             "test_start": "2024-03-15"}})  # fmt: skip
    feed = cfg.feed("bench")
    n, runs = (3_000, 2) if quick else (10_000, 3)
    enriched = compute_indicators(normalized_frame(n), cfg.indicators)
    start, end = enriched["ts"].min(), enriched["ts"].max() + pd.Timedelta(minutes=1)

    def build():
        return build_examples(enriched, feed=feed, dataset=cfg.dataset_for(feed), indicators=cfg.indicators,
                              start=start, end=end)  # fmt: skip

    t_b, _, batch = timed(build, runs)
    t_w, _, manifest = timed(
        lambda: write_dataset([batch.frame], tmp / "out", name="bench", config_hash="x"), runs
    )
    mb = sum(f.stat().st_size for f in (tmp / "out").glob("*.jsonl")) / 1e6
    ex = len(batch.frame)
    shutil.rmtree(tmp, ignore_errors=True)
    ctx = cfg.dataset_for(feed).context_window
    return [
        row("llm dataset build_examples", ex, t_b, note=f"{mb / t_b:.0f} MB/s of JSONL, context {ctx}"),
        row("llm dataset write_dataset", ex, t_w, note=f"{mb / t_w:.0f} MB/s ({mb:.0f} MB)"),
        row("llm dataset total", ex, t_b + t_w, note=f"{mb / (t_b + t_w):.0f} MB/s"),
    ]


CASES = {"dataset": dataset}
