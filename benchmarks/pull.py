"""Provider pull: 1 symbol x 1 year of 1m candles (525,600) from a local Binance-compatible server (in another
process), via REST paging and via the data.binance.vision archive layout, next to Binance's ceiling."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.common import START, YEAR_1M, base_config, klines, row, served, timed

# Binance: 6000 request weight per minute, a 1000-candle klines page costs 2 -> 3000 pages = 3M candles/min.
CEILING_ROWS_PER_S = 6000 / 2 * 1000 / 60


def _adapter(url: str, archive_url: str | None = None):
    from data_puller_dagster.sources.binance import BinanceAdapter

    src = {"base_url": url, "use_archive": archive_url is not None, "max_retries": 1}
    if archive_url:
        src["archive_url"] = archive_url
    cfg = base_config(Path(tempfile.gettempdir()), sources={"binance": src})
    return BinanceAdapter.from_config(cfg.sources.binance)


def rest(quick: bool) -> list[dict]:
    n, runs = (30 * 1440, 2) if quick else (YEAR_1M, 3)
    start = pd.Timestamp(START, tz="UTC")
    end = start + pd.Timedelta(minutes=n)
    with served("rest", ["BTCUSDT"], n) as url:
        ad = _adapter(url)
        t, _, df = timed(lambda: ad.fetch("BTCUSDT", "1m", start, end), runs)
        ad.close()
    assert len(df) == n, len(df)
    return [
        row("pull REST paging (8 concurrent)", n, t, note=f"{-(-n // 1000)} pages"),
        row("pull ceiling at Binance limits", n, n / CEILING_ROWS_PER_S, note="6000 weight/min, 2 per 1000-candle page"),
    ]


def archive(quick: bool) -> list[dict]:
    from data_puller_dagster_tests.fakes.binance import write_archive

    n, runs = (30 * 1440, 2) if quick else (YEAR_1M, 3)
    start = pd.Timestamp(START, tz="UTC")
    end = start + pd.Timedelta(minutes=n)
    root = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        days = write_archive(root, klines(n), "BTCUSDT", "1m")
        with served("archive", [], root=root) as aurl, served("rest", ["BTCUSDT"], 0) as url:
            ad = _adapter(url, aurl)
            t, _, df = timed(lambda: ad.fetch("BTCUSDT", "1m", start, end), runs)
            ad.close()
        assert len(df) == n, len(df)
        return [row("pull archive (daily zips + CHECKSUM)", n, t, note=f"{len(days)} files")]
    finally:
        shutil.rmtree(root, ignore_errors=True)


CASES = {"rest": rest, "archive": archive}
