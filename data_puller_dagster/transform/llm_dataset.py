"""LLM training examples from enriched candles, and the streamed JSONL files with their manifest.

Decisions (each one chosen so that a dataset built day by day equals the one built from the whole
history at once, byte for byte):

- **Eligibility.** A candle yields an example when its ts is in [start, end), it has `context_window`
  predecessors (the previous rows *present* in the data: a closed market or a missing candle does not
  disqualify; the number of missing grid slots is recorded as `metadata.context_gap_candles`) and a
  known successor: the next row, provided it falls no later than the end of the `lookahead_days`-th UTC
  day after the candle's own day (the asset reads the next day partition, so a Friday-evening forex
  candle whose successor is on Sunday has no example in either mode). With `lookback_days`, the whole
  context must also lie within that many UTC days before the candle's day (pass the asset's read window;
  then a long outage cannot make the two modes disagree).
- **Filters, in this order, each counted:** no context, no successor, stride, low quality, embargo.
  Stride keeps candles whose index on the epoch-anchored timeframe grid is a multiple of `stride`, so it
  does not depend on where a batch starts. Quality is that of the candle's UTC day (`quality_by_day`);
  a day missing from the mapping is not excluded and gets `data_quality: null`.
- **Splits by time** (`split.validation_start` / `split.test_start`, UTC midnight). Embargo: an example
  is dropped when its first context candle or its successor is in another split than the candle itself,
  so no context (and no target) crosses a split boundary; that drops `context_window` candles after each
  boundary and the last candle before it.
- **Numbers.** Prices and price-like indicators (MA, bands, MACD, ATR, VWAP) are rounded to
  `feed.decimals`, volumes and OBV too, oscillators (RSI, stochastic) to 4 decimals, ratios (%b, width) to 6, returns to 8;
  -0.0 is written 0.0, NaN is null. Every number goes through one path (numpy rounding then orjson's
  shortest round-trip repr), so the same value always prints the same way.
- **Speed.** Each candle row is serialized once for the whole batch (one orjson call, then a vectorized
  byte scatter adds the timestamp); an example's context is one slice of that buffer. The only Python
  loop is one iteration per output line.

Seed line (`fields` names the columns of every `context` row and of `current`):
    {"symbol":"BTCUSDT","timeframe":"1h","fields":["ts","open",...],"context":[["2021-01-01T00:00:00Z",
    28923.63,...],...],"current":[...],"target":{"next_close":29331.69,"next_return":0.01410803,
    "direction":"up"},"metadata":{"asset_class":"crypto","source":"binance","data_quality":1.0,...}}
Chat line: {"messages":[{"role":"system",...},{"role":"user","content":"<CSV of the context>"},
    {"role":"assistant","content":"{\\"next_close\\":...,\\"next_return\\":...,\\"direction\\":\\"up\\"}"}]}
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from data_puller_dagster import timeframes
from data_puller_dagster.config import DatasetConfig, DatasetSplitConfig, FeedConfig, IndicatorsConfig
from data_puller_dagster.io.destinations.staging import staging_token, sweep_local
from data_puller_dagster.transform.indicators import READY_COLUMN, indicator_columns, indicator_kinds

SCHEMA_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# Asset classes whose provider delivers volume; others get no volume fields (forex, commodity, index on
# Twelve Data). Config-based, not data-based, so every batch of a feed has the same fields.
VOLUME_ASSET_CLASSES = frozenset({"crypto", "equity"})
OSCILLATOR_DECIMALS = 4
RATIO_DECIMALS = 6
RETURN_DECIMALS = 8
QUALITY_DECIMALS = 4
EXAMPLE_COLUMNS = ("ts", "symbol", "split", "line")

_NS_PER_DAY = 86_400 * 10**9
_NP = orjson.OPT_SERIALIZE_NUMPY
_Spans = tuple[bytes, np.ndarray, np.ndarray]  # serialized matrix, row starts, row ends


class DatasetInputError(ValueError):
    """The enriched frame or the options cannot produce examples; the message names the fix."""


@dataclass(frozen=True)
class ExampleBatch:
    """Examples of one symbol over [start, end) and why the other candles of that range have none."""

    frame: pd.DataFrame  # ts (UTC), symbol, split, line (one serialized JSON object, no newline)
    candidates: int  # candles with ts in [start, end)
    excluded_no_context: int
    excluded_no_successor: int
    excluded_stride: int
    excluded_low_quality: int
    excluded_embargo: int

    @property
    def emitted(self) -> int:
        return len(self.frame)


def has_volume(feed: FeedConfig) -> bool:
    """Whether examples of this feed carry volume and volume-based indicators."""
    return feed.asset_class in VOLUME_ASSET_CLASSES


def example_fields(feed: FeedConfig, dataset: DatasetConfig, indicators: IndicatorsConfig) -> list[str]:
    """Numeric fields of every context row and of `current`, in order (the row also starts with ts)."""
    available = indicator_columns(indicators, has_volume=True)
    if dataset.include_features is None:
        features = indicator_columns(indicators, has_volume=has_volume(feed))
    else:
        unknown = [f for f in dataset.include_features if f not in available]
        if unknown:
            raise DatasetInputError(
                f"dataset.include_features names {unknown}, which the indicators config does not produce; "
                f"use some of {available} (or enable the indicator in `indicators`)"
            )
        features = list(dict.fromkeys(dataset.include_features))
    base = ["open", "high", "low", "close", *(["volume"] if has_volume(feed) else [])]
    return base + features


def _decimals(fields: list[str], feed: FeedConfig, indicators: IndicatorsConfig) -> list[int]:
    kinds = indicator_kinds(indicators)
    price = feed.decimals
    by_kind = {
        "price": price,
        "oscillator": OSCILLATOR_DECIMALS,
        "ratio": RATIO_DECIMALS,
        "volume": price,
    }
    return [by_kind[kinds[f]] if f in kinds else price for f in fields]


def split_codes(ts_ns: np.ndarray, split: DatasetSplitConfig) -> np.ndarray:
    """0 train, 1 validation, 2 test for each UTC ns timestamp (boundaries at UTC midnight)."""
    big = np.iinfo(np.int64).max
    val = pd.Timestamp(split.validation_start, tz="UTC").value if split.validation_start else big
    test = pd.Timestamp(split.test_start, tz="UTC").value if split.test_start else big
    return np.where(ts_ns >= test, 2, np.where(ts_ns >= val, 1, 0)).astype(np.int8)


def _utc_ns(t: pd.Timestamp | datetime, what: str) -> int:
    ts = pd.Timestamp(t)
    if ts.tzinfo is None:
        raise DatasetInputError(f"{what}={t!r} has no timezone; pass a UTC timestamp (e.g. tz='UTC')")
    return int(ts.tz_convert("UTC").as_unit("ns").value)


def _iso_u8(ts_ns: np.ndarray) -> np.ndarray:
    """N x 20 bytes of `YYYY-MM-DDTHH:MM:SSZ` (fixed width, so it can be scattered as a block)."""
    text = np.datetime_as_string(ts_ns.view("datetime64[ns]").astype("datetime64[s]"), unit="s").astype("S19")
    return np.frombuffer(np.char.add(text, b"Z").tobytes(), dtype=np.uint8).reshape(-1, 20)


def _number_rows(values: np.ndarray, csv: bool = False) -> _Spans:
    """Serialize an N x F float matrix once; return the buffer and each row's inner [start, end) span.

    Row k's numbers, comma-separated, are buf[starts[k]:ends[k]]. In CSV mode NaN is empty, not null.
    """
    raw = orjson.dumps(np.ascontiguousarray(values, dtype=np.float64), option=_NP)
    if csv:
        raw = raw.replace(b"null", b"")
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts = np.flatnonzero(buf == ord("["))[1:] + 1
    ends = np.flatnonzero(buf == ord("]"))[:-1]
    return raw, starts, ends


def _rows_buffer(
    values: np.ndarray, ts_ns: np.ndarray, head: bytes, mid: bytes, tail: bytes, csv: bool = False
) -> tuple[bytes, np.ndarray]:
    """All rows as `head + ts + mid + numbers + tail`, back to back; offsets[k] is where row k starts.

    Vectorized byte scatter (no per-row Python): constant pieces at fixed offsets from each row start,
    the 20-byte timestamps as a 2-D block, the variable-length numbers by a repeat-based index map.
    """
    n = len(ts_ns)
    if n == 0:
        return b"", np.zeros(1, dtype=np.int64)
    raw, starts, ends = _number_rows(values, csv)
    buf = np.frombuffer(raw, dtype=np.uint8)
    lens = ends - starts
    ts_u8 = _iso_u8(ts_ns)
    width = ts_u8.shape[1]
    sizes = len(head) + width + len(mid) + lens + len(tail)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    row0 = offsets[:-1]
    for j, byte in enumerate(head):
        out[row0 + j] = byte
    ts_at = row0 + len(head)
    out[ts_at[:, None] + np.arange(width)] = ts_u8
    for j, byte in enumerate(mid):
        out[ts_at + width + j] = byte
    num_at = ts_at + width + len(mid)
    row_of = np.repeat(np.arange(n), lens)
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    out[num_at[row_of] + within] = buf[starts[row_of] + within]
    for j, byte in enumerate(tail):
        out[num_at + lens + j] = byte
    return out.tobytes(), offsets


def empty_examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.Series(dtype="datetime64[ns, UTC]"),
            "symbol": pd.Series(dtype="string"),
            "split": pd.Series(dtype="string"),
            "line": pd.Series(dtype="string"),
        }
    )


def _prepare(enriched: pd.DataFrame, feed: FeedConfig, fields: list[str], target: str) -> pd.DataFrame:
    """Check the input is one symbol's enriched candles of the dataset timeframe; return them ts-sorted."""
    need = ["ts", "symbol", target, READY_COLUMN, *fields]
    missing = [c for c in dict.fromkeys(need) if c not in enriched.columns]
    if missing:
        raise DatasetInputError(
            f"build_examples needs enriched candles; columns {missing} are missing (has "
            f"{list(enriched.columns)}); pass the output of compute_indicators with the same indicators config"
        )
    symbols = enriched["symbol"].unique()
    if len(symbols) > 1:
        raise DatasetInputError(
            f"build_examples takes one symbol at a time, got {sorted(map(str, symbols))}; group by symbol first"
        )
    if "timeframe" in enriched.columns and len(enriched):
        tfs = sorted(map(str, enriched["timeframe"].unique()))
        if tfs != [feed.llm_timeframe]:
            raise DatasetInputError(
                f"feed {feed.name!r} builds examples from {feed.llm_timeframe} candles but got timeframe(s) "
                f"{tfs}; pass the enriched table of {feed.llm_timeframe}"
            )
    df = enriched.sort_values("ts", kind="stable").reset_index(drop=True)
    ts = pd.DatetimeIndex(df["ts"]).as_unit("ns").asi8
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        dup = df["ts"].iloc[int(np.flatnonzero(np.diff(ts) == 0)[0])]
        raise DatasetInputError(
            f"{symbols[0]!r} has duplicate candles at {dup}; deduplicate the enriched rows before building"
        )
    prices = df[target].to_numpy(dtype="float64")
    if np.isnan(prices).any():
        bad = df["ts"].iloc[int(np.flatnonzero(np.isnan(prices))[0])]
        raise DatasetInputError(f"{symbols[0]!r} has no {target} at {bad}; quarantine rows without prices")
    return df


def build_examples(
    enriched: pd.DataFrame,
    *,
    feed: FeedConfig,
    dataset: DatasetConfig,
    indicators: IndicatorsConfig,
    start: pd.Timestamp,
    end: pd.Timestamp,
    quality_by_day: Mapping[date, float] | None = None,
    lookback_days: int | None = None,
    lookahead_days: int = 1,
) -> ExampleBatch:
    """One JSON line per eligible candle of one symbol with ts in [start, end). See the module docstring.

    `enriched` must cover [start - context_window candles, end + 1 candle] (earlier and next partitions).
    """
    fields = example_fields(feed, dataset, indicators)
    target = dataset.target_column
    df = _prepare(enriched, feed, fields, target)
    lo, hi = _utc_ns(start, "start"), _utc_ns(end, "end")
    ts = pd.DatetimeIndex(df["ts"]).as_unit("ns").asi8
    n, w = len(df), dataset.context_window
    cand = np.flatnonzero((ts >= lo) & (ts < hi))
    if len(cand) == 0:
        return ExampleBatch(empty_examples(), 0, 0, 0, 0, 0, 0)
    tf_ns = timeframes.seconds(feed.llm_timeframe) * 10**9
    day = ts[cand] - ts[cand] % _NS_PER_DAY
    first = np.maximum(cand - w, 0)
    nxt = np.minimum(cand + 1, n - 1)

    ok_ctx = cand >= w
    if lookback_days is not None:
        ok_ctx &= ts[first] >= day - lookback_days * _NS_PER_DAY
    ok_next = (cand + 1 < n) & (ts[nxt] < day + (lookahead_days + 1) * _NS_PER_DAY)
    ok_stride = (ts[cand] // tf_ns) % dataset.stride == 0
    quality = np.full(len(cand), np.nan)
    if quality_by_day is not None:
        days, inverse = np.unique(day, return_inverse=True)
        per_day = [quality_by_day.get(pd.Timestamp(d, tz="UTC").date(), np.nan) for d in days]  # per day
        quality = np.asarray(per_day, dtype="float64")[inverse]
    low = quality < dataset.min_quality  # NaN (unknown) compares False: not excluded
    codes = split_codes(ts, dataset.split)
    embargo = (codes[first] != codes[cand]) | (codes[nxt] != codes[cand])

    stage = ok_ctx
    no_ctx = int((~ok_ctx).sum())
    no_next = int((stage & ~ok_next).sum())
    stage = stage & ok_next
    no_stride = int((stage & ~ok_stride).sum())
    stage = stage & ok_stride
    n_low = int((stage & low).sum())
    stage = stage & ~low
    n_emb = int((stage & embargo).sum())
    keep = stage & ~embargo
    idx = cand[keep]
    counts = (len(cand), no_ctx, no_next, no_stride, n_low, n_emb)
    if len(idx) == 0:
        return ExampleBatch(empty_examples(), *counts)

    # --- values, rounded once per column (rows from the first context row to the last successor)
    span = slice(int(idx[0] - w), int(idx[-1] + 2))
    part = df.iloc[span]
    p_ts = ts[span]
    base = span.start
    values = np.empty((len(part), len(fields)))
    for k, (f, d) in enumerate(zip(fields, _decimals(fields, feed, indicators), strict=True)):
        values[:, k] = np.round(part[f].to_numpy(dtype="float64"), d) + 0.0
    tv = np.round(part[target].to_numpy(dtype="float64"), feed.decimals) + 0.0
    i = idx - base  # positions in `part`
    cur_t, next_t = tv[i], tv[i + 1]
    ret = np.round(next_t / cur_t - 1.0, RETURN_DECIMALS) + 0.0
    direction = np.where(next_t > cur_t, "up", np.where(next_t < cur_t, "down", "flat"))
    next_spans, ret_spans = _number_rows(next_t[:, None]), _number_rows(ret[:, None])

    split_names = np.asarray(SPLITS, dtype=object)[codes[idx]]
    symbol = str(df["symbol"].iloc[0])
    common = dict(symbol=symbol, target=target, fields=fields, w=w)
    if dataset.format == "seed":
        ready = part[READY_COLUMN].to_numpy(dtype=bool)
        csum = np.concatenate([[0], np.cumsum(ready)])
        meta = {
            "ctx_gap": ((p_ts[i] - p_ts[i - w]) // tf_ns - w).tolist(),
            "next_gap": ((p_ts[i + 1] - p_ts[i]) // tf_ns - 1).tolist(),
            "ready": ((csum[i + 1] - csum[i - w]) == w + 1).tolist(),
            "quality": np.round(quality[keep], QUALITY_DECIMALS).tolist(),
        }
        lines = _seed_lines(
            feed, values, p_ts, i, split_names, direction, meta, common, next_spans, ret_spans
        )
    else:
        lines = _chat_lines(feed, dataset, values, p_ts, i, direction, common, next_spans, ret_spans)
    frame = pd.DataFrame(
        {
            "ts": pd.Series(pd.DatetimeIndex(ts[idx]).tz_localize("UTC"), dtype="datetime64[ns, UTC]"),
            "symbol": pd.Series([symbol] * len(idx), dtype="string"),
            "split": pd.Series(split_names, dtype="string"),
            "line": pd.Series(lines, dtype="string"),
        }
    )
    return ExampleBatch(frame, *counts)


def _seed_lines(
    feed: FeedConfig,
    values: np.ndarray,
    p_ts: np.ndarray,
    i: np.ndarray,
    split_names: np.ndarray,
    direction: np.ndarray,
    meta: dict[str, list[Any]],
    common: dict[str, Any],
    nxt: _Spans,
    ret: _Spans,
) -> list[str]:
    """Seed-format lines: context rows and current are slices of one serialized rows buffer."""
    rows, off = _rows_buffer(values, p_ts, b'["', b'",', b"],")
    w, target = common["w"], common["target"]
    head = (
        orjson.dumps(
            {"symbol": common["symbol"], "timeframe": feed.llm_timeframe, "fields": ["ts", *common["fields"]]}
        )[:-1]
        + b',"context":['
    )
    key_next = f',"target":{{"next_{target}":'.encode()
    n_buf, n_s, n_e = nxt
    r_buf, r_s, r_e = ret
    iso = np.datetime_as_string(p_ts[i].view("datetime64[ns]").astype("datetime64[s]"), unit="s")
    out = []
    for k, pos in enumerate(i.tolist()):  # one iteration per output line
        q = meta["quality"][k]
        md = orjson.dumps(
            {
                "asset_class": feed.asset_class,
                "source": feed.source,
                "data_quality": None if q != q else q,
                "ts": f"{iso[k]}Z",
                "split": split_names[k],
                "context_gap_candles": meta["ctx_gap"][k],
                "target_gap_candles": meta["next_gap"][k],
                "indicators_ready": meta["ready"][k],
                "schema_version": SCHEMA_VERSION,
            }
        )
        line = b"".join(
            (
                head,
                rows[off[pos - w] : off[pos] - 1],
                b'],"current":',
                rows[off[pos] : off[pos + 1] - 1],
                key_next,
                n_buf[n_s[k] : n_e[k]],
                b',"next_return":',
                r_buf[r_s[k] : r_e[k]],
                b',"direction":"',
                direction[k].encode(),
                b'"},"metadata":',
                md,
                b"}",
            )
        )
        out.append(line.decode())
    return out


def _chat_lines(
    feed: FeedConfig,
    dataset: DatasetConfig,
    values: np.ndarray,
    p_ts: np.ndarray,
    i: np.ndarray,
    direction: np.ndarray,
    common: dict[str, Any],
    nxt: _Spans,
    ret: _Spans,
) -> list[str]:
    """Chat-format lines: the user message holds the context as CSV (one line per candle)."""
    rows, off = _rows_buffer(values, p_ts, b"", b",", b"\\n", csv=True)  # '\n' escaped inside a JSON string
    w, target, symbol = common["w"], common["target"], common["symbol"]
    columns = ",".join(["ts", *common["fields"]])
    intro = (
        f"Instrument {symbol} ({feed.asset_class}, {feed.source}), {feed.llm_timeframe} candles. "
        f"The previous {w} candles, oldest first, as CSV with columns {columns} (empty = not available):\n"
    )
    ask = (
        f"Predict the next candle's {target}. Answer with JSON: next_{target}, next_return "
        "(next / current - 1) and direction (up, down or flat)."
    )

    def inner(text: str) -> bytes:  # JSON string body, escaped by orjson
        return orjson.dumps(text)[1:-1]

    head = (
        b'{"messages":[{"role":"system","content":'
        + orjson.dumps(dataset.system_prompt)
        + b'},{"role":"user","content":"'
        + inner(intro)
    )
    mid = inner("Current candle:\n")
    tail = inner(ask) + b'"},{"role":"assistant","content":"{\\"next_' + target.encode() + b'\\":'
    n_buf, n_s, n_e = nxt
    r_buf, r_s, r_e = ret
    out = []
    for k, pos in enumerate(i.tolist()):  # one iteration per output line
        line = b"".join(
            (
                head,
                rows[off[pos - w] : off[pos]],
                mid,
                rows[off[pos] : off[pos + 1]],
                tail,
                n_buf[n_s[k] : n_e[k]],
                b',\\"next_return\\":',
                r_buf[r_s[k] : r_e[k]],
                b',\\"direction\\":\\"',
                direction[k].encode(),
                b'\\"}"}]}',
            )
        )
        out.append(line.decode())
    return out


# --------------------------------------------------------------------------------------------- files
def _check_batch(frame: pd.DataFrame, state: dict[str, Any]) -> None:
    """Examples must arrive symbol after symbol, each in strictly increasing ts (no repeats, no overlap)."""
    missing = [c for c in EXAMPLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DatasetInputError(f"dataset batch lacks columns {missing}; pass ExampleBatch.frame objects")
    bad = sorted(set(map(str, frame["split"].unique())) - set(SPLITS))
    if bad:
        raise DatasetInputError(f"unknown split(s) {bad} in a dataset batch; splits are {list(SPLITS)}")
    sym = frame["symbol"].astype(str).to_numpy()
    ts = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8
    change = np.flatnonzero(sym[1:] != sym[:-1]) + 1
    runs = np.split(np.arange(len(sym)), change)
    for run in runs:  # one iteration per symbol run in the batch
        s, first_ts = sym[run[0]], ts[run[0]]
        if s == state.get("symbol"):
            ordered = first_ts > state["last_ts"]
        else:
            ordered = s not in state["done"]
            if state.get("symbol") is not None:
                state["done"].add(state["symbol"])
        if not ordered or (len(run) > 1 and not (np.diff(ts[run]) > 0).all()):
            raise DatasetInputError(
                f"dataset batches for {s!r} are out of order or overlap (near {pd.Timestamp(first_ts, tz='UTC')}); "
                "yield each symbol's examples once, in increasing ts, one symbol after another"
            )
        state["symbol"], state["last_ts"] = s, ts[run[-1]]


def _is_dataset_file(stem: str) -> bool:
    return stem == "manifest.json" or stem in {f"{s}.jsonl" for s in SPLITS}


def write_dataset(
    batches: Iterable[pd.DataFrame],
    out_dir: Path,
    *,
    name: str,
    config_hash: str,
    dataset_format: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Stream example frames into <out_dir>/{train,validation,test}.jsonl and write manifest.json.

    Batches are written as they come (memory is one batch), hashed on the fly, into temporary files
    that replace the previous files only once everything is written; manifest.json is replaced last, so
    a reader that checks the manifest's sha256 never trusts a half-written dataset. The manifest has no
    wall-clock time: the same examples give byte-identical files *and* manifest. Returns the manifest.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A writer killed mid-write (kill -9, OOM) leaves its temp files (possibly GBs): the next write
    # removes those of dead writers, never a live writer's (same rule as the file stores).
    sweep_local(out_dir, _is_dataset_file)
    token = staging_token()
    tmp = {s: out_dir / f".{s}.jsonl.{token}.tmp" for s in SPLITS}
    stats = {s: {"rows": 0, "bytes": 0, "first_ts": None, "last_ts": None} for s in SPLITS}
    hashers = {s: hashlib.sha256() for s in SPLITS}
    symbols: set[str] = set()
    state: dict[str, Any] = {"symbol": None, "last_ts": None, "done": set()}
    handles = {s: open(tmp[s], "wb") for s in SPLITS}  # noqa: SIM115 - closed in finally
    try:
        for frame in batches:
            if len(frame) == 0:
                continue
            _check_batch(frame, state)
            symbols.update(map(str, frame["symbol"].unique()))
            split = frame["split"].astype(str).to_numpy()
            for s in SPLITS:
                sel = split == s
                if not sel.any():
                    continue
                data = ("\n".join(frame["line"].to_numpy()[sel].tolist()) + "\n").encode()
                handles[s].write(data)
                hashers[s].update(data)
                st = stats[s]
                st["rows"] += int(sel.sum())
                st["bytes"] += len(data)
                tss = pd.DatetimeIndex(frame["ts"]).as_unit("ns").asi8[sel]
                lo, hi = pd.Timestamp(int(tss.min()), tz="UTC"), pd.Timestamp(int(tss.max()), tz="UTC")
                st["first_ts"] = lo if st["first_ts"] is None else min(st["first_ts"], lo)
                st["last_ts"] = hi if st["last_ts"] is None else max(st["last_ts"], hi)
        for h in handles.values():
            h.flush()
            os.fsync(h.fileno())
    except BaseException:
        for s in SPLITS:
            handles[s].close()
            tmp[s].unlink(missing_ok=True)
        raise
    for h in handles.values():
        h.close()

    def iso(t: pd.Timestamp | None) -> str | None:
        return None if t is None else t.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")

    files = {
        s: {
            "path": f"{s}.jsonl",
            "rows": stats[s]["rows"],
            "bytes": stats[s]["bytes"],
            "sha256": hashers[s].hexdigest(),
            "first_ts": iso(stats[s]["first_ts"]),
            "last_ts": iso(stats[s]["last_ts"]),
        }
        for s in SPLITS
    }
    firsts = [v["first_ts"] for v in stats.values() if v["first_ts"] is not None]
    lasts = [v["last_ts"] for v in stats.values() if v["last_ts"] is not None]
    manifest: dict[str, Any] = {
        "name": name,
        "schema_version": SCHEMA_VERSION,
        "format": dataset_format,
        "config_hash": config_hash,
        "rows": {s: stats[s]["rows"] for s in SPLITS},
        "total_rows": sum(stats[s]["rows"] for s in SPLITS),
        "date_range": {
            "start": iso(min(firsts)) if firsts else None,
            "end": iso(max(lasts)) if lasts else None,
        },
        "symbols": sorted(symbols),
        "files": files,
        **({"extra": dict(extra)} if extra else {}),
    }
    for s in SPLITS:
        os.replace(tmp[s], out_dir / f"{s}.jsonl")
    blob = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    mtmp = out_dir / f".manifest.json.{token}.tmp"
    with open(mtmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(mtmp, out_dir / "manifest.json")
    return manifest
