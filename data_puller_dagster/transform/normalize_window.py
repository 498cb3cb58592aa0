"""One batch of raw candles for a window of (symbol x UTC day) partitions -> what may be stored, and its figures.

Why one function: the normalized asset and the library (`data_puller_dagster.api.pull`, `data-puller
pull`) must accept and reject exactly the same days and report exactly the same gaps and quality. The
steps, in order: `normalize` (canonical rows + quarantine), `judge_days` (each (symbol, day) on its own
rows: wrong interval, too much quarantined), `drop_rejected`, the pandera schema (`validate_normalized`),
rows outside the window, then the calendar figures per symbol and per partition (transform/gap_figures).
The asset turns the result into outputs, metadata and checks; the library into a result object and
routed writes. Plain pandas/numpy, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.acceptance import drop_rejected, judge_days
from data_puller_dagster.transform.gap_figures import (
    WindowGrid,
    partition_figures,
    symbol_completeness,
    window_grid,
)
from data_puller_dagster.transform.normalize import NormalizeReport, normalize
from data_puller_dagster.transform.partition_layout import PartitionGroups, partition_groups
from data_puller_dagster.transform.quality import data_quality_score
from data_puller_dagster.transform.schemas import ValidationSummary, validate_normalized


@dataclass(frozen=True)
class NormalizedWindow:
    """The outcome of `normalize_window` (field by field what the normalized asset reports).

    `data`: canonical rows of the accepted days (rejected days dropped); `keep`: the (symbol key, day)
    partitions that must keep their stored version; `storable`: whether `data` may be written at all
    (schema valid, nothing outside the window, at least one day accepted); `schema_ok`: what the
    blocking `schema_valid` check says (also False when any day was rejected). `per_symbol`: the
    calendar figures of each symbol key over the window (`symbol_completeness`); `figures`: those of
    each `date|symbol` partition (`partition_figures`); the totals are over every symbol of the window.
    """

    data: pd.DataFrame
    quarantine: pd.DataFrame
    report: NormalizeReport
    rejections: pd.DataFrame
    keep: frozenset
    outside: pd.DataFrame
    summary: ValidationSummary
    storable: bool
    schema_ok: bool
    quarantined_fraction: float
    groups: PartitionGroups
    grid: WindowGrid
    per_symbol: dict[str, dict[str, Any]]
    figures: dict[str, dict[str, Any]]
    missing: int
    segments: int
    expected: int
    present: int
    completeness: float
    score: float
    now: pd.Timestamp


def normalize_window(
    raw: pd.DataFrame,
    feed: FeedConfig,
    window: PartitionSlice,
    *,
    max_quarantined_fraction: float,
    now: pd.Timestamp | None = None,
    consume_raw: bool = False,
) -> NormalizedWindow:
    """Normalize, judge, validate and measure one window's raw rows (see the module docstring).

    `raw` holds the provider's rows for the window's symbols and days (rows of other times are dropped
    before, see sources/fetch.py); `now` (default: the current time) decides which candles have closed.
    `consume_raw=True` lets normalize() drop each raw column from `raw` once parsed (only for a frame
    the caller owns and will not read again: it saves a year of raw text's memory).
    """
    now = pd.Timestamp.now(tz="UTC") if now is None else now
    tf = feed.timeframe
    result = normalize(raw, asset_class=feed.asset_class, timeframe=tf, now=now, consume_raw=consume_raw)
    quarantine, report = result.quarantine, result.report
    rejections = judge_days(
        raw, result, timeframe=tf, symbols=window.displays, days=window.dates,
        max_quarantined_fraction=max_quarantined_fraction,
    )  # fmt: skip
    data = drop_rejected(result.data, rejections)
    key_of = {d: k for k, d in window.symbols.items()}
    keep = frozenset((key_of[r.symbol], r.day) for r in rejections.itertuples())

    outside = data[(data["ts"] < window.start_ts) | (data["ts"] >= window.end_ts)]
    summary = validate_normalized(data)
    quarantined_fraction = len(quarantine) / report.rows_in if report.rows_in else 0.0
    storable = summary.ok and outside.empty and len(keep) < len(window.keys) * window.days
    schema_ok = summary.ok and outside.empty and rejections.empty

    # The data's partitions and the calendar grid of the window, computed once for every figure below.
    groups = partition_groups(data, window)
    grid = window_grid(feed, window, groups.layout, now)
    per_symbol = symbol_completeness(feed, window, data, now, grid)
    missing = sum(s["missing"] for s in per_symbol.values())
    segments = sum(s["segments"] for s in per_symbol.values())
    expected = sum(s["expected"] for s in per_symbol.values())
    present = sum(s["present"] for s in per_symbol.values())
    completeness = present / expected if expected else 1.0
    score = data_quality_score(completeness=completeness, rows_in=report.rows_in, quarantined=len(quarantine))
    figures = partition_figures(
        feed, window, data=data, raw=raw, quarantine=quarantine, rejections=rejections, now=now,
        groups=groups, grid=grid,
    )  # fmt: skip
    return NormalizedWindow(
        data=data, quarantine=quarantine, report=report, rejections=rejections, keep=keep, outside=outside,
        summary=summary, storable=bool(storable), schema_ok=bool(schema_ok),
        quarantined_fraction=quarantined_fraction, groups=groups, grid=grid, per_symbol=per_symbol,
        figures=figures, missing=int(missing), segments=int(segments), expected=int(expected),
        present=int(present), completeness=float(completeness), score=float(score), now=now,
    )  # fmt: skip
