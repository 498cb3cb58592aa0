"""Normalize: any adapter's raw frame -> the canonical table, a quarantine table and a report.

Why it is built like this:

- **Nothing disappears silently.** Every input row ends in exactly one place: the output, the
  quarantine (with the rule it broke), or a *counted* duplicate (identical, conflicting, or a
  superseded still-open version). `NormalizeReport.accounted()` == `rows_in` always; property tests
  hold us to it. Bad rows are never "fixed" (no clipping of highs, no guessing of timestamps).
- **Rules, in order** (a row is quarantined under the first it breaks; `detail` lists all it breaks):
  `unparseable_ts`, `missing_fetched_at`, `misaligned_ts` (not on the timeframe's grid, see
  `calendars.on_grid`), `future_ts` (opens after `now`), `timeframe_mismatch` (the raw row says another
  timeframe), `invalid_symbol`, `unparseable_price` (OHLC missing, non-numeric or non-finite),
  `nonpositive_price`, `high_below_low`, `high_below_open_close`, `low_above_open_close`,
  `negative_volume` (volume, quote volume or trades < 0, or unparseable when present).
- **Duplicates** are rows with the same (symbol, timeframe, ts). The most recently fetched row wins
  (ties: the later row of the input). A dropped row equal to the winner in every value is an identical
  duplicate; one that differs is a conflict (recorded in the report and in `NormalizeResult.conflicts`),
  unless it was a still-open version of the candle that a later fetch replaced (`superseded_open`,
  the normal life of the current candle, not a data problem).
- **Still-open candles are kept, flagged `is_final=False`.** A candle is final when it was fetched at
  or after its close (open time + timeframe; for equity daily bars that is conservative, 24 h after
  the session date). Keeping them lets "latest" views show the forming candle; every consumer that
  needs final data filters on `is_final`, and the next fetch supersedes it.
- **Zero-trade candles** (Binance: volume 0, O=H=L=C) are real data: kept, counted, and told apart
  from missing candles by their presence.
- **Timestamps** become UTC whatever was sent: Binance open times in s/ms/µs/ns (decided per row by
  magnitude: the archive switched to µs in 2025), Twelve Data strings in `raw_tz` (UTC when the adapter
  asks for `timezone=UTC`; pass the exchange's zone for exchange-local strings; DST-ambiguous or
  non-existent local times are unparseable, not guessed).
- **Vectorized**: every rule is a numpy mask over the whole frame; duplicates are resolved with one
  lexsort; no Python loop touches candles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from data_puller_dagster import timeframes
from data_puller_dagster.symbols import SYMBOL_PATTERN
from data_puller_dagster.transform.calendars import family, on_grid
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES, cached_empty, empty_canonical
from data_puller_dagster.transform.dedupe import deduplicate
from data_puller_dagster.transform.raw_columns import (
    binance_interval_s,
    binance_ts,
    from_codes,
    text_codes,
    to_float,
    trades_column,
    twelvedata_interval_s,
    twelvedata_ts,
    utc_col,
)

QUARANTINE_DTYPES: dict[str, str] = {
    **CANONICAL_DTYPES,
    "raw_ts": "string",
    "rule": "string",
    "detail": "string",
}
QUARANTINE_COLUMNS: list[str] = list(QUARANTINE_DTYPES)

# Rule name -> short human description; order = precedence.
RULES: dict[str, str] = {
    "unparseable_ts": "timestamp could not be parsed",
    "missing_fetched_at": "fetched_at is missing, so finality cannot be known",
    "misaligned_ts": "timestamp is not on the timeframe grid",
    "future_ts": "candle opens after the time of normalization",
    "timeframe_mismatch": "row's timeframe differs from the timeframe being normalized",
    "interval_mismatch": "the provider's interval for this row (close_time - open_time, meta.interval) "
    "is not the timeframe asked for",
    "invalid_symbol": "symbol is missing or not a valid display symbol",
    "unparseable_price": "open/high/low/close missing, non-numeric or non-finite",
    "nonpositive_price": "a price is <= 0",
    "high_below_low": "high < low",
    "high_below_open_close": "high < max(open, close)",
    "low_above_open_close": "low > min(open, close)",
    "negative_volume": "volume, quote volume or trades negative or unparseable",
}
BINANCE_REQUIRED = ("open_time", "open", "high", "low", "close", "volume", "symbol", "fetched_at")
TWELVEDATA_REQUIRED = ("datetime", "open", "high", "low", "close", "symbol", "fetched_at")
# Every raw column normalize reads, per layout (the others, e.g. Binance's taker volumes, only stay in
# the raw layer); and the ones a consumed raw frame keeps for the caller (acceptance.judge_days and the
# per-partition figures count its rows by symbol and ts).
_READS = ("open", "high", "low", "close", "volume", "quote_volume", "trades", "fetched_at", "symbol", "source",
          "timeframe")  # fmt: skip
RAW_COLUMNS_READ = {
    "binance": frozenset({"open_time", "close_time", *_READS}),
    "twelvedata": frozenset({"datetime", "interval", *_READS}),
}
RAW_COLUMNS_KEPT = frozenset({"ts", "symbol"})


class RawFrameError(ValueError):
    """The raw frame cannot be normalized at all (unknown layout, missing columns, bad arguments)."""


@dataclass
class NormalizeReport:
    """What normalize did, in counts. `accounted()` always equals `rows_in`."""

    rows_in: int = 0
    rows_out: int = 0
    quarantined: int = 0
    quarantined_by_rule: dict[str, int] = field(default_factory=dict)
    duplicates_identical: int = 0
    duplicate_conflicts: int = 0
    conflict_keys: int = 0
    superseded_open: int = 0
    still_open: int = 0
    zero_trade_candles: int = 0
    layout: str = ""
    first_ts: str = ""
    last_ts: str = ""

    def accounted(self) -> int:
        """Rows that ended somewhere: output + quarantine + every kind of counted duplicate."""
        return (
            self.rows_out
            + self.quarantined
            + self.duplicates_identical
            + self.duplicate_conflicts
            + self.superseded_open
        )

    def as_metadata(self) -> dict[str, int | float | str]:
        """Flat scalars for Dagster metadata (quarantine counts as `quarantined/<rule>`)."""
        d = asdict(self)
        by_rule = d.pop("quarantined_by_rule")
        out: dict[str, int | float | str] = {k: v for k, v in d.items()}
        out.update({f"quarantined/{k}": int(v) for k, v in by_rule.items()})
        return out


@dataclass
class NormalizeResult:
    """`data`: canonical, sorted by (symbol, ts), one row per (symbol, timeframe, ts).
    `quarantine`: `QUARANTINE_DTYPES` columns. `conflicts`: the losing rows of conflicting duplicates
    (canonical columns), for audit. `report`: counts.

    Per input row, positionally aligned with the raw frame (so callers can judge each day on its own
    rows, see transform.acceptance): `row_rule` is the quarantine rule ("" when the row passed) and
    `row_interval_s` the interval in seconds the provider stated for the row (NaN without evidence).
    """

    data: pd.DataFrame
    quarantine: pd.DataFrame
    conflicts: pd.DataFrame
    report: NormalizeReport
    row_rule: np.ndarray = field(default_factory=lambda: np.array([], dtype=object))
    row_interval_s: np.ndarray = field(default_factory=lambda: np.array([], dtype="float64"))


def empty_quarantine() -> pd.DataFrame:
    """A zero-row quarantine frame with the exact dtypes."""
    return cached_empty(QUARANTINE_DTYPES, "quarantine")


def _layout(raw: pd.DataFrame) -> str:
    if "open_time" in raw.columns:
        layout, required = "binance", BINANCE_REQUIRED
    elif "datetime" in raw.columns:
        layout, required = "twelvedata", TWELVEDATA_REQUIRED
    else:
        raise RawFrameError(
            "raw frame has neither `open_time` (Binance layout) nor `datetime` (Twelve Data layout); "
            f"columns were {list(raw.columns)}; pass the adapter's raw frame unchanged"
        )
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise RawFrameError(f"raw {layout} frame lacks columns {missing}; the adapter must provide {list(required)}")
    return layout


# ------------------------------------------------------------------------------------------ main
def normalize(
    raw: pd.DataFrame,
    *,
    asset_class: str,
    timeframe: str,
    now: pd.Timestamp | None = None,
    raw_tz: str = "UTC",
    consume_raw: bool = False,
) -> NormalizeResult:
    """Turn one adapter's raw frame (one or many symbols, one timeframe) into canonical candles.

    `now` (default: the current time) only bounds `future_ts`; finality comes from each row's own
    `fetched_at`. See the module docstring for every rule.

    `consume_raw=True` hands `raw` over: each of its columns is dropped from it (in place) as soon
    as it has been read for the last time, except RAW_COLUMNS_KEPT, so the raw text (~150 MB for a
    year of 1m) is freed while the canonical columns are built instead of after. Pass it only for a
    frame nobody else reads (the normalize asset does for the input the IO manager gave it alone).
    The result is the same either way.
    """
    timeframes.check_timeframe(timeframe)
    family(asset_class)  # raises on an unknown asset class
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    report = NormalizeReport(rows_in=len(raw))
    if len(raw) == 0 and len(raw.columns) == 0:
        return NormalizeResult(empty_canonical(), empty_quarantine(), empty_canonical(), report)
    layout = _layout(raw)
    report.layout = layout
    if not isinstance(raw.index, pd.RangeIndex) or raw.index.start != 0 or raw.index.step != 1:
        raw = raw.reset_index(drop=True)  # positional masks below rely on a 0..n-1 index
    n = len(raw)

    def spent(*columns: str) -> None:
        """With consume_raw, drop these raw columns (read for the last time) from the frame."""
        gone = [c for c in columns if c in raw.columns and c not in RAW_COLUMNS_KEPT]
        if consume_raw and gone:
            raw.drop(columns=gone, inplace=True)
            # Arrow's pool keeps freed pages mapped: hand them back, so the canonical columns built
            # next reuse that memory instead of adding to it (about a millisecond a call).
            pa.default_memory_pool().release_unused()

    spent(*(c for c in raw.columns if c not in RAW_COLUMNS_READ[layout]))

    if layout == "binance":
        ts_ns, raw_ts = binance_ts(raw)
        interval_s = binance_interval_s(raw)
    else:
        ts_ns, raw_ts = twelvedata_ts(raw, raw_tz)
        interval_s = twelvedata_interval_s(raw)
    spent("open_time", "close_time", "datetime", "interval")  # raw_ts keeps what quarantine needs
    ts = pd.Series(ts_ns.view("datetime64[ns]"), dtype="datetime64[ns]").dt.tz_localize("UTC")
    ts_ok = ~ts.isna().to_numpy()

    prices = {}
    bad_price = np.zeros(n, dtype=bool)
    for c in ("open", "high", "low", "close"):
        prices[c], bad = to_float(raw[c])
        bad_price |= bad | ~np.isfinite(prices[c])
        spent(c)
    volume, bad_vol = (
        to_float(raw["volume"]) if "volume" in raw.columns else (np.full(n, np.nan), np.zeros(n, dtype=bool))
    )
    if "quote_volume" in raw.columns:
        quote_volume, bad_qv = to_float(raw["quote_volume"])
    else:
        quote_volume, bad_qv = np.full(n, np.nan), np.zeros(n, dtype=bool)
    if "trades" in raw.columns:
        trades = trades_column(raw["trades"])
        bad_trades = (trades.isna().to_numpy() & raw["trades"].notna().to_numpy())
    else:
        trades = pd.Series(pd.NA, index=raw.index, dtype="Int64")
        bad_trades = np.zeros(n, dtype=bool)
    spent("volume", "quote_volume", "trades")

    fetched_at = utc_col(raw, "fetched_at")
    spent("fetched_at")
    step = pd.Timedelta(seconds=timeframes.seconds(timeframe))
    is_final = (fetched_at >= ts + step).fillna(False).to_numpy(dtype=bool)
    sym_codes, sym_uniq = text_codes(raw["symbol"])
    symbol = from_codes(sym_codes, sym_uniq)
    if "source" in raw.columns:
        source = from_codes(*text_codes(raw["source"]))
    else:
        source = pd.Series(layout, index=raw.index, dtype="string")
    if "timeframe" in raw.columns:
        tf_codes, tf_uniq = text_codes(raw["timeframe"])
        tf_mismatch = np.array([u != timeframe for u in tf_uniq] + [False], dtype=bool)[tf_codes]  # <NA>: no
    else:
        tf_mismatch = np.zeros(n, dtype=bool)
    spent("source", "timeframe")

    o, h, lo, c = prices["open"], prices["high"], prices["low"], prices["close"]
    with np.errstate(invalid="ignore"):
        good_sym = np.array([bool(SYMBOL_PATTERN.match(str(u))) for u in sym_uniq] + [False])  # per symbol
        masks: dict[str, np.ndarray] = {
            "unparseable_ts": ~ts_ok,
            "missing_fetched_at": fetched_at.isna().to_numpy(),
            "misaligned_ts": ts_ok & ~on_grid(ts, asset_class, timeframe),
            "future_ts": ts_ok & (ts > now).fillna(False).to_numpy(dtype=bool),
            "timeframe_mismatch": tf_mismatch,
            "interval_mismatch": ~np.isnan(interval_s) & (interval_s != timeframes.seconds(timeframe)),
            "invalid_symbol": ~good_sym[sym_codes],
            "unparseable_price": bad_price,
            "nonpositive_price": ~bad_price & ((o <= 0) | (h <= 0) | (lo <= 0) | (c <= 0)),
            "high_below_low": h < lo,
            "high_below_open_close": h < np.maximum(o, c),
            "low_above_open_close": lo > np.minimum(o, c),
            "negative_volume": bad_vol | bad_qv | bad_trades | (volume < 0) | (quote_volume < 0)
            | (trades < 0).fillna(False).to_numpy(dtype=bool),
        }
    failed = np.zeros(n, dtype=bool)
    rule = np.full(n, "", dtype=object)
    for name, m in masks.items():  # a loop over the ~12 rules; each step is one vectorized mask
        first = m & ~failed
        rule[first] = name
        failed |= m

    frame = pd.DataFrame(
        {
            "ts": ts,
            "symbol": symbol,
            "asset_class": pd.Series(asset_class, index=raw.index, dtype="string"),
            "timeframe": pd.Series(timeframe, index=raw.index, dtype="string"),
            "source": source,
            "open": o,
            "high": h,
            "low": lo,
            "close": c,
            "volume": volume,
            "trades": trades,
            "quote_volume": quote_volume,
            "fetched_at": fetched_at,
            "is_final": is_final,
        },
        copy=False,  # every column is a fresh array: no copy, and no consolidation into 2-D blocks
    )

    quarantine = _quarantine(frame, raw_ts, rule, masks, failed)
    report.quarantined = len(quarantine)
    if len(quarantine):  # value_counts costs ~0.3 ms even on no rows (every live micro-batch has none)
        report.quarantined_by_rule = {k: int(v) for k, v in quarantine["rule"].value_counts().items()}

    if failed.any():
        data, conflicts = deduplicate(frame[~failed], report, sym_codes[~failed])
    else:
        data, conflicts = deduplicate(frame, report, sym_codes)
    report.rows_out = len(data)
    report.still_open = int((~data["is_final"]).sum())
    zero = (data["volume"] == 0) | (data["trades"] == 0).fillna(False)
    report.zero_trade_candles = int(zero.sum())
    if len(data):
        report.first_ts, report.last_ts = str(data["ts"].min()), str(data["ts"].max())
    return NormalizeResult(
        data=data, quarantine=quarantine, conflicts=conflicts, report=report, row_rule=rule,
        row_interval_s=interval_s,
    )


def _quarantine(
    frame: pd.DataFrame,
    raw_ts: pd.Series,
    rule: np.ndarray,
    masks: dict[str, np.ndarray],
    failed: np.ndarray,
) -> pd.DataFrame:
    """Failed rows with their first rule and a detail listing every rule they break."""
    if not failed.any():
        return empty_quarantine()
    q = frame[failed].copy()
    q["raw_ts"] = raw_ts[failed].astype("string").to_numpy()
    q["rule"] = rule[failed]
    detail = pd.Series("", index=q.index, dtype=object)
    for name, m in masks.items():  # loop over rules, vectorized over the (few) failed rows
        sub = m[failed]
        if sub.any():
            text = RULES[name]
            detail[sub] = np.where(detail[sub] == "", text, detail[sub] + "; " + text)
    values = (
        " [open=" + q["open"].astype(str) + " high=" + q["high"].astype(str) + " low=" + q["low"].astype(str)
        + " close=" + q["close"].astype(str) + " volume=" + q["volume"].astype(str) + "]"
    )
    q["detail"] = detail + values
    return q[QUARANTINE_COLUMNS].astype(QUARANTINE_DTYPES).reset_index(drop=True)
