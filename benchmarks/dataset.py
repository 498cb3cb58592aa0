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


def features(quick: bool) -> list[dict]:
    """Issue 19: every feature group on (OHLCV, indicators, volume profile, 13 TA-Lib patterns), context
    100, on the real BTCUSDT 1h fixture (4,357 candles): the enriched day windows with patterns, then
    build_examples and write_dataset (JSONL + manifest with token estimates + README card) for the
    default JSON layout and the compact one (bps + CSV context)."""
    from data_puller_dagster.config import DatasetConfig, IndicatorsConfig
    from data_puller_dagster.transform.indicators import compute_indicators_by_day, warmup_candles
    from data_puller_dagster.transform.llm_card import DatasetCard
    from data_puller_dagster.transform.llm_dataset import build_examples, features_for, write_dataset
    from data_puller_dagster.transform.lookback import days_for_candles
    from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h

    tmp = Path(tempfile.mkdtemp(prefix="bench-dsf-"))
    cfg = base_config(tmp, feed={"timeframe": "1h", "derived_timeframes": [], "enrich_timeframes": ["1h"],
                                 "dataset_timeframe": "1h", "start_date": "2020-12-01"})  # fmt: skip
    feed = cfg.feed("bench")
    ind = IndicatorsConfig(patterns=["engulfing", "doji", "hammer", "invertedhammer", "shootingstar", "hangingman",
                                     "morningstar", "eveningstar", "3whitesoldiers", "3blackcrows", "harami",
                                     "piercing", "darkcloudcover"])  # fmt: skip
    runs = 1 if quick else 3
    candles = btcusdt_1h()
    lo, hi = candles["ts"].min().floor("D"), candles["ts"].max().floor("D") + pd.Timedelta(days=1)
    warm = warmup_candles(ind)
    t_e, _, enriched = timed(lambda: compute_indicators_by_day(
        candles, ind, start=lo, end=hi, lookback_days=days_for_candles("crypto", "1h", warm)), runs)  # fmt: skip
    out = [row("features: enrich 1h by day, 19 indicators + 13 patterns", len(candles), t_e)]
    every = ["ohlcv", "technical_indicators", "volume_profile", "price_action_patterns"]
    split = {"validation_start": "2021-04-01", "test_start": "2021-05-01"}
    for label, extra in (("json", {}), ("compact bps+csv", {"price_encoding": "bps", "context_layout": "csv"})):
        ds = DatasetConfig(include_features=every, context_window=100, min_quality=0.0, split=split, **extra)
        t_b, _, batch = timed(lambda ds=ds: build_examples(enriched, feed=feed, dataset=ds, indicators=ind,
                                                           start=lo, end=hi), runs)  # fmt: skip
        card = DatasetCard(feed, ds, features_for(feed, ds, ind))
        t_w, _, manifest = timed(lambda card=card, frame=batch.frame: write_dataset([frame], tmp / "out", name="bench",
                                                                 config_hash="x", card=card), runs)  # fmt: skip
        mb = sum(f["bytes"] for f in manifest["files"].values()) / 1e6
        ex = len(batch.frame)
        tokens = sum(f["estimated_tokens"] for f in manifest["files"].values())
        out += [
            row(f"features {label}: build_examples", ex, t_b,
                note=f"{mb / t_b:.0f} MB/s, {mb * 1e3 / ex:.1f} kB and ~{tokens / ex:,.0f} tokens/example"),
            row(f"features {label}: write_dataset", ex, t_w, note=f"{mb / t_w:.0f} MB/s ({mb:.0f} MB, tokens + card)"),
            row(f"features {label}: total", ex, t_b + t_w, note=f"{mb / (t_b + t_w):.0f} MB/s"),
        ]  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    return out


CASES["features"] = features
