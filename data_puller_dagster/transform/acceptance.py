"""Which (symbol, UTC day) partitions of a normalized batch may be stored, judged one partition at a time.

Why per partition: a partition is the unit a write replaces, and a run may hold a 31-day backfill chunk.
A day the provider answered wrongly must not replace the stored version of that day, and it must not
hold back the good days of the same run either. Two things reject a day:

- `wrong_interval`: the answer is not the timeframe asked for. Evidence, strongest first: the row's own
  interval (Binance `close_time - open_time + 1`, Twelve Data `meta.interval`, see normalize's
  `interval_mismatch` rule), then grid spacing (at least `MIN_SPACING_ROWS` candles of the day all sit
  on a coarser timeframe's grid and are at least that far apart). 5m bars answered to a 1m request lie
  on the 1m grid and pass every row rule; without this check they would replace a 1,440-candle day
  with 288 "1m" candles.
- `quarantine_limit`: more than `validation.max_quarantined_fraction` of the day's rows were quarantined.
  Rows without a parseable timestamp belong to no day: they count against every day of their symbol.

Everything here is vectorized over rows (bincounts over symbol x day codes); Python loops run only over
the handful of candidate timeframes and over rejected days when their messages are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import numpy as np
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.transform.normalize import NormalizeResult

WRONG_INTERVAL = "wrong_interval"
QUARANTINE_LIMIT = "quarantine_limit"
# Fewest candles of a day from which grid spacing alone counts as evidence of another interval: sparse
# real data (an illiquid pair's minutes) lands on a k-times coarser grid with probability (1/k)^n.
MIN_SPACING_ROWS = 12
REJECTION_COLUMNS = ["symbol", "day", "reason", "detail", "rows_in", "quarantined"]
_DAY_NS = 86_400 * 10**9
_KEPT_WRONG_INTERVAL = (
    "the day is not stored and its previous version stays. Check the provider URL/proxy and the feed's "
    "timeframe, then re-materialize the day"
)


def empty_rejections() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in REJECTION_COLUMNS})


def judge_days(
    raw: pd.DataFrame,
    result: NormalizeResult,
    *,
    timeframe: str,
    symbols: Sequence[str],
    days: Sequence[date],
    max_quarantined_fraction: float,
) -> pd.DataFrame:
    """The rejected (symbol, day) partitions of one normalized batch, with the reason and a message.

    `raw` is the frame given to normalize (same row order: `result.row_rule` is positional), `symbols`
    the display symbols and `days` the consecutive UTC days the batch covers.
    """
    if not days or not symbols:
        return empty_rejections()
    tf_s = timeframes.seconds(timeframe)
    n_days, n_sym = len(days), len(symbols)
    start_ns = pd.Timestamp(days[0], tz="UTC").value
    cells = n_sym * n_days

    sym_code = _codes(raw["symbol"] if "symbol" in raw.columns else pd.Series(pd.NA, index=raw.index), symbols)
    ts_ns = _ts_ns(raw)
    day_idx = np.where(ts_ns == np.iinfo("int64").min, -1, (ts_ns - start_ns) // _DAY_NS)
    in_cell = (sym_code >= 0) & (day_idx >= 0) & (day_idx < n_days)
    cell = np.where(in_cell, sym_code * n_days + day_idx, 0)
    no_day = (sym_code >= 0) & (day_idx == -1)  # unparseable ts: counts against every day of the symbol

    rule = result.row_rule if len(result.row_rule) == len(raw) else np.full(len(raw), "", dtype=object)
    failed = rule != ""
    interval_s = (
        result.row_interval_s if len(result.row_interval_s) == len(raw) else np.full(len(raw), np.nan)
    )
    wrong = ~np.isnan(interval_s) & (interval_s != tf_s)

    rows = np.bincount(cell[in_cell], minlength=cells).astype("int64")
    quar = np.bincount(cell[in_cell & failed], minlength=cells).astype("int64")
    wrong_n = np.bincount(cell[in_cell & wrong], minlength=cells)
    nat_rows = np.bincount(sym_code[no_day], minlength=n_sym)
    rows += np.repeat(nat_rows, n_days)
    quar += np.repeat(nat_rows, n_days)

    out: list[dict] = []
    rejected = np.zeros(cells, dtype=bool)
    for c in np.flatnonzero(wrong_n):
        sel = in_cell & wrong & (cell == c)
        seen = timeframes.describe_seconds(int(pd.Series(interval_s[sel]).mode().iloc[0]))
        sym, day = symbols[c // n_days], days[c % n_days]
        out.append(_row(sym, day, WRONG_INTERVAL, (
            f"{sym} {day}: {int(wrong_n[c])} of {int(rows[c])} row(s) are {seen} candles by the provider's "
            f"own evidence (close_time - open_time / meta.interval), the request asked for {timeframe}; "
            + _KEPT_WRONG_INTERVAL), rows[c], quar[c]))  # fmt: skip
        rejected[c] = True

    for c, seen_s, n in _coarser_grid(cell[in_cell], ts_ns[in_cell], cells, tf_s):
        if rejected[c]:
            continue
        sym, day = symbols[c // n_days], days[c % n_days]
        seen = timeframes.describe_seconds(seen_s)
        out.append(_row(sym, day, WRONG_INTERVAL, (
            f"{sym} {day}: all {n} candles lie on the {seen} grid, {seen} or more apart: the provider answered "
            f"{seen} candles to a {timeframe} request; " + _KEPT_WRONG_INTERVAL), rows[c], quar[c]))  # fmt: skip
        rejected[c] = True

    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(rows > 0, quar / np.maximum(rows, 1), 0.0)
    for c in np.flatnonzero((frac > max_quarantined_fraction) & ~rejected):
        sym, day = symbols[c // n_days], days[c % n_days]
        sel = (in_cell & failed & (cell == c)) | (no_day & (sym_code == c // n_days))
        by_rule = pd.Series(rule[sel]).value_counts().head(3)
        rules = ", ".join(f"{k} {v}" for k, v in by_rule.items())
        out.append(_row(sym, day, QUARANTINE_LIMIT, (
            f"{sym} {day}: {int(quar[c])} of {int(rows[c])} row(s) quarantined ({frac[c]:.1%}; {rules}), above "
            f"validation.max_quarantined_fraction {max_quarantined_fraction:.1%}; the day is not stored and its "
            "previous version stays. See the quarantine table for the rows, then re-materialize the day"),
            rows[c], quar[c]))  # fmt: skip
        rejected[c] = True

    if not out:
        return empty_rejections()
    return pd.DataFrame(out, columns=REJECTION_COLUMNS).sort_values(["symbol", "day"]).reset_index(drop=True)


def drop_rejected(data: pd.DataFrame, rejections: pd.DataFrame) -> pd.DataFrame:
    """`data` without the candles of rejected (symbol, day) partitions."""
    if rejections.empty or data.empty:
        return data
    day = data["ts"].dt.tz_convert("UTC").dt.date
    bad = pd.MultiIndex.from_frame(rejections[["symbol", "day"]])
    keep = ~pd.MultiIndex.from_arrays([data["symbol"].astype(object), day]).isin(bad)
    return data if keep.all() else data[keep].reset_index(drop=True)


def _row(sym: str, day: date, reason: str, detail: str, rows: int, quar: int) -> dict:
    return {"symbol": sym, "day": day, "reason": reason, "detail": detail, "rows_in": int(rows),
            "quarantined": int(quar)}  # fmt: skip


def _codes(col: pd.Series, symbols: Sequence[str]) -> np.ndarray:
    """Position of each row's symbol in `symbols`, -1 for anything else (one hash lookup per row)."""
    return pd.Index(list(symbols)).get_indexer(col.astype(object)).astype("int64")


def _ts_ns(raw: pd.DataFrame) -> np.ndarray:
    """The adapters' provenance `ts` (UTC) as int64 ns; int64 min where missing."""
    if "ts" not in raw.columns:
        return np.full(len(raw), np.iinfo("int64").min, dtype="int64")
    ts = pd.to_datetime(raw["ts"], utc=True, errors="coerce")
    return ts.to_numpy("datetime64[ns]").view("int64")


def _coarser_grid(cell: np.ndarray, ts: np.ndarray, cells: int, tf_s: int) -> list[tuple[int, int, int]]:
    """(cell, coarser interval s, candles) of days whose answered candles all sit on a coarser grid and
    are spaced by at least it.

    Judged on every row the provider sent for the day (quarantined ones included: the rows that survive
    quarantine can be sparse for reasons that have nothing to do with the interval). The coarsest
    matching timeframe is reported (5m bars also sit on the 1m grid, but not on the 15m one).
    """
    if not len(ts):
        return []
    pairs = np.unique(np.stack([cell, ts]), axis=1)  # sorted by cell, then ts; duplicates collapsed
    cell, ts = pairs[0], pairs[1]
    count = np.bincount(cell, minlength=cells)
    same = np.zeros(len(ts), dtype=bool)
    same[1:] = cell[1:] == cell[:-1]
    gap = np.where(same, np.diff(ts, prepend=ts[0]), np.iinfo("int64").max)
    min_gap = np.full(cells, np.iinfo("int64").max, dtype="int64")
    np.minimum.at(min_gap, cell, gap)
    found: dict[int, int] = {}
    for t in sorted((timeframes.seconds(x) for x in timeframes.TIMEFRAMES), reverse=True):
        if t <= tf_s or t % tf_s:
            continue
        off = np.bincount(cell[ts % (t * 10**9) != 0], minlength=cells)
        hit = (count >= MIN_SPACING_ROWS) & (off == 0) & (min_gap >= t * 10**9)
        for c in np.flatnonzero(hit):
            found.setdefault(int(c), t)
    return [(c, t, int(count[c])) for c, t in sorted(found.items())]
