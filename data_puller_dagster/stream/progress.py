"""The stream's progress lines: one per connection (or poller) per `stream.log_interval_seconds`.

Why per connection: a reconnect storm or a stalled connection shows on its own line (which symbols,
how many candles it routed, how often it reconnected, how far behind the exchange it is), instead of
being averaged away in a feed total.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def _symbols(symbols: list[str]) -> str:
    shown = ",".join(symbols[:3])
    return f"{len(symbols)} symbol(s): {shown}{',...' if len(symbols) > 3 else ''}"


def _lag(values: list[float]) -> str:
    if not values:
        return "lag -"
    a = np.asarray(values)
    return f"lag median {np.median(a):.0f} ms p99 {np.percentile(a, 99):.0f} ms"


class Progress:
    """Remembers the totals of the previous line, so each line says what happened since."""

    def __init__(self) -> None:
        self._last: dict[Any, dict[str, int]] = {}

    def _delta(self, key: Any, **totals: int) -> dict[str, int]:
        before = self._last.get(key, {})
        self._last[key] = totals
        return {k: v - before.get(k, 0) for k, v in totals.items()}

    def connection_lines(self, feed: str, connections: list[Any], counters: Any, held: int) -> list[str]:
        lines = []
        rest = self._delta((feed, "rest"), finals=counters.finals_from_rest)["finals"]
        for c in connections:
            s = c.stats
            d = self._delta((feed, s.index), messages=s.messages, finals=int(counters.by_conn.get(s.index, 0)),
                            reconnects=s.reconnects)  # fmt: skip
            ago = f"{time.monotonic() - s.last_message:.1f} s ago" if s.last_message else "never"
            lines.append(
                f"stream {feed} ws#{s.index} [{_symbols(s.symbols)}]: {d['messages']} messages, "
                f"{d['finals']} final candles routed (+{rest} over REST for the feed), "
                f"{d['reconnects']} reconnects ({s.reconnects} in total), "
                f"{_lag(counters.lag_ms.pop(s.index, []))}, last message {ago}, {held} row(s) held for gap fills"
            )
        return lines

    def poller_line(self, feed: str, stats: Any, counters: Any) -> str:
        d = self._delta((feed, "poll"), polls=stats.polls, candles=counters.finals_routed,
                        retries=stats.retries, errors=stats.errors)  # fmt: skip
        return (
            f"stream {feed} poll [{_symbols(stats.symbols)}]: {d['polls']} polls, {d['candles']} final candles "
            f"routed, {d['retries']} retries, {d['errors']} errors, lag {stats.last_lag_s:.1f} s after close"
        )

    @staticmethod
    def summary(feed: str, counters: Any, held_lost: int, seconds: float) -> str:
        c = counters
        return (
            f"stream {feed} stopped after {seconds:.1f} s: {c.events} events received, {c.finals_routed} final "
            f"candles routed ({c.finals_from_rest} over REST), {c.updates_routed} in-progress updates routed, "
            f"{c.conflated} conflated, {c.stale} stale dropped, {c.quarantined} quarantined, "
            f"{held_lost} lost"
        )
