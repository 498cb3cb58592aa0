"""Per symbol of a live feed: the last final candle routed, and the rows held while a gap is filled.

Why hold rows: consumers of a stream (and Redis, whose entry ids are candle times and only grow) must
see each symbol's final candles in time order with no hole. When the first events of a symbol after a
(re)connect open later than one candle after the last final candle routed, candles were missed: the
symbol's rows are held (in arrival order), the missing range is fetched over REST, and the REST rows and
the held rows go through normalize together, deduplicated on open time. Only then do newer rows of
that symbol flow again. The check is on the candle times themselves, so it catches every cause of a
gap (drop, pong deadline, watchdog, serverShutdown, rotation, a quarantined event), and costs nothing
when nothing was missed.

At the first sight of a symbol the range is the day so far (`stream.initial_backfill: day`; the
stores' day partition of the live table then holds the whole day) after what the primary store already
holds for that day, or nothing (`none`).

Everything is vectorized over the batch; the only loop is over the symbols that start a gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_puller_dagster.sources.live import RawBatch

NONE = np.iinfo(np.int64).min  # never seen
_MAX = np.iinfo(np.int64).max
NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Gap:
    """Candles of `symbol` to fetch: [start, end) (start None: first sight, decided by the backfill)."""

    index: int
    symbol: str
    start: pd.Timestamp | None
    end: pd.Timestamp


class SymbolStates:
    def __init__(self, symbols: list[str], step_ns: int, initial_backfill: str = "day"):
        self.symbols = list(symbols)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self.step = step_ns
        self.initial = initial_backfill
        self.wm = np.full(len(symbols), NONE, dtype=np.int64)  # ts ns of the last final candle routed
        self.pending = np.zeros(len(symbols), dtype=bool)
        self.held: dict[int, list[RawBatch]] = {}
        self.unknown_rows = 0
        # rank of each symbol in sorted display order (normalize sorts its output by symbol text)
        self.rank = np.argsort(np.argsort(np.array(self.symbols, dtype=object))).astype(np.int64)

    def codes(self, raw: pd.DataFrame) -> np.ndarray:
        """Per row, the index of its symbol in the feed (-1 for a symbol the feed does not have)."""
        if not len(raw):
            return np.empty(0, dtype=np.int64)
        codes, uniques = pd.factorize(raw["symbol"])
        lookup = np.array([self.index.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)
        return lookup[codes]

    def admit(self, batch: RawBatch, *, check_gaps: bool = True) -> tuple[RawBatch, np.ndarray, list[Gap]]:
        """Split a batch into rows ready to process (with their symbol indexes) and held rows; return
        the gaps to fetch. `check_gaps=False` for a batch that is a gap's fill itself."""
        idx = self.codes(batch.raw)
        unknown = idx < 0
        if unknown.any():
            self.unknown_rows += int(unknown.sum())
        ts = batch.raw["ts"].array.asi8 if len(batch) else np.empty(0, dtype=np.int64)
        n = len(self.symbols)
        first = np.full(n, _MAX, dtype=np.int64)
        valid = ~unknown & (ts != NONE)
        np.minimum.at(first, idx[valid], ts[valid])
        present = np.zeros(n, dtype=bool)
        present[idx[~unknown]] = True
        gaps: list[Gap] = []
        hold_sym = self.pending & present
        if check_gaps:
            seen = present & ~self.pending & (first != _MAX)
            fresh = seen & (self.wm == NONE)
            if self.initial == "none" and fresh.any():
                self.wm[fresh] = first[fresh] - self.step
                fresh[:] = False
            later = seen & (self.wm != NONE) & (first > self.wm + self.step)
            for i in np.flatnonzero(fresh | later).tolist():
                start = None if fresh[i] else pd.Timestamp(int(self.wm[i]) + self.step, tz="UTC")
                gaps.append(Gap(i, self.symbols[i], start, pd.Timestamp(int(first[i]), tz="UTC")))
                self.pending[i] = True
                hold_sym[i] = True
        if hold_sym.any():
            rows = np.zeros(len(batch), dtype=bool)
            rows[~unknown] = hold_sym[idx[~unknown]]
            for i in np.flatnonzero(hold_sym).tolist():
                self.held.setdefault(i, []).append(batch.take(rows & (idx == i)))
            keep = ~rows & ~unknown
        else:
            keep = ~unknown
        if keep.all():
            return batch, idx, gaps
        return batch.take(keep), idx[keep], gaps

    def release(self, i: int) -> RawBatch | None:
        """The rows held for symbol i (arrival order), and the symbol flows again."""
        self.pending[i] = False
        parts = self.held.pop(i, [])
        return RawBatch.concat(parts) if parts else None

    def advance(self, idx: np.ndarray, ts_ns: np.ndarray) -> None:
        """Final candles routed: raise the watermarks."""
        if len(idx):
            np.maximum.at(self.wm, idx, ts_ns)

    def held_rows(self) -> int:
        return sum(len(b) for parts in self.held.values() for b in parts)
