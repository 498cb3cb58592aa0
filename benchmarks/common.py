"""Shared helpers: timing (median of runs), configs, fake servers in a separate process, raw frames."""

from __future__ import annotations

import gc
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

START = "2024-01-01"
YEAR_1M = 525_600
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
FIXED_NOW = pd.Timestamp("2026-01-01", tz="UTC")


def timed(fn: Callable[[], Any], runs: int, setup: Callable[[], Any] | None = None) -> tuple[float, list[float], Any]:
    """Median wall seconds of `runs` calls of fn (setup, untimed, before each); also all times and last result."""
    times, out = [], None
    for _ in range(runs):
        if setup is not None:
            setup()
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def row(name: str, rows: int, seconds: float, *, target: str = "", note: str = "", **extra: Any) -> dict[str, Any]:
    return {"benchmark": name, "rows": rows, "seconds": seconds,
            "rows_per_s": rows / seconds if seconds > 0 else float("nan"),
            "target": target, "note": note, **extra}  # fmt: skip


def base_config(data_dir: Path, *, feed: dict[str, Any] | None = None, **top: Any):
    """An AppConfig with one crypto feed (Binance 1m); `feed`/`top` override parts of it."""
    from data_puller_dagster.config import parse_config

    f = {
        "name": "bench", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
        "derived_timeframes": ["1h"], "enrich_timeframes": ["1h"], "dataset_timeframe": "1h",
        "symbols": ["BTCUSDT"], "start_date": START, **(feed or {}),
    }  # fmt: skip
    raw = {
        "storage": {"data_dir": str(data_dir)},
        "sources": {"binance": {"base_url": "http://127.0.0.1:9", "use_archive": False, "max_retries": 1}},
        "feeds": [f],
        "dataset": {"min_quality": 0.0},
        "runs": {"retry_max": 0, "max_partitions_per_run": 31},
    }
    for k, v in top.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_config(raw, env={})


def klines(periods: int, symbol_seed: int = 0, start: str = START) -> pd.DataFrame:
    from data_puller_dagster_tests.fakes.binance import generate_klines

    return generate_klines(start, periods, "1m", seed=symbol_seed)


def raw_frame(periods: int) -> pd.DataFrame:
    """A Binance raw frame (string prices, as the adapters hand it over) of `periods` 1m candles."""
    from data_puller_dagster.sources.binance_klines import klines_frame
    from data_puller_dagster_tests.fakes.binance import wire_strings

    wire = wire_strings(klines(periods))
    return klines_frame(wire, "BTCUSDT", "1m", "binance", FIXED_NOW, "bench")


def normalized_frame(periods: int) -> pd.DataFrame:
    from data_puller_dagster.transform.normalize import normalize

    return normalize(raw_frame(periods), asset_class="crypto", timeframe="1m", now=FIXED_NOW).data


# ------------------------------------------------------------------ fake providers in another process
def _serve(kind: str, symbols: list[str], periods: int, root: str | None, latency: float, start: str,
           q: Any, stop: Any) -> None:
    from data_puller_dagster_tests.fakes.binance import FakeArchive, FakeBinance

    if kind == "rest":
        fake = FakeBinance({(s, "1m"): klines(periods, i, start) for i, s in enumerate(symbols)} if periods else {},
                           latency=latency)
        for (sym, tf), frame in fake.series.items():  # format the wire pages before anything is timed
            fake._wire_rows(sym, tf, frame)
    else:
        fake = FakeArchive(Path(root or "."))
    with fake:
        q.put(fake.url)
        stop.wait()


@contextmanager
def in_child(serve: Callable[..., None], *args: Any) -> Iterator[str]:
    """`serve(*args, q, stop)` in a forked child process (it puts its URL on `q`, serves until `stop`), so
    a fake server's Python work does not share the benchmark's GIL; yields the URL."""
    ctx = mp.get_context("fork")
    q, stop = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=serve, args=(*args, q, stop), daemon=True)
    p.start()
    try:
        yield q.get(timeout=60)
    finally:
        stop.set()
        p.join(10)
        if p.is_alive():
            p.terminate()


@contextmanager
def served(kind: str, symbols: list[str], periods: int = YEAR_1M, root: Path | None = None,
           latency: float = 0.0, start: str = START) -> Iterator[str]:
    """A FakeBinance (kind="rest") or FakeArchive (kind="archive") in a child process; yields its URL."""
    with in_child(_serve, kind, symbols, periods, str(root) if root else None, latency, start) as url:
        yield url
