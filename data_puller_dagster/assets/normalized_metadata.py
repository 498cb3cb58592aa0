"""Each (day, symbol) partition's own figures for `<feed>/normalized_ohlcv_<tf>`, as Dagster metadata.

Why per partition: a range run emits one materialization per partition and the UI (and the gap sensor)
read them one by one, so each must carry that day's rows, missing candles, gap segments, quarantined
rows, quality score and first/last candle, not the run's totals. The figures are computed for all days
at once by transform/gap_figures.py (see there why and how); this module turns them into metadata.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from data_puller_dagster.assets.partition_metadata import sig

# The figures themselves are plain pandas/numpy in transform/gap_figures.py (the library and
# `data-puller gaps` report them too); re-exported here for the asset modules and their tests.
from data_puller_dagster.transform.gap_figures import (  # noqa: F401 - re-exported
    WindowGrid,
    day_gap_counts,
    partition_figures,
    window_grid,
)

# Metadata key the gap-filling sensor reads: {"YYYY-MM-DD": {"<symbol key>": missing candles}}.
MISSING_BY_DAY = "missing_by_day"


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
