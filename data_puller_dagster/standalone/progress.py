"""The `data-puller pull` progress bar: one per symbol, days done, pages sent, rate-limit waits, ETA.

Why counters rather than callbacks in the adapters: the adapters already count what they send
(`HttpClient.requests_sent`) and how long the shared per-minute budget held callers back
(`MinuteBudget.waited_seconds`: weight/credit pacing and 429 Retry-After pauses). A ticker thread
reads them twice a second, so the bar moves during a chunk's concurrent page fetches without a single
line in the fetch path. Bars go to stderr and only to a terminal (`--quiet` turns them off).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, TextIO

from tqdm import tqdm


def _clients(adapter: Any) -> list[Any]:
    """The HttpClients of an adapter: Binance REST (+ archive), Twelve Data's own."""
    parts = [adapter, getattr(adapter, "rest", None), getattr(adapter, "archive", None)]
    return [p.http for p in parts if p is not None and hasattr(p, "http")]


def _size(stream: TextIO) -> tuple[int, int]:
    """(columns, rows) of the terminal; (100, 20) where it reports none (a pseudo-terminal without a
    size, as some CI runners give: tqdm would then draw nothing)."""
    try:
        size = os.get_terminal_size(stream.fileno())
        return size.columns or 100, size.lines or 20
    except (OSError, ValueError, AttributeError):
        return 100, 20


def counters(adapter: Any) -> tuple[int, float]:
    """(requests sent, seconds held back by rate limits) of an adapter so far."""
    clients = _clients(adapter)
    sent = sum(int(getattr(c, "requests_sent", 0)) for c in clients)
    budgets = {id(c.budget): c.budget for c in clients if getattr(c, "budget", None) is not None}
    waited = sum(float(getattr(b, "waited_seconds", 0.0)) for b in budgets.values())
    return sent, waited


class SymbolProgress:
    """A bar over the days of one symbol's pull; `advance(days)` after each stored chunk."""

    def __init__(self, label: str, days: int, adapter: Any, *, enabled: bool, stream: TextIO | None = None):
        self.adapter = adapter
        self.base = counters(adapter)
        out = stream or sys.stderr
        cols, rows = _size(out)
        self.bar = tqdm(
            total=days, desc=label, unit="day", file=out, disable=not enabled, ncols=cols, nrows=rows,
            mininterval=0.25, leave=True,
        )  # fmt: skip
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._tick, name="data-puller-progress", daemon=True)
            self._thread.start()

    def stats(self) -> tuple[int, float]:
        """(pages, rate-limit wait seconds) of this symbol's pull so far."""
        sent, waited = counters(self.adapter)
        return sent - self.base[0], waited - self.base[1]

    def _postfix(self) -> None:
        pages, waited = self.stats()
        self.bar.set_postfix_str(f"pages={pages} rate-limit wait={waited:.0f}s", refresh=True)

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            self._postfix()

    def advance(self, days: int) -> None:
        if not self.bar.disable:
            self._postfix()
        self.bar.update(days)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            self._postfix()
        self.bar.close()
