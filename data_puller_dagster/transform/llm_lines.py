"""Seed and chat lines from pre-serialized pieces: rows of the batch, per-example extras, targets.

Seed line (rows layout; `fields` names the cells of every `context` row and of `current`):
    {"symbol":"BTCUSDT","timeframe":"1h","fields":["ts","open",...],"context":[["2021-01-01T00:00:00Z",
    28923.63,...],...],"current":[...],"target":{"next_close":29331.69,"next_return":0.01410803,
    "direction":"up"},"metadata":{"asset_class":"crypto","source":"binance","data_quality":1.0,...}}
  csv layout: "fields" without ts, "context":"<one CSV line per candle>","current":"<CSV line>".
  bps encoding adds "reference_close" (the current close, absolute); the volume_profile group adds
  "volume_profile":{"low","high","poc","va_low","va_high","volume_pct":[...]} or null.
Chat line: {"messages":[{"role":"system",...},{"role":"user","content":"<CSV of the context>"},
    {"role":"assistant","content":"{\\"next_close\\":...,\\"next_return\\":...,\\"direction\\":\\"up\\"}"}]}

The only Python loop is one iteration per output line, joining slices of shared buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from data_puller_dagster.config import DatasetConfig, FeedConfig
from data_puller_dagster.transform.llm_features import FeatureSet, profile_lookback
from data_puller_dagster.transform.llm_serialize import (
    Cells,
    concat_cells,
    iso_strings,
    iso_u8,
    json_inner,
    number_rows,
)

SCHEMA_VERSION = 1
PCT_DECIMALS = 1


@dataclass(frozen=True)
class LineInputs:
    """Everything a batch's lines are made of; positions `i` index the span rows."""

    values: np.ndarray  # span rows x numeric fields, as written
    patterns: tuple[np.ndarray, np.ndarray] | None  # span rows: (bytes cells, unknown flags)
    p_ts: np.ndarray  # span rows, ns
    i: np.ndarray  # example positions in the span
    symbol: str
    target: str
    next_t: np.ndarray
    ret: np.ndarray
    direction: np.ndarray
    reference: np.ndarray  # current close, absolute, rounded
    profile: np.ndarray | None  # E x (5 + buckets): low, high, poc, va_low, va_high, pct...; NaN row = null
    split_names: np.ndarray
    meta: dict[str, list[Any]]


def _rows(inp: LineInputs, features: FeatureSet, csv: bool, with_ts: bool) -> tuple[bytes, np.ndarray, int]:
    """Every span row serialized once: JSON arrays `[..],` or CSV lines `..\\n`; returns buffer, offsets
    and how many bytes to cut off the last row of a slice."""
    n = len(inp.p_ts)
    cells: list[Cells] = []
    if with_ts:
        ts = Cells.fixed(iso_u8(inp.p_ts))
        cells.append(ts if csv else _wrap(ts, b'"', b'"', n))
    if features.numeric:
        cells.append(number_rows(inp.values, csv=csv))
    if features.patterns:
        txt, unknown = inp.patterns
        if csv:
            cells.append(Cells.strings(np.where(unknown, b"", txt)))
        else:
            quoted = np.char.add(np.char.add(b'"', txt), b'"')
            cells.append(Cells.strings(np.where(unknown, b"null", quoted)))
    parts: list[Cells] = [Cells.const(b"" if csv else b"[", n)]
    for k, c in enumerate(cells):
        if k:
            parts.append(Cells.const(b",", n))
        parts.append(c)
    end = b"\\n" if csv else b"],"
    parts.append(Cells.const(end, n))
    buf, off = concat_cells(parts, n)
    return buf, off, 2 if csv else 1  # bytes after a row's own text: `\\n`, or the `,` after `]`


def _wrap(c: Cells, pre: bytes, post: bytes, n: int) -> Cells:
    buf, off = concat_cells([Cells.const(pre, n), c, Cells.const(post, n)], n)
    return Cells(np.frombuffer(buf, dtype=np.uint8), off[:-1], np.diff(off))


def _nums(x: np.ndarray) -> Cells:
    return number_rows(x.reshape(len(x), -1))


def _slices(c: Cells) -> tuple[bytes, list[int], list[int]]:
    """A cell column as (bytes, starts, ends) for fast slicing in the per-line loop."""
    return c.src.tobytes(), c.starts.tolist(), (c.starts + c.lens).tolist()


def _per_example(parts: list[Cells | bytes], e: int, null: bytes | None = None,
                 valid: np.ndarray | None = None) -> tuple[bytes, np.ndarray]:  # fmt: skip
    """One byte string per example from constant and per-example pieces (vectorized); examples with
    valid False get `null` instead."""
    cells = [Cells.const(p, e) if isinstance(p, bytes) else p for p in parts]
    buf, off = concat_cells(cells, e)
    if null is None or valid is None:
        return buf, off
    src = np.frombuffer(buf + null, dtype=np.uint8)
    c = Cells(src, np.where(valid, off[:-1], len(buf)), np.where(valid, np.diff(off), len(null)))
    return concat_cells([c], e)


def _profile_pieces(inp: LineInputs, chat: bool, lookback: int) -> tuple[bytes, np.ndarray]:
    prof = inp.profile
    e = len(inp.i)
    valid = ~np.isnan(prof[:, 0])
    scal = [_nums(prof[:, k]) for k in range(5)]
    pct = _nums(prof[:, 5:])
    if not chat:
        keys = [b',"volume_profile":{"low":', b',"high":', b',"poc":', b',"va_low":', b',"va_high":']
        parts: list[Cells | bytes] = [p for k, s in zip(keys, scal, strict=True) for p in (k, s)]
        parts += [b',"volume_pct":[', pct, b"]}"]
        return _per_example(parts, e, null=b',"volume_profile":null', valid=valid)
    buckets = prof.shape[1] - 5
    intro = f"Volume profile of the last {lookback} candles ({buckets} price buckets): low "
    words = [json_inner(intro), b", high ", b", point of control ", b", value area ", b" to "]
    parts = [p for k, s in zip(words, scal, strict=True) for p in (k, s)]
    parts += [json_inner("; volume % per bucket, low to high: "), pct, b"\\n"]
    return _per_example(parts, e, null=json_inner("Volume profile: not available (no volume).\n"), valid=valid)


def _extras(inp: LineInputs, features: FeatureSet, dataset: DatasetConfig, chat: bool) -> tuple[bytes, np.ndarray]:
    """Per-example bytes after `current`: reference close (bps) and the volume profile."""
    e = len(inp.i)
    pieces: list[tuple[bytes, np.ndarray]] = []
    if features.volume_profile:
        pieces.append(_profile_pieces(inp, chat, profile_lookback(dataset)))
    if dataset.price_encoding == "bps":
        ref = _nums(inp.reference)
        pre = json_inner("The current close is ") if chat else b',"reference_close":'
        pieces.append(_per_example([pre, ref, json_inner(".\n") if chat else b""], e))
    if not pieces:
        return b"", np.zeros(e + 1, dtype=np.int64)
    cells = [Cells(np.frombuffer(b, dtype=np.uint8), o[:-1], np.diff(o)) for b, o in pieces]
    return concat_cells(cells, e)


def seed_lines(inp: LineInputs, feed: FeedConfig, dataset: DatasetConfig, features: FeatureSet) -> list[str]:
    csv = dataset.context_layout == "csv"
    rows, off, end = _rows(inp, features, csv=csv, with_ts=not csv)
    ex, ex_off = _extras(inp, features, dataset, chat=False)
    w = dataset.context_window
    fields = features.fields if csv else ["ts", *features.fields]
    head = orjson.dumps({"symbol": inp.symbol, "timeframe": feed.llm_timeframe, "fields": fields})[:-1]
    head += b',"context":"' if csv else b',"context":['
    mid = b'","current":"' if csv else b'],"current":'
    close = b'"' if csv else b""  # the csv `current` is a JSON string
    after = f',"target":{{"next_{inp.target}":'.encode()
    (nb, ns, ne), (rb, rs, re_) = _slices(_nums(inp.next_t)), _slices(_nums(inp.ret))
    iso = iso_strings(inp.p_ts[inp.i])
    meta, out = inp.meta, []
    for k, pos in enumerate(inp.i.tolist()):  # one iteration per output line
        q = meta["quality"][k]
        md = {
            "asset_class": feed.asset_class,
            "source": feed.source,
            "data_quality": None if q != q else q,
            "ts": f"{iso[k]}Z",
            "split": inp.split_names[k],
            "context_gap_candles": meta["ctx_gap"][k],
            "target_gap_candles": meta["next_gap"][k],
            "indicators_ready": meta["ready"][k],
            "schema_version": SCHEMA_VERSION,
            **({"price_encoding": "bps"} if dataset.price_encoding == "bps" else {}),
        }
        line = b"".join(
            (
                head,
                rows[off[pos - w] : off[pos] - end],
                mid,
                rows[off[pos] : off[pos + 1] - end],
                close,
                ex[ex_off[k] : ex_off[k + 1]],
                after,
                nb[ns[k] : ne[k]],
                b',"next_return":',
                rb[rs[k] : re_[k]],
                b',"direction":"',
                inp.direction[k].encode(),
                b'"},"metadata":',
                orjson.dumps(md),
                b"}",
            )
        )
        out.append(line.decode())
    return out


def _intro(inp: LineInputs, feed: FeedConfig, dataset: DatasetConfig, features: FeatureSet, csv: bool) -> str:
    w = dataset.context_window
    columns = ",".join(features.fields if csv else ["ts", *features.fields])
    text = (
        f"Instrument {inp.symbol} ({feed.asset_class}, {feed.source}), {feed.llm_timeframe} candles. "
        f"The previous {w} candles, oldest first, as CSV with columns {columns} (empty = not available)"
    )
    if dataset.price_encoding == "bps":
        text += (
            ". Prices are basis points: open/high/low/close against the previous candle's close, price "
            "levels (moving averages, bands, VWAP) against the candle's own close, MACD and ATR as bps of "
            "it; volumes to 3 significant digits"
        )
    if features.patterns:
        text += ". patterns lists the candle's candlestick patterns (+ bullish, - bearish)"
    return text + ":\n"


def chat_lines(inp: LineInputs, feed: FeedConfig, dataset: DatasetConfig, features: FeatureSet) -> list[str]:
    """Chat-format lines: the user message holds the context as CSV (one line per candle)."""
    csv = dataset.context_layout == "csv"
    rows, off, _ = _rows(inp, features, csv=True, with_ts=not csv)  # '\n' escaped inside a JSON string
    ex, ex_off = _extras(inp, features, dataset, chat=True)
    w, target = dataset.context_window, inp.target
    ask = (
        f"Predict the next candle's {target}. Answer with JSON: next_{target}, next_return "
        "(next / current - 1) and direction (up, down or flat)."
    )
    head = (
        b'{"messages":[{"role":"system","content":'
        + orjson.dumps(dataset.system_prompt)
        + b'},{"role":"user","content":"'
        + json_inner(_intro(inp, feed, dataset, features, csv))
    )
    mid = json_inner("Current candle:\n")
    tail = json_inner(ask) + b'"},{"role":"assistant","content":"{\\"next_' + target.encode() + b'\\":'
    (nb, ns, ne), (rb, rs, re_) = _slices(_nums(inp.next_t)), _slices(_nums(inp.ret))
    out = []
    for k, pos in enumerate(inp.i.tolist()):  # one iteration per output line
        line = b"".join(
            (
                head,
                rows[off[pos - w] : off[pos]],
                mid,
                rows[off[pos] : off[pos + 1]],
                ex[ex_off[k] : ex_off[k + 1]],
                tail,
                nb[ns[k] : ne[k]],
                b',\\"next_return\\":',
                rb[rs[k] : re_[k]],
                b',\\"direction\\":\\"',
                inp.direction[k].encode(),
                b'\\"}"}]}',
            )
        )
        out.append(line.decode())
    return out
