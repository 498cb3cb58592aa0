"""Per-partition materialization metadata for range runs.

Why: a run over several (day, symbol) partitions emits one materialization per partition, and Dagster
copies a step's `Output(metadata=...)` onto every one of them, so a 5-day run would show the 5-day totals
on each day. `context.add_asset_metadata(..., partition_key=k)` (Dagster 1.13) attaches metadata to the
materialization of partition `k` only and overrides the Output's keys of the same name there. Assets
therefore split their output by partition key (`date|symbol`, dims sorted by name) and attach each
partition's own figures; run-level totals go to the step's log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.metadata import frame_metadata
from data_puller_dagster.io.tables import PartitionSlice

SIGNIFICANT_DIGITS = 4


def sig(x: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`x` rounded to `digits` significant digits, so the UI shows 0.9167 rather than 0.9166666666666666."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def partition_key_of(day: object, symbol_key: str) -> str:
    """The multi-partition key string of (day, symbol): dims sorted by name -> `date|symbol`."""
    return f"{day}|{symbol_key}"


def window_partition_keys(window: PartitionSlice) -> list[str]:
    """Every partition key of the run's rectangle, day-major."""
    return [partition_key_of(d.isoformat(), k) for d in window.dates for k in window.keys]


def partition_groups(df: pd.DataFrame, window: PartitionSlice) -> dict[str, pd.DataFrame]:
    """The rows of `df` per partition key of `window` (an empty frame for a partition without rows).

    A row belongs to the UTC day of its `ts` and to the partition key of its display `symbol`; rows
    without a timestamp belong to no partition (they are counted at run level).
    """
    empty = df.iloc[0:0]
    groups: dict[str, pd.DataFrame] = {}
    if len(df) and "ts" in df.columns and "symbol" in df.columns:
        key_of = {display: key for key, display in window.symbols.items()}
        ts = pd.to_datetime(df["ts"], utc=True, errors="coerce")
        day = ts.dt.strftime("%Y-%m-%d")
        sym = df["symbol"].astype("string").map(key_of)
        for (d, s), g in df.groupby([day, sym], sort=False, dropna=True):
            groups[partition_key_of(d, s)] = g
    return {k: groups.get(k, empty) for k in window_partition_keys(window)}


def add_partition_metadata(
    context: AssetExecutionContext,
    asset_key: dg.AssetKey,
    groups: Mapping[str, pd.DataFrame],
    extra: Callable[[str, pd.DataFrame], Mapping[str, Any]] | None = None,
) -> None:
    """Attach each partition's own frame metadata (+ `extra(key, rows)`) to that partition only."""
    for key, rows in groups.items():
        md = {**frame_metadata(rows), **(extra(key, rows) if extra else {})}
        context.add_asset_metadata(md, asset_key=asset_key, partition_key=key)


def log_run_totals(context: AssetExecutionContext, what: str, totals: Mapping[str, Any]) -> None:
    """Run-level totals belong to the step, not to each partition: they go to the run's log."""
    context.log.info(f"{what}: run totals " + ", ".join(f"{k}={v}" for k, v in totals.items()))
