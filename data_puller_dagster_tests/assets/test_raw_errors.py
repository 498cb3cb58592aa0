"""The raw asset in real Dagster runs (a real instance, retry policy on) against the fake providers:
errors a retry cannot fix fail the step once with the cause; one archive day with a bad .CHECKSUM is
replaced by REST instead of failing the range."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.assets.raw import build_raw_asset
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.io.io_manager import build_io_manager
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.fakes.binance import FakeArchive, FakeBinance, generate_klines, write_archive
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series

KEY = "td-test-key-0123456789"


def config(tmp_path: Path, feed: dict, sources: dict) -> AppConfig:
    return parse_config(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "sources": sources,
            "feeds": [{"start_date": "2024-03-01", "end_date": "2024-03-10", **feed}],
            "dataset": {"enabled": False},
            "runs": {"retry_max": 2, "retry_delay_seconds": 0.05},
        },
        env={},
    )


def crypto(symbols=("BTCUSDT",)) -> dict:
    return {"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
            "symbols": list(symbols)}  # fmt: skip


INSTANCES: dict[str, dg.DagsterInstance] = {}


def materialize(cfg: AppConfig, start: str, end: str, symbol: str) -> dg.ExecuteInProcessResult:
    feed = cfg.feeds[0]
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [build_raw_asset(cfg, feed)],
        instance=instance,
        resources={"io_manager": build_io_manager(cfg)},
        tags={
            "dagster/asset_partition_range_start": f"{start}|{symbol}",
            "dagster/asset_partition_range_end": f"{end}|{symbol}",
        },
        raise_on_error=False,
    )
    INSTANCES[result.run_id] = instance
    return result


def not_retried(result: dg.ExecuteInProcessResult) -> str:
    """Assert one attempt, no retry; return the failure description."""
    assert not result.success
    types = [e.event_type_value for e in result.all_events]
    assert types.count("STEP_START") == 1 and "STEP_UP_FOR_RETRY" not in types, types
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    data = failure.step_failure_data
    assert data.user_failure_data is not None, "expected dg.Failure(allow_retries=False)"
    return data.user_failure_data.description or ""


def test_twelvedata_bad_key_is_not_retried_and_never_shown(tmp_path: Path) -> None:
    with FakeTwelveData({("EUR/USD", "1h"): generate_time_series("2024-03-01", 48)}, api_key=KEY) as td:
        cfg = config(
            tmp_path,
            {
                "name": "forex",
                "source": "twelvedata",
                "asset_class": "forex",
                "timeframe": "1h",
                "symbols": ["EUR/USD"],
            },  # fmt: skip
            {"twelvedata": {"base_url": td.url, "api_key": "wrong-key-987654321", "max_retries": 1}},
        )
        desc = not_retried(materialize(cfg, "2024-03-01", "2024-03-01", "EURUSD"))
        assert td.time_series_requests == 1
    assert "forex" in desc and "EUR/USD" in desc and "2024-03-01" in desc
    assert "AuthenticationError" in desc and "TWELVEDATA_API_KEY" in desc
    assert "wrong-key-987654321" not in desc


def test_binance_invalid_symbol_is_not_retried(tmp_path: Path) -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 100)}) as fb:
        fb.invalid_symbols.add("NOPEUSDT")
        cfg = config(tmp_path, crypto(["NOPEUSDT"]), {"binance": {"base_url": fb.url, "use_archive": False}})
        desc = not_retried(materialize(cfg, "2024-03-01", "2024-03-01", "NOPEUSDT"))
        # The day's two pages are fetched concurrently: each at most once (the first -1121 may cancel the
        # other before it is sent); a retry would send them again.
        assert 1 <= fb.klines_requests <= 2
    assert "crypto" in desc and "NOPEUSDT" in desc and "-1121" in desc and "fix the feed's symbols" in desc


def test_bad_checksum_day_without_rest_fallback_is_not_retried(tmp_path: Path) -> None:
    candles = generate_klines("2024-03-01", 2 * 1440)
    write_archive(tmp_path / "archive", candles, "BTCUSDT", "1m", bad_checksum_days=("2024-03-02",))
    rest_has = candles[candles["open_time"] < pd.Timestamp("2024-03-02", tz="UTC").value // 1_000_000]
    with FakeArchive(tmp_path / "archive") as fa, FakeBinance({("BTCUSDT", "1m"): rest_has}) as fb:
        cfg = config(tmp_path, crypto(), {"binance": {"base_url": fb.url, "archive_url": fa.url}})
        desc = not_retried(materialize(cfg, "2024-03-01", "2024-03-02", "BTCUSDT"))
        rest_calls = fb.klines_requests
        archive_calls = fa.count()
    assert rest_calls == 2 and archive_calls == 4  # one attempt: 2 zips + 2 CHECKSUMs, 2 REST pages
    assert "ChecksumMismatchError" in desc and "BTCUSDT-1m-2024-03-02.zip" in desc
    assert "REST has no BTCUSDT 1m candles for 2024-03-02" in desc and "cached copy" not in desc


def test_one_bad_archive_day_is_fetched_over_rest_and_the_range_is_stored(tmp_path: Path) -> None:
    candles = generate_klines("2024-03-01", 5 * 1440, seed=3)
    write_archive(tmp_path / "archive", candles, "BTCUSDT", "1m", bad_checksum_days=("2024-03-03",))
    with FakeArchive(tmp_path / "archive") as fa, FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        cfg = config(tmp_path, crypto(), {"binance": {"base_url": fb.url, "archive_url": fa.url}})
        result = materialize(cfg, "2024-03-01", "2024-03-05", "BTCUSDT")
        assert result.success
        rest_days = {pd.Timestamp(int(r["params"]["startTime"]), unit="ms").date() for r in fb.received}
    assert rest_days == {date(2024, 3, 3)}  # only the bad day went to REST

    feed = cfg.feeds[0]
    stored = (
        Router(cfg)
        .read(
            table_ref(feed, "raw", "1m"),
            PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=date(2024, 3, 1), end=date(2024, 3, 5)),
        )
        .sort_values("ts", ignore_index=True)
    )
    assert stored["open_time"].tolist() == candles["open_time"].tolist()  # all 5 days, every candle
    day = stored["ts"].dt.date
    bad = stored[day == date(2024, 3, 3)]
    assert len(bad) == 1440 and (bad["source"] == "binance").all()
    assert (stored.loc[day != date(2024, 3, 3), "source"] == "binance_archive").all()
    # The replaced day is exactly what REST serves for it.
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb2:
        from data_puller_dagster.sources.binance import BinanceRest

        r = BinanceRest(fb2.url, backoff_base=0.001)
        direct = r.fetch_range(
            "BTCUSDT", "1m", pd.Timestamp("2024-03-03", tz="UTC"), pd.Timestamp("2024-03-04", tz="UTC")
        )
        r.close()
    cols = [c for c in direct.columns if c != "fetched_at"]
    pd.testing.assert_frame_equal(bad[cols].reset_index(drop=True), direct[cols].reset_index(drop=True))

    mats = [
        e.event_specific_data.materialization
        for e in result.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION"
    ]
    assert len(mats) == 5 and {m.asset_key for m in mats} == {asset_key(feed, "raw", "1m")}
    assert all(m.metadata["archive_checksum_fallback_days"].value == 1 for m in mats)
    logs = [e.user_message for e in INSTANCES[result.run_id].all_logs(result.run_id)]
    assert any("2024-03-03" in m and "BTCUSDT-1m-2024-03-03.zip" in m and "over REST" in m for m in logs)
