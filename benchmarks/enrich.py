"""Indicator enrichment (the default indicator set): the whole-history function on 1M normalized candles,
and what the enriched asset runs for a range partition (`compute_indicators_by_day`: every UTC day from
its own anchored warm-up window, so a range equals day-by-day builds bit for bit) on 1M 1m candles and on
one year of 1h."""

from __future__ import annotations

from benchmarks.common import base_config, normalized_frame, row, timed


def enrich(quick: bool) -> list[dict]:
    import tempfile
    from pathlib import Path

    import pandas as pd

    from data_puller_dagster.assets.partitions import days_for_candles
    from data_puller_dagster.transform.indicators import compute_indicators, compute_indicators_by_day
    from data_puller_dagster.transform.resample import resample

    cfg = base_config(Path(tempfile.mkdtemp()))
    n, runs = (200_000, 2) if quick else (1_000_000, 5)
    df = normalized_frame(n)
    t, _, out = timed(lambda: compute_indicators(df, cfg.indicators), runs)
    cols = len(out.columns) - len(df.columns)
    rows = [row("enrich (default indicators)", n, t, target=">= 1M rows/s", note=f"{cols} new columns")]

    def by_day(frame: pd.DataFrame, tf: str) -> pd.DataFrame:
        lookback = days_for_candles("crypto", tf, cfg.indicators.warmup_candles)
        start = frame["ts"].min().normalize() + pd.Timedelta(days=lookback)
        end = frame["ts"].max().normalize() + pd.Timedelta(days=1)
        return compute_indicators_by_day(frame, cfg.indicators, start=start, end=end, lookback_days=lookback)

    t, _, out = timed(lambda: by_day(df, "1m"), runs)
    rows.append(row("enrich range partition, 1m (per-day windows)", len(out), t,
                    note="enriched asset path; day by day == range"))  # fmt: skip
    hourly = resample(normalized_frame(YEAR_1H_MINUTES if not quick else n), "1h", "crypto")
    t, _, out = timed(lambda: by_day(hourly, "1h"), runs)
    rows.append(row("enrich range partition, 1h (per-day windows)", len(out), t,
                    note="enriched asset path; one year of 1h"))  # fmt: skip
    return rows


YEAR_1H_MINUTES = 366 * 1440 + 30 * 1440  # a year of output plus the warm-up days read before it

CASES = {"enrich": enrich}
