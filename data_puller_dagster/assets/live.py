"""`<feed>/live_ohlcv_<tf>`: the live table `data-puller stream` writes, as an external asset, and the
live-vs-batch comparison the normalized asset reports.

Why external: the stream is a long-running process outside Dagster, so Dagster never materializes the
table; the `<feed>__live_progress` sensor (automation/live_sensor.py) records what the stream wrote as
AssetObservations, which gives the UI the table's rows, last candle and lag. Only feeds whose source
has a live mode and whose live table reaches storage.primary get one: that is the store the sensor and
the comparison read back.

The comparison never changes stored data: the batch (normalized) layer is the authority, the live
table is what was seen in real time, and a mismatch is only reported (a WARN check on normalized).
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice

CHECK_LIVE = "live_matches_batch"
LIVE_VS_BATCH = "live_vs_batch"
SAMPLE = 20  # mismatched candles listed in the check's metadata


def live_sources() -> tuple[str, ...]:
    """Sources with a live mode (imported late: the stream runner pulls in the websocket code)."""
    from data_puller_dagster.stream.runner import LIVE_SOURCES

    return tuple(LIVE_SOURCES)


def has_live_table(cfg: AppConfig, feed: FeedConfig) -> bool:
    """The feed can stream and its live table is routed to storage.primary (where it is read back)."""
    if feed.source not in live_sources():
        return False
    table = table_ref(feed, "live", feed.timeframe)
    primary = cfg.storage.primary
    return any(primary in route.destinations for route in Router(cfg).routes_for(table))


def live_feeds(cfg: AppConfig) -> list[FeedConfig]:
    return [f for f in cfg.feeds if has_live_table(cfg, f)]


def build_live_assets(cfg: AppConfig) -> list[dg.AssetSpec]:
    """One external asset per live feed, grouped, tagged and kinded like the feed's other layers."""
    specs = []
    for feed in live_feeds(cfg):
        tf = feed.timeframe
        specs.append(
            dg.AssetSpec(
                key=asset_key(feed, "live", tf),
                group_name=feed.name,
                kinds={"pandas", *storage_kinds(cfg, feed, "live", tf)},
                tags=catalog_tags(feed, "live", tf),
                description=(
                    f"Closed {tf} candles of the current days as `data-puller stream` received them "
                    "(canonical rows, one per symbol and ts). Written by `data-puller stream`, not by "
                    f"Dagster: the `{live_sensor_name(feed)}` sensor records its progress (rows, last "
                    "candle, lag). The normalized layer stays the authority; its live_matches_batch "
                    "check reports where the two differ."
                ),
                metadata=catalog_metadata(cfg, feed, "live", tf),
            )
        )
    return specs


def live_sensor_name(feed: FeedConfig) -> str:
    return f"{feed.name}__live_progress"


def live_check_spec(feed: FeedConfig, norm_key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        CHECK_LIVE,
        asset=norm_key,
        blocking=False,
        description=(
            "Where the live table (data-puller stream) has candles of the materialized days and symbols: "
            "close and volume equal the batch's on the common candles (live-only / batch-only candles "
            "counted). Report only: the batch is stored as it is."
        ),
    )


def compare_live_batch(live: pd.DataFrame, batch: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame]:
    """Figures of the live rows against the batch rows of the same (symbol, day)s, and the mismatches.

    Only (symbol, day)s the live table has are compared (a day the stream never saw is no mismatch),
    and only the batch's closed candles (the stream stores closed candles only). close/volume are
    equal when within 1e-9 relative (decimal text parsed twice) or both NaN.
    """
    cols = ["symbol", "ts", "close", "volume"]
    if live.empty:  # a store has no schema for a table never written: no columns at all
        live = batch.iloc[:0]
    live = live[cols].drop_duplicates(["symbol", "ts"], keep="last")
    batch = batch.loc[batch["is_final"].to_numpy(dtype=bool), cols]
    live_days = live.assign(day=live["ts"].dt.floor("D"))[["symbol", "day"]].drop_duplicates()
    batch = batch.assign(day=batch["ts"].dt.floor("D")).merge(live_days, on=["symbol", "day"])
    m = live.merge(batch.drop(columns="day"), on=["symbol", "ts"], how="outer", suffixes=("_live", "_batch"),
                   indicator=True)  # fmt: skip
    both = m[m["_merge"] == "both"]
    diffs = {}
    bad = np.zeros(len(both), dtype=bool)
    for c in ("close", "volume"):
        a, b = both[f"{c}_live"].to_numpy("float64"), both[f"{c}_batch"].to_numpy("float64")
        bad |= ~(np.isclose(a, b, rtol=1e-9, atol=0.0) | (np.isnan(a) & np.isnan(b)))
        d = np.abs(a - b)
        diffs[c] = float(np.nanmax(d)) if len(d) and not np.isnan(d).all() else 0.0
    mism = both[bad].drop(columns="_merge").sort_values(["symbol", "ts"])
    figures = {
        "candles_compared": len(both),
        "mismatches": int(bad.sum()),
        "max_abs_close_diff": diffs["close"],
        "max_abs_volume_diff": diffs["volume"],
        "live_only_candles": int((m["_merge"] == "left_only").sum()),
        "batch_only_candles": int((m["_merge"] == "right_only").sum()),
        "live_days": len(live_days),
    }
    return figures, mism


def live_check_result(
    cfg: AppConfig, feed: FeedConfig, norm_key: dg.AssetKey, batch: pd.DataFrame, window: PartitionSlice
) -> dg.AssetCheckResult:
    """The live_matches_batch result of a normalized run: the window's live rows against its batch rows.

    A live table that cannot be read is reported on the check (WARN), never fails the batch run.
    """
    try:
        live = Router(cfg).read(table_ref(feed, "live", feed.timeframe), window)
    except Exception as e:  # noqa: BLE001 - a report, not a gate: the batch is stored either way
        return dg.AssetCheckResult(
            asset_key=norm_key, check_name=CHECK_LIVE, passed=False, severity=dg.AssetCheckSeverity.WARN,
            description=f"live table unreadable from {cfg.storage.primary!r}: {type(e).__name__}: {e}",
        )  # fmt: skip
    figures, mism = compare_live_batch(live, batch)
    sample = json.loads(mism.head(SAMPLE).to_json(orient="records", date_format="iso"))  # NaN -> null
    return dg.AssetCheckResult(
        asset_key=norm_key,
        check_name=CHECK_LIVE,
        passed=figures["mismatches"] == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if figures["live_days"] else "no live rows for these days and symbols",
        metadata={
            LIVE_VS_BATCH: dg.MetadataValue.json(figures),
            "mismatches": dg.MetadataValue.int(figures["mismatches"]),
            "candles_compared": dg.MetadataValue.int(figures["candles_compared"]),
            "mismatch_sample": dg.MetadataValue.json(sample),
        },
    )
