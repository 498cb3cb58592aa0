"""Shared pieces of the stream destinations (Redis streams, RabbitMQ, Kafka).

Why one module: every stream must send the same message for the same candle, so that a consumer can
switch transports without re-parsing, and every stream must give a candle the same deterministic id,
so that a consumer (or a broker) can drop the duplicates a retried Dagster step publishes.

- **Message**: one JSON object per candle with every column of the table in the frame's order
  (the canonical schema and, for enriched tables, the indicators), built column-wise with orjson:
  timestamps as ISO 8601 UTC with microseconds (`"2024-01-05T13:00:00.000000Z"`, as the JSONL store
  writes them), floats as the shortest text that round-trips exactly, missing values as `null`.
  (The JSONL store writes the same keys and timestamps but through pandas, which keeps 15
  significant digits and escapes `/`; both decode to the same row.)
- **Message id**: `<feed>.<table>.<symbol_key>.<ts in ms since the epoch>`, e.g.
  `forex.ohlcv_4h.EURUSD.1704110400000`; unique per candle because streams take only tables with one
  row per (symbol, ts) (normalized, derived, enriched).
- **Order**: per symbol by `ts`, symbols by partition key.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

import numpy as np
import orjson
import pandas as pd
from pydantic import ConfigDict, Field

from data_puller_dagster.io.destinations.base import DestinationKind, DestinationOptions
from data_puller_dagster.io.errors import FrameContractError, StorageError
from data_puller_dagster.io.frames import check_frame, dtype_kind, redact_url
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster.symbols import partition_key

# Layers with exactly one row per (symbol, ts): the only ones a per-candle message id identifies.
STREAM_LAYERS = ("normalized", "derived", "enriched", "live")
_NS_PER_MS = 1_000_000


class StreamUnreachableError(StorageError):
    """The broker cannot be reached or refused the credentials (fix the URL/broker; not a retry case)."""


class StreamPublishError(StorageError):
    """The broker did not take every message (timeout, negative ack, delivery error); a retry may."""


class StreamOptions(DestinationOptions):
    """Options every stream takes. Errors never echo the input: a URL may hold a password."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    batch_size: int = Field(
        1000, gt=0, le=1_000_000, description="Messages per broker round trip (a route's batch_size wins)"
    )
    timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="How long to wait for the broker to take one batch"
    )
    connect_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="How long to wait for a connection before failing"
    )


# ------------------------------------------------------------------------------------- names
def split_url(url: str, shown: str, what: str, example: str) -> SplitResult:
    """`urlsplit(url)` with its port checked, or a ValueError naming only the `shown` (redacted) URL:
    `url '<shown>' is not a valid <what> (<why>); use <example>`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError as e:
        raise ValueError(f"url {shown!r} is not a valid {what} ({e}); use {example}") from None
    return parts


def shown_url(url: str) -> str:
    """A broker URL fit for messages and metadata: no query (it may hold a password) and nothing up to
    the last `@` (user-info; the last one, so that a password holding an unescaped `@` or `/` does not
    leak either: broker URLs have no `@` in their host or path)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return redact_url(url).split("?", 1)[0]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}://{rest}"


def check_template(
    template: str, allowed: tuple[str, ...], what: str, pattern: re.Pattern[str], required: tuple[str, ...] = ()
) -> str:
    """Validate a name template such as `{feed}:{table}:{symbol_key}`: placeholders only from `allowed`
    (no format specs or attribute access), the `required` ones present, and a sample rendering valid."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"{what} template {template!r} is malformed ({e}); write placeholders as {{feed}}") from None
    for field, spec, conv in parsed:
        if field not in allowed or spec or conv:
            raise ValueError(
                f"{what} template {template!r}: placeholder {{{field}}} is not allowed; "
                f"use only {', '.join('{' + a + '}' for a in allowed)}"
            )
    missing = [r for r in required if r not in {f for f, _, _ in parsed}]
    if missing:
        raise ValueError(f"{what} template {template!r} must contain {', '.join('{' + m + '}' for m in missing)}")
    render_name(template, dict.fromkeys(allowed, "x"), what, pattern)
    return template


def render_name(template: str, values: Mapping[str, str], what: str, pattern: re.Pattern[str]) -> str:
    """The template filled in, checked against the broker's naming rule."""
    name = template.format_map(values)
    if not pattern.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} (from template {template!r}) is not valid; it must match {pattern.pattern}"
        )
    return name


def name_values(table: TableRef, key: str) -> dict[str, str]:
    """The placeholders a name template may use."""
    return {"feed": table.feed, "table": table.name, "symbol_key": key, "timeframe": table.timeframe or ""}


# ---------------------------------------------------------------------------------- messages
def json_values(s: pd.Series) -> list[str]:
    """The JSON text of every value of one column, built for the whole column at once."""
    n = len(s)
    kind = dtype_kind(s.dtype, f"column {s.name!r}")
    if kind in ("tz", "naive"):
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        # Formatted once per distinct time (fetched_at is one value per fetch), NaT as null.
        codes, uniques = pd.factorize(s.to_numpy(dtype="datetime64[us]"))
        text = np.char.add(np.char.add('"', np.datetime_as_string(uniques, unit="us")), 'Z"' if kind == "tz" else '"')
        return np.append(text.astype(object), "null")[codes].tolist()
    if kind == "str":
        codes, uniques = pd.factorize(s)  # each distinct string (symbol, source, ...) encoded once
        encoded = np.array([orjson.dumps(str(u)).decode() for u in uniques] + ["null"], dtype=object)
        return encoded[codes].tolist()  # code -1 (missing) takes the trailing "null"
    if kind == "bool":
        missing = s.isna().to_numpy()
        return np.where(missing, "null", np.where(s.to_numpy(dtype=bool, na_value=False), "true", "false")).tolist()
    if kind == "float":
        values = s.to_numpy(dtype="float64", na_value=np.nan)  # NaN and inf become null
        body = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    else:  # int, nullable or not
        body = orjson.dumps(s.to_numpy(dtype=object, na_value=None).tolist())[1:-1]
    return body.decode().split(",") if n else []


def json_messages(df: pd.DataFrame) -> list[bytes]:
    """One JSON object per row (every column, in the frame's order); see the module docstring.

    Each column is encoded at once by orjson/numpy; only gluing a row's fragments into its message
    is per row, since the transports take one payload per message.
    """
    if len(df) == 0:
        return []
    names = [orjson.dumps(str(c)).decode().replace("%", "%%") for c in df.columns]
    template = "{" + ",".join(f"{name}:%s" for name in names) + "}"
    columns = [json_values(df[c]) for c in df.columns]
    return [(template % row).encode() for row in zip(*columns, strict=True)]


@dataclass(frozen=True)
class Messages:
    """A slice's candles ready to send: per row (in order) its symbol key, ts, id and payload, and the
    contiguous row range of each symbol."""

    keys: list[str]
    symbols: list[str]
    ts_ms: np.ndarray
    ids: list[str]
    payloads: list[bytes]
    runs: list[tuple[str, str, int, int]]  # (symbol key, display symbol, start, stop)

    def __len__(self) -> int:
        return len(self.payloads)


def prepare(table: TableRef, df: pd.DataFrame, part: PartitionSlice, who: str) -> Messages:
    """Check the frame, order it by (symbol key, ts) and build every message and id."""
    where = f"{who}: table {table.qualified}, slice {part.describe()}"
    if table.layer not in STREAM_LAYERS or table.primary_key != ("symbol", "ts"):
        raise FrameContractError(
            f"{where}: layer {table.layer!r} has no single row per (symbol, ts), so its rows have no "
            f"per-candle message id; route only layers {', '.join(STREAM_LAYERS)} to stream destinations"
        )
    df = check_frame(table, df, part)
    if len(df) == 0:
        return Messages([], [], np.empty(0, dtype=np.int64), [], [], [])
    codes, displays = pd.factorize(df["symbol"])
    displays = [str(d) for d in displays]
    keys = [partition_key(d) for d in displays]
    rank = np.argsort(np.argsort(np.array(keys)))[codes]  # symbols in partition-key order
    ts = df["ts"].array.asi8 // _NS_PER_MS
    order = np.lexsort((ts, rank))
    if not bool((order[1:] > order[:-1]).all()):  # frames usually arrive sorted: no copy then
        df, codes, rank, ts = df.take(order), codes[order], rank[order], ts[order]
    same = rank[1:] == rank[:-1]
    if bool((same & (ts[1:] <= ts[:-1])).any()):
        raise FrameContractError(
            f"{where}: two candles of one symbol fall in the same millisecond; message ids are per "
            "millisecond (`<feed>.<table>.<symbol_key>.<ts ms>`), so ts must differ by at least 1 ms"
        )
    starts = np.concatenate([[0], np.flatnonzero(~same) + 1]).tolist()
    stops = [*starts[1:], len(df)]
    runs = [(keys[codes[a]], displays[codes[a]], a, b) for a, b in zip(starts, stops, strict=True)]
    prefixes = np.array([f"{table.feed}.{table.name}.{k}." for k in keys])[codes]
    return Messages(
        keys=np.array(keys)[codes].tolist(),
        symbols=np.array(displays)[codes].tolist(),
        ts_ms=ts,
        ids=np.char.add(prefixes, ts.astype(str)).tolist(),
        payloads=json_messages(df),
        runs=runs,
    )


def batches(rows: np.ndarray | range, size: int) -> Iterator[np.ndarray | range]:
    """Consecutive chunks of at most `size` of the row numbers to send."""
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def batch_size_of(requested: int | None, default: int, who: str) -> int:
    if requested is None:
        return default
    if not isinstance(requested, int) or isinstance(requested, bool) or requested <= 0:
        raise ValueError(f"{who}: batch_size must be a positive integer, got {requested!r}")
    return requested


class StreamBase:
    """What the three stream destinations share: the plug-in shape, message preparation, batching."""

    name: ClassVar[str] = ""
    kind: ClassVar[DestinationKind] = "stream"
    Options: ClassVar[type[StreamOptions]] = StreamOptions

    def __init__(self, options: StreamOptions):
        self.options = options

    @classmethod
    def from_options(cls, options: Any, storage: Any) -> StreamBase:  # storage: streams keep nothing there
        return cls(options)

    def publish(
        self, table: TableRef, df: pd.DataFrame, part: PartitionSlice, batch_size: int | None = None
    ) -> dict[str, Any]:
        size = batch_size_of(batch_size, self.options.batch_size, self.name)
        messages = prepare(table, df, part, self.name)
        md = self._send(table, messages, size)
        return {"rows": len(messages), "batch_size": size, **md}

    def _send(self, table: TableRef, messages: Messages, batch_size: int) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Nothing held by default."""
