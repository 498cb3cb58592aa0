"""Materialization metadata the UI can plot over time: row counts, time range, schema, preview."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pandas as pd

from data_puller_dagster.assets.catalog import COLUMN_DESCRIPTIONS

PREVIEW_ROWS = 5
SAMPLE_ROWS = 5


def frame_metadata(df: pd.DataFrame) -> dict[str, Any]:
    """Row count, first/last candle, column schema and a short preview of a layer's output."""
    md: dict[str, Any] = {"dagster/row_count": dg.MetadataValue.int(len(df))}
    if "ts" in df.columns and len(df) and df["ts"].notna().any():
        md["first_candle"] = dg.MetadataValue.text(df["ts"].min().isoformat())
        md["last_candle"] = dg.MetadataValue.text(df["ts"].max().isoformat())
    md["dagster/column_schema"] = dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(c), type=str(t), description=COLUMN_DESCRIPTIONS.get(str(c)))
            for c, t in df.dtypes.items()
        ]
    )
    md["preview"] = dg.MetadataValue.md(_markdown(df.head(PREVIEW_ROWS)))
    return md


def sample_rows(df: pd.DataFrame, n: int = SAMPLE_ROWS) -> dg.MetadataValue:
    """A few offending rows for a check's metadata (as markdown, readable in the Checks tab)."""
    return dg.MetadataValue.md(_markdown(df.head(n)))


def _markdown(df: pd.DataFrame) -> str:
    if df.empty:
        return "(no rows)"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    body = df.astype(str).to_numpy().tolist()  # at most a handful of rows
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)
