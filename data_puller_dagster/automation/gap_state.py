"""Pure bookkeeping of the gap-filling sensors: cursor state, run tracking, contiguous date ranges.

Kept free of Dagster contexts so the rules (what is pending, when a failed symbol may be retried,
how days become runs) are plain functions of data and a clock, testable without an instance.

Cursor format (JSON, compact keys because Dagster stores the cursor on every tick):

    {
      "v": 1,                      # format version; an unknown version starts afresh
      "seq": 12,                   # requests made so far, part of every run_key (unique per request)
      "mat_id": 4711,              # last event storage id of normalized materializations read (gap sensor)
      "inc": {"2024-01-05|BTCUSDT": {"m": 3, "a": 1}},  # incomplete days: missing candles, refetches requested
      "conf": {"2024-01-07|BTCUSDT": 60},                # confirmed gaps: missing candles (never refetched)
      "pend": {"<run_key>": {"s": "BTCUSDT", "d0": "2024-01-05", "d1": "2024-01-09", "t": 1704.0}},
      "boff": {"BTCUSDT": {"n": 2, "until": 1705.0}},   # consecutive failed runs of a symbol, retry time
      "files": {"sid": 99, "n": 0}                      # files sensor: dataset storage id last requested
    }
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

CURSOR_VERSION = 1
# A request with no run after this long was lost (sensor stopped before submission, run deleted).
PENDING_TTL_SECONDS = 3600.0
# Backoff after a failed run of a symbol: base * 2**(failures-1), capped. The base is
# automation.gap_sensor.failure_backoff_seconds; this is its default.
BACKOFF_BASE_SECONDS = 300.0
BACKOFF_MAX_SECONDS = 6 * 3600.0


@dataclass
class Pending:
    """A run this sensor requested and has not seen finish: its symbol and inclusive date range."""

    symbol: str
    start: date
    end: date
    requested_at: float

    def covers(self, symbol: str, day: date) -> bool:
        return symbol == self.symbol and self.start <= day <= self.end

    def to_json(self) -> dict[str, Any]:
        return {
            "s": self.symbol,
            "d0": self.start.isoformat(),
            "d1": self.end.isoformat(),
            "t": self.requested_at,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Pending:
        return cls(d["s"], date.fromisoformat(d["d0"]), date.fromisoformat(d["d1"]), float(d["t"]))


@dataclass
class Incomplete:
    """A materialized day that lacks candles: how many, and how many refetches were requested."""

    missing: int
    attempts: int = 0


@dataclass
class SensorState:
    """Everything a gap sensor remembers between ticks (see the module docstring for the JSON)."""

    seq: int = 0
    mat_id: int = 0
    incomplete: dict[str, Incomplete] = field(default_factory=dict)
    confirmed: dict[str, int] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    backoff: dict[str, dict[str, float]] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    fresh: bool = True  # no cursor was stored yet (first tick, or the cursor was reset)

    # ------------------------------------------------------------------ serialization
    @classmethod
    def load(cls, cursor: str | None) -> SensorState:
        """Parse a stored cursor. An empty, unreadable or other-version cursor starts afresh: the
        sensor then re-derives its state from the event log, which costs one slower tick, not data."""
        if not cursor:
            return cls()
        try:
            d = json.loads(cursor)
            if d.get("v") != CURSOR_VERSION:
                return cls()
            return cls(
                seq=int(d.get("seq", 0)),
                mat_id=int(d.get("mat_id", 0)),
                incomplete={k: Incomplete(int(v["m"]), int(v["a"])) for k, v in d.get("inc", {}).items()},
                confirmed={k: int(v) for k, v in d.get("conf", {}).items()},
                pending={k: Pending.from_json(v) for k, v in d.get("pend", {}).items()},
                backoff={
                    k: {"n": float(v["n"]), "until": float(v["until"])} for k, v in d.get("boff", {}).items()
                },
                files={k: int(v) for k, v in d.get("files", {}).items()},
                fresh=False,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        d: dict[str, Any] = {"v": CURSOR_VERSION, "seq": self.seq}
        if self.mat_id:
            d["mat_id"] = self.mat_id
        if self.incomplete:
            d["inc"] = {k: {"m": v.missing, "a": v.attempts} for k, v in sorted(self.incomplete.items())}
        if self.confirmed:
            d["conf"] = dict(sorted(self.confirmed.items()))
        if self.pending:
            d["pend"] = {k: v.to_json() for k, v in self.pending.items()}
        if self.backoff:
            d["boff"] = {k: {"n": int(v["n"]), "until": v["until"]} for k, v in sorted(self.backoff.items())}
        if self.files:
            d["files"] = self.files
        return json.dumps(d, separators=(",", ":"))

    # ------------------------------------------------------------------ run tracking
    def is_pending(self, symbol: str, day: date) -> bool:
        return any(p.covers(symbol, day) for p in self.pending.values())

    def resolve(
        self,
        run_status_by_key: dict[str, str | None],
        now: float,
        backoff_base: float = BACKOFF_BASE_SECONDS,
    ) -> list[str]:
        """Drop pending requests whose run finished (or never appeared within the TTL) and update
        each symbol's failure backoff. `run_status_by_key` maps run_key -> "success" | "failure" |
        "running" | None (no run yet). A failure backs the symbol off `backoff_base` s, doubled per
        consecutive failure. Returns the run keys that were dropped."""
        dropped = []
        for key, p in list(self.pending.items()):
            status = run_status_by_key.get(key)
            if status == "running" or (status is None and now - p.requested_at < PENDING_TTL_SECONDS):
                continue
            dropped.append(key)
            del self.pending[key]
            if status == "success":
                self.backoff.pop(p.symbol, None)
            elif status == "failure":
                n = self.backoff.get(p.symbol, {}).get("n", 0) + 1
                delay = min(backoff_base * 2 ** (n - 1), BACKOFF_MAX_SECONDS)
                self.backoff[p.symbol] = {"n": n, "until": now + delay}
        return dropped

    def backing_off(self, symbol: str, now: float) -> bool:
        b = self.backoff.get(symbol)
        return b is not None and now < b["until"]

    def next_run_key(self, sensor_name: str, symbol: str, start: date, end: date) -> str:
        self.seq += 1
        return f"{sensor_name}:{self.seq}:{symbol}:{start.isoformat()}:{end.isoformat()}"


# ------------------------------------------------------------------------------ ranges
def contiguous_ranges(days: Iterable[date], max_days: int) -> Iterator[tuple[date, date]]:
    """Sorted days -> inclusive (start, end) ranges of consecutive days, each at most max_days long.

    One run per range keeps runs few (Dagster runs one symbol's date range per run) while memory stays
    bounded by max_partitions_per_run, the same bound as the assets' BackfillPolicy.
    """
    if max_days < 1:
        raise ValueError(f"max_days must be >= 1, got {max_days}; check runs.max_partitions_per_run")
    start = prev = None
    for d in sorted(set(days)):
        if start is None:
            start = prev = d
        elif d == prev + timedelta(days=1) and (d - start).days < max_days:
            prev = d
        else:
            yield start, prev
            start = prev = d
    if start is not None:
        yield start, prev


def day_range(start: date, end: date) -> Iterator[date]:
    d = start
    while d <= end:
        yield d
        d += timedelta(days=1)
