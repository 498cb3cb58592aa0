"""freqtrade's `download-data` against the same local Binance stand-in, as the yardstick of issue 20.

freqtrade is not a dependency of this project: it lives in its own virtualenv (`pip install freqtrade`,
e.g. `/work/ft-venv` next to the repo) and is found through `FREQTRADE_BIN` or `<repo>/../ft-venv/bin/freqtrade`;
without it the case returns one row that says so instead of failing.

What is measured: 1 symbol (BTC/USDT) x 2024 (366 days, 527,040 candles) of 1m over REST, 50 ms latency
per request, as a user runs it (`freqtrade download-data`, ccxt async with its default rate limiter, feather
files); wall time, CPU of the process tree and peak summed RSS of the tree (`benchmarks.cli.measure`), and
the stored candle count checked against the server's.

How freqtrade is pointed at the stand-in (all in the generated config, nothing patched):
- `exchange.ccxt_config.urls.api.public` = `<stand-in>/api/v3` (ccxt deep-merges it over its own URLs);
- `exchange.ccxt_config.options.fetchMarkets.types = ["spot"]`, so ccxt loads only `/api/v3/exchangeInfo`
  (no fapi/dapi); without API keys ccxt also skips the authenticated `/sapi` currencies call;
- `exchange.only_from_ccxt = true`, because freqtrade's Binance class otherwise downloads 1m spot history
  from data.binance.vision (which is not the stand-in and not reachable here) and uses REST only for the rest.

The stand-in is `FakeBinance` (klines + time, unchanged) plus the two endpoints ccxt needs on startup
(`/api/v3/exchangeInfo` for BTCUSDT spot in Binance's field layout, `/api/v3/ping`), served from a child
process like `benchmarks.common.served`, so the server's Python work does not count in freqtrade's figures
(the child is reaped only after the measurements, so its CPU is not in RUSAGE_CHILDREN either).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from benchmarks.cli import REPO, measure
from benchmarks.common import START, in_child, klines, row

DAYS = 366  # 2024 is a leap year: 527,040 candles
LATENCY = 0.05
SKIP_NOTE = "freqtrade not installed: set FREQTRADE_BIN or create /work/ft-venv"


def freqtrade_bin() -> str | None:
    """The freqtrade executable: $FREQTRADE_BIN, else <repo>/../ft-venv/bin/freqtrade; None when absent."""
    env = os.environ.get("FREQTRADE_BIN")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "ft-venv" / "bin" / "freqtrade"]:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


# ------------------------------------------------------------------------------ the stand-in
def exchange_info(server_time_ms: int) -> dict[str, Any]:
    """A minimal `/api/v3/exchangeInfo` body: one BTCUSDT spot symbol in Binance's real field layout.

    The layout (key order, rate limits, filter types) follows a recorded real response
    (shared/market-data/binance/exchangeInfo_ETHBTC_2025-06-21_chainslake.json); the symbol-specific
    values (precisions, tick/step sizes, notional) are BTCUSDT's. ccxt's parse_market reads status,
    base/quote assets, precisions, permissions and the PRICE_FILTER / LOT_SIZE / NOTIONAL filters.
    """
    return {
        "timezone": "UTC",
        "serverTime": server_time_ms,
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": [{
            "symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "baseAssetPrecision": 8,
            "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS", "STOP_LOSS_LIMIT", "TAKE_PROFIT",
                           "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True, "cancelReplaceAllowed": True, "amendAllowed": True,
            "isSpotTradingAllowed": True, "isMarginTradingAllowed": True,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
                 "tickSize": "0.01000000"},
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
                 "stepSize": "0.00001000"},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
                 "stepSize": "0.00000000"},
                {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000,
                 "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
                {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2",
                 "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [], "permissionSets": [["SPOT", "MARGIN"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH", "DECREMENT"],
        }],
    }  # fmt: skip


def _standin(frame: pd.DataFrame, latency: float) -> Any:
    """FakeBinance serving `frame` as BTCUSDT 1m, plus exchangeInfo and ping (same latency per request)."""
    import threading

    from data_puller_dagster_tests.fakes.binance import FakeBinance
    from data_puller_dagster_tests.fakes.server import Reply

    class StandIn(FakeBinance):
        def handle(self, path: str, params: dict[str, str], headers: dict[str, str]) -> Reply:
            if path in ("/api/v3/exchangeInfo", "/api/v3/ping"):
                if self.latency:
                    threading.Event().wait(self.latency)
                now_ms = int(pd.Timestamp.now(tz="UTC").value // 1_000_000)
                body = exchange_info(now_ms) if path.endswith("exchangeInfo") else {}
                return Reply(200, orjson.dumps(body), {"Content-Type": "application/json"})
            return super().handle(path, params, headers)

    return StandIn({("BTCUSDT", "1m"): frame}, latency=latency)


def _serve(periods: int, latency: float, q: Any, stop: Any) -> None:
    with _standin(klines(periods), latency) as fake:
        q.put(fake.url)
        stop.wait()


@contextmanager
def served_standin(periods: int, latency: float = LATENCY) -> Iterator[str]:
    """The stand-in in a forked child process (benchmarks.common.in_child); yields its URL."""
    with in_child(_serve, periods, latency) as url:
        yield url


# ------------------------------------------------------------------------------ the run
def ft_config(tmp: Path, url: str) -> Path:
    """A minimal freqtrade config for download-data against `url` (see the module docstring)."""
    cfg = {
        "stake_currency": "USDT",
        "dry_run": True,
        "trading_mode": "spot",
        "margin_mode": "",
        "timeframe": "1m",
        "dataformat_ohlcv": "feather",
        "exchange": {
            "name": "binance",
            "key": "",
            "secret": "",
            "pair_whitelist": ["BTC/USDT"],
            "only_from_ccxt": True,
            "ccxt_config": {
                "urls": {"api": {"public": f"{url}/api/v3"}},
                "options": {"fetchMarkets": {"types": ["spot"]}},
            },
        },
        "pairlists": [{"method": "StaticPairList"}],
    }
    (tmp / "user_data").mkdir(exist_ok=True)  # freqtrade refuses a --userdir that does not exist
    path = tmp / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def ft_command(exe: str, config: Path, tmp: Path, days: int) -> list[str]:
    end = (pd.Timestamp(START) + pd.Timedelta(days=days)).strftime("%Y%m%d")
    return [exe, "download-data", "--config", str(config), "--userdir", str(tmp / "user_data"),
            "--datadir", str(tmp / "data"), "--pairs", "BTC/USDT", "--timeframes", "1m",
            "--timerange", f"{pd.Timestamp(START):%Y%m%d}-{end}", "--data-format-ohlcv", "feather"]  # fmt: skip


def stored(tmp: Path) -> pd.DataFrame:
    files = list((tmp / "data").rglob("*.feather"))
    if len(files) != 1:
        raise RuntimeError(f"expected one feather file, found {[str(f) for f in files]}")
    return pd.read_feather(files[0])


def check(got: pd.DataFrame, served: pd.DataFrame, n: int) -> None:
    """The candles freqtrade stored inside the range equal the server's first `n` (count, times, OHLCV).

    freqtrade keeps the whole last page (past the range end) minus its newest candle, so only the range is
    compared; the server holds one more day than the range for that reason (see `download_data`).
    """
    ms = (got["date"].astype("datetime64[ms, UTC]").astype("int64")).to_numpy()
    want = served.iloc[:n]
    keep = ms < want["open_time"].iloc[-1] + 60_000
    inside = got[keep]
    if len(inside) != n:
        raise RuntimeError(f"freqtrade stored {len(inside)} candles in the range, the server has {n}")
    same = (ms[keep] == want["open_time"].to_numpy()).all() and all(
        (inside[c].to_numpy() == want[c].to_numpy()).all() for c in ("open", "high", "low", "close", "volume")
    )
    if not same:
        raise RuntimeError("freqtrade's stored candles differ from the server's")


def download_data(quick: bool) -> list[dict]:
    """Median of 2 runs (1 with --quick, over 31 days) against one stand-in, each into a fresh directory."""
    days, runs = (31, 1) if quick else (DAYS, 2)
    n = days * 1440
    label = f"freqtrade download-data, {days} days 1m, 50 ms latency"
    exe = freqtrade_bin()
    if exe is None:
        return [row(label, 0, float("nan"), note=SKIP_NOTE)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    # One day more than the range: freqtrade drops the newest candle it receives (Binance's last candle may
    # still be forming), so with the range's last minute as the server's newest it would store n - 1.
    periods = n + 1440
    served = klines(periods)
    walls, cpus, rsss = [], [], []
    with served_standin(periods) as url:
        for _ in range(runs):
            tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
            try:
                m = measure(ft_command(exe, ft_config(tmp, url), tmp, days), env, tmp)
                if m["rc"] != 0:
                    raise RuntimeError(
                        f"freqtrade download-data failed (exit {m['rc']}):\n{m['out'][-3000:]}"
                    )
                check(stored(tmp), served, n)
                walls.append(m["wall"])
                cpus.append(m["cpu"])
                rsss.append(m["rss_mb"])
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    wall, cpu, rss = statistics.median(walls), statistics.median(cpus), statistics.median(rsss)
    each = "; ".join(
        f"{w:.1f} s / {c:.1f} s / {r:.0f} MiB" for w, c, r in zip(walls, cpus, rsss, strict=True)
    )
    return [row(label, n, wall, cpu_s=cpu, peak_rss_mb=rss, target="yardstick for cli.raw_normalized (issue 20)",
                note=f"CPU {cpu:.1f} s, tree RSS {rss:.0f} MiB; median of {runs} (wall/CPU/RSS: {each}); "
                     f"{n:,} candles stored = server's")]  # fmt: skip


CASES = {"download_data": download_data}
