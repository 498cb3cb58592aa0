"""Byte-level building blocks of the dataset lines: every candle row serialized once per batch.

Why bytes and scatters: a 100-candle context repeats each candle in 100 examples, so a row is
serialized once (one orjson call for the whole number matrix, vectorized byte scatters for the rest)
and an example's context is one slice of that buffer. Every number goes through one path (numpy
rounding, then orjson's shortest round-trip repr), so the same value always prints the same way,
whatever batch it is in: that is what keeps day-by-day files byte-identical to one range run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

_NP = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class Cells:
    """One variable-length byte cell per row: row k is src[starts[k] : starts[k] + lens[k]]."""

    src: np.ndarray  # uint8
    starts: np.ndarray
    lens: np.ndarray

    @staticmethod
    def const(data: bytes, n: int) -> Cells:
        return Cells(np.frombuffer(data, dtype=np.uint8), np.zeros(n, dtype=np.int64), np.full(n, len(data)))

    @staticmethod
    def fixed(matrix: np.ndarray) -> Cells:
        """An N x W uint8 matrix, every row W bytes (e.g. timestamps)."""
        n, w = matrix.shape
        return Cells(np.ascontiguousarray(matrix).reshape(-1), np.arange(n, dtype=np.int64) * w, np.full(n, w))

    @staticmethod
    def strings(arr: np.ndarray) -> Cells:
        """A numpy bytes (`S`) array, one cell per element (trailing NULs are not part of a cell)."""
        n, width = len(arr), max(arr.dtype.itemsize, 1)
        fixed = np.ascontiguousarray(arr.astype(f"S{width}"))
        src = np.frombuffer(fixed.tobytes(), dtype=np.uint8)
        return Cells(src, np.arange(n, dtype=np.int64) * width, np.char.str_len(fixed).astype(np.int64))


def iso_u8(ts_ns: np.ndarray) -> np.ndarray:
    """N x 20 bytes of `YYYY-MM-DDTHH:MM:SSZ` (fixed width, so it can be scattered as a block)."""
    text = np.datetime_as_string(ts_ns.view("datetime64[ns]").astype("datetime64[s]"), unit="s").astype("S19")
    return np.frombuffer(np.char.add(text, b"Z").tobytes(), dtype=np.uint8).reshape(-1, 20)


def iso_strings(ts_ns: np.ndarray) -> np.ndarray:
    """`YYYY-MM-DDTHH:MM:SS` strings (no Z) of UTC ns timestamps."""
    return np.datetime_as_string(ts_ns.view("datetime64[ns]").astype("datetime64[s]"), unit="s")


def number_rows(values: np.ndarray, csv: bool = False) -> Cells:
    """Serialize an N x F float matrix once; row k's numbers, comma-separated, are one cell.

    In CSV mode NaN is empty, not null. orjson writes a matrix as `[[..],[..]]`, so row spans sit
    between each inner `[` and its `]` (numbers contain neither).
    """
    raw = orjson.dumps(np.ascontiguousarray(values, dtype=np.float64), option=_NP)
    if csv:
        raw = raw.replace(b"null", b"")
    buf = np.frombuffer(raw, dtype=np.uint8)
    starts = np.flatnonzero(buf == ord("["))[1:] + 1
    ends = np.flatnonzero(buf == ord("]"))[:-1]
    return Cells(buf, starts.astype(np.int64), (ends - starts).astype(np.int64))


def concat_cells(parts: list[Cells], n: int) -> tuple[bytes, np.ndarray]:
    """Row k = parts[0][k] + parts[1][k] + ..., rows back to back; offsets[k] is where row k starts.

    Vectorized: each part is one gather over all rows (repeat-based index map), no per-row Python.
    """
    if n == 0:
        return b"", np.zeros(1, dtype=np.int64)
    sizes = np.zeros(n, dtype=np.int64)
    for p in parts:
        sizes += p.lens
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    at = offsets[:-1].copy()
    for p in parts:
        total = int(p.lens.sum())
        if total:
            row_of = np.repeat(np.arange(n), p.lens)
            within = np.arange(total) - np.repeat(np.cumsum(p.lens) - p.lens, p.lens)
            out[at[row_of] + within] = p.src[p.starts[row_of] + within]
        at += p.lens
    return out.tobytes(), offsets


def json_inner(text: str) -> bytes:
    """A text as the body of a JSON string (escaped by orjson, without the quotes)."""
    return orjson.dumps(text)[1:-1]
