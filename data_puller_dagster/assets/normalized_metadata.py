"""Each (day, symbol) partition's own figures for `<feed>/normalized_ohlcv_<tf>`.

Why per partition: a range run emits one materialization per partition and the UI (and the gap sensor)
read them one by one, so each must carry that day's rows, missing candles, gap segments, quarantined
rows, quality score and first/last candle, not the run's totals. Gaps are counted day by day against
the market calendar (a run of missing candles across midnight is one segment on each day), over candles
that have closed by `now`. A rejected day stores nothing new: its accepted rows are 0, so all its
candles count as missing (the gap sensor refetches it), and it carries the reason and its own counts.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.assets.partition_metadata import partition_groups, partition_key_of, sig
from data_puller_dagster.config import FeedConfig
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.gaps import find_gaps
from data_puller_dagster.transform.quality import data_quality_score

# Metadata key the gap-filling sensor reads: {"YYYY-MM-DD": {"<symbol key>": missing candles}}.
MISSING_BY_DAY = "missing_by_day"


def partition_figures(
    feed: FeedConfig,
    window: PartitionSlice,
    *,
    data: pd.DataFrame,
    raw: pd.DataFrame,
    quarantine: pd.DataFrame,
    rejections: pd.DataFrame,
    now: pd.Timestamp,
) -> dict[str, dict[str, Any]]:
    """Per partition key: plain figures (missing, segments, completeness, rows_in, quarantined, score,
    rejection) computed from that partition's rows only."""
    tf = feed.timeframe
    closed = now.floor(timeframes.pandas_freq(tf))
    key_of = {d: k for k, d in window.symbols.items()}
    rejected = {partition_key_of(r.day, key_of[r.symbol]): r for r in rejections.itertuples()}
    data_g = partition_groups(data, window)
    raw_g = partition_groups(raw, window)
    quar_g = partition_groups(quarantine, window)
    out: dict[str, dict[str, Any]] = {}
    for key, rows in data_g.items():
        day = key.split("|", 1)[0]
        start = pd.Timestamp(day, tz="UTC")
        end = min(start + pd.Timedelta(days=1), closed)
        missing = segments = 0
        completeness = 1.0
        if end > start:
            final = rows.loc[rows["is_final"].astype(bool), "ts"]
            gaps = find_gaps(final, feed.asset_class, tf, start, end)
            missing, segments, completeness = gaps.missing, len(gaps.segments), gaps.completeness
        rej = rejected.get(key)
        rows_in = int(rej.rows_in) if rej is not None else len(raw_g[key])
        quarantined = int(rej.quarantined) if rej is not None else len(quar_g[key])
        score = data_quality_score(
            completeness=min(float(completeness), 1.0), rows_in=max(rows_in, quarantined), quarantined=quarantined
        )
        out[key] = {
            "day": day,
            "symbol": key.split("|", 1)[1],
            "missing": int(missing),
            "segments": int(segments),
            "completeness": float(completeness),
            "rows_in": rows_in,
            "quarantined": quarantined,
            "score": float(score),
            "rejected": rej,
        }
    return out


def partition_metadata(fig: dict[str, Any]) -> dict[str, Any]:
    """The figures of one partition as Dagster metadata (the frame's rows/range come from frame_metadata)."""
    md: dict[str, Any] = {
        "quality_score": dg.MetadataValue.float(sig(fig["score"])),
        "completeness": dg.MetadataValue.float(sig(fig["completeness"])),
        "missing_candles": dg.MetadataValue.int(fig["missing"]),
        "gap_segments": dg.MetadataValue.int(fig["segments"]),
        "rows_in": dg.MetadataValue.int(fig["rows_in"]),
        "quarantined_rows": dg.MetadataValue.int(fig["quarantined"]),
        MISSING_BY_DAY: dg.MetadataValue.json({fig["day"]: {fig["symbol"]: fig["missing"]}}),
    }
    rej = fig["rejected"]
    if rej is not None:
        md["rejected"] = dg.MetadataValue.text(f"{rej.reason}: {rej.detail} (the stored version stays)")
    return md


def missing_table(figures: dict[str, dict[str, Any]]) -> dg.MetadataValue:
    """Day x symbol x missing candles for the partitions with gaps: where the completeness check failed."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("day", "string"), dg.TableColumn("symbol", "string"),
            dg.TableColumn("missing", "int"), dg.TableColumn("gap_segments", "int"),
            dg.TableColumn("completeness", "float"),
        ]
    )  # fmt: skip
    records = [
        dg.TableRecord({"day": f["day"], "symbol": f["symbol"], "missing": f["missing"],
                        "gap_segments": f["segments"], "completeness": sig(f["completeness"])})
        for f in figures.values() if f["missing"]
    ]  # fmt: skip
    return dg.MetadataValue.table(records, schema=schema)
