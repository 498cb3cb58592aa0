"""Materialization metadata the UI can plot over time: row counts, time range, schema, preview."""

from __future__ import annotations

from typing import Any

import dagster as dg
import numpy as np
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
    md["dagster/column_schema"] = column_schema(df)
    md["preview"] = dg.MetadataValue.md(_markdown(df.head(PREVIEW_ROWS)))
    return md


def column_schema(df: pd.DataFrame) -> dg.TableSchema:
    """The frame's columns, dtypes and catalog descriptions as Dagster's column schema."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(c), type=str(t), description=COLUMN_DESCRIPTIONS.get(str(c)))
            for c, t in df.dtypes.items()
        ]
    )


def slices_metadata(
    df: pd.DataFrame, starts: np.ndarray, counts: np.ndarray, order: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """`frame_metadata(rows.iloc[s : s + c])` for every (s, c) of `starts`/`counts`, computed together,
    where `rows` is `df.iloc[order]` (`df` itself when `order` is None).

    Why: a range run attaches this to each of its hundreds of partitions, and building a column schema,
    a min/max and a markdown preview per partition costs milliseconds each. The slices share one
    frame, so they share its dtypes (one schema), their first/last candles come from one reduction over
    the `ts` column, and their previews from one string conversion of at most PREVIEW_ROWS rows each.
    The result is value for value what frame_metadata gives for each slice.
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    schema = column_schema(df)
    bounds = _ts_bounds(df, starts, counts, order)
    previews = _previews(df, starts, counts, order)
    out: list[dict[str, Any]] = []
    for i, c in enumerate(counts.tolist()):
        md: dict[str, Any] = {"dagster/row_count": dg.MetadataValue.int(c)}
        if bounds[i] is not None:
            md["first_candle"] = dg.MetadataValue.text(bounds[i][0])
            md["last_candle"] = dg.MetadataValue.text(bounds[i][1])
        md["dagster/column_schema"] = schema
        md["preview"] = dg.MetadataValue.md(previews[i])
        out.append(md)
    return out


def _ts_bounds(
    df: pd.DataFrame, starts: np.ndarray, counts: np.ndarray, order: np.ndarray | None
) -> list[tuple[str, str] | None]:
    """(first, last) `ts` as isoformat per slice; None where frame_metadata shows none (no ts, no rows)."""
    out: list[tuple[str, str] | None] = [None] * len(starts)
    if "ts" not in df.columns:
        return out
    col = df["ts"]
    nonempty = np.flatnonzero(counts > 0)
    ends = starts + counts
    tiled = len(nonempty) and np.array_equal(starts[nonempty][1:], ends[nonempty][:-1])
    if isinstance(col, pd.Series) and tiled and (col.dtype.kind == "M"):
        # One min/max reduction over the (contiguous) slices; NaT is ignored, as Series.min does.
        lo, hi = int(starts[nonempty[0]]), int(ends[nonempty[-1]])
        values = col.array.asi8[slice(lo, hi) if order is None else order[lo:hi]]
        nat = values == np.iinfo(np.int64).min
        at = starts[nonempty] - lo
        has = np.add.reduceat(~nat, at) > 0
        mins = np.minimum.reduceat(np.where(nat, np.iinfo(np.int64).max, values), at)
        maxs = np.maximum.reduceat(values, at)
        unit = col.dt.unit
        first, last = (_box(v, unit, getattr(col.dtype, "tz", None)) for v in (mins, maxs))
        for j, i in enumerate(nonempty.tolist()):
            if has[j]:
                out[i] = (first[j].isoformat(), last[j].isoformat())
        return out
    rows = col if order is None else col.iloc[order]
    for i in nonempty.tolist():  # any other ts column: as frame_metadata computes it
        ts = rows.iloc[int(starts[i]) : int(ends[i])]
        if ts.notna().any():
            out[i] = (ts.min().isoformat(), ts.max().isoformat())
    return out


def _box(values: np.ndarray, unit: str, tz: Any) -> pd.DatetimeIndex:
    """int64 ticks of `unit` as Timestamps of the column's own unit and time zone."""
    idx = pd.DatetimeIndex(values.view(f"datetime64[{unit}]"))
    return idx.tz_localize("UTC").tz_convert(tz) if tz is not None else idx


# Dtypes whose astype(str) formats each value on its own. Naive datetimes and timedeltas (and anything
# not listed) choose one format for the whole array ("2024-01-01" when every value is a midnight), so
# their previews are converted slice by slice.
_PER_VALUE_STR = (
    pd.DatetimeTZDtype, pd.StringDtype, pd.BooleanDtype, pd.Int8Dtype, pd.Int16Dtype, pd.Int32Dtype,
    pd.Int64Dtype, pd.UInt8Dtype, pd.UInt16Dtype, pd.UInt32Dtype, pd.UInt64Dtype, pd.Float32Dtype, pd.Float64Dtype,
)  # fmt: skip


def _str_per_value(dtype: Any) -> bool:
    if isinstance(dtype, np.dtype):
        return dtype.kind in "biufcOSU"
    return isinstance(dtype, _PER_VALUE_STR)


def _previews(df: pd.DataFrame, starts: np.ndarray, counts: np.ndarray, order: np.ndarray | None) -> list[str]:
    """`_markdown(slice.head(PREVIEW_ROWS))` per slice, with one astype(str) over all the previewed rows."""
    if len(df.columns) == 0 or not all(_str_per_value(t) for t in df.dtypes):
        rows = df if order is None else df.iloc[order]
        return [
            _markdown(rows.iloc[int(s) : int(s) + int(c)].head(PREVIEW_ROWS))
            for s, c in zip(starts, counts, strict=True)
        ]
    lens = np.minimum(counts, PREVIEW_ROWS)
    offsets = np.cumsum(lens) - lens
    pos = np.repeat(starts, lens) + (np.arange(int(lens.sum())) - np.repeat(offsets, lens))
    if order is not None:
        pos = order[pos]
    body = df.iloc[pos].astype(str).to_numpy().tolist() if len(pos) else []
    cols = [str(c) for c in df.columns]
    header = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out: list[str] = []
    for o, n in zip(offsets.tolist(), lens.tolist(), strict=True):
        if not n:
            out.append("(no rows)")
            continue
        out.append("\n".join(header + ["| " + " | ".join(r) + " |" for r in body[o : o + n]]))
    return out


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
