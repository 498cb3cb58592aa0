"""What every live source hands the stream runner: raw frames with per-row event facts.

`RawBatch` is a raw frame of a provider's layout (sources/base.py) plus, positionally aligned, what the
layout has no column for: whether the candle was final when received, the provider's event time and
the connection it came on. `in_daemon_thread` runs a blocking provider request for an asyncio task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from data_puller_dagster.sources.base import raw_empty


@dataclass
class RawBatch:
    """A raw frame (Binance or Twelve Data layout) and, per row, what the layout has no column for."""

    raw: pd.DataFrame
    final: np.ndarray  # bool: the candle had closed (k.x; for REST/poll rows: fetched after the close)
    event_ms: np.ndarray  # int64: provider event time (websocket `E`; REST/poll rows: fetch time)
    conn: np.ndarray  # int16: connection index, -1 for REST/poll rows
    malformed: int = 0
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.raw)

    def take(self, mask: np.ndarray) -> RawBatch:
        return RawBatch(self.raw[mask].reset_index(drop=True), self.final[mask], self.event_ms[mask],
                        self.conn[mask])  # fmt: skip

    @staticmethod
    def concat(parts: list[RawBatch]) -> RawBatch:
        parts = [p for p in parts if len(p)] or parts[:1]
        if len(parts) == 1:
            return parts[0]
        return RawBatch(
            pd.concat([p.raw for p in parts], ignore_index=True),
            np.concatenate([p.final for p in parts]),
            np.concatenate([p.event_ms for p in parts]),
            np.concatenate([p.conn for p in parts]),
            sum(p.malformed for p in parts),
            sum(p.skipped for p in parts),
        )

    @staticmethod
    def polled(raw: pd.DataFrame, step_ns: int) -> RawBatch:
        """A REST/poll raw frame: final where fetched at or after the candle's close (normalize's rule)."""
        ts = raw["ts"].array.asi8 if len(raw) else np.empty(0, dtype=np.int64)
        fetched = raw["fetched_at"].array.asi8 if len(raw) else np.empty(0, dtype=np.int64)
        return RawBatch(raw.reset_index(drop=True), fetched >= ts + step_ns, fetched // 1_000_000,
                        np.full(len(raw), -1, dtype=np.int16))  # fmt: skip


def empty_batch(layout: str = "binance") -> RawBatch:
    return RawBatch(raw_empty(layout), np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int16))


def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future:
    """`fn(*args)` on a daemon thread: a provider request still retrying when the stream stops must not
    hold the process (asyncio.to_thread's pool is joined at exit; daemon threads are not)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=work, name="live-fetch", daemon=True).start()
    return fut
