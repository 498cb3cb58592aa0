"""Binance REST adapter against FakeBinance (a real local HTTP server): paging, parsing, every error path."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.sources import (
    BINANCE_RAW_DTYPES,
    InvalidRequestError,
    IpBannedError,
    MalformedResponseError,
    RateLimitedError,
    TransientSourceError,
    raw_empty,
)
from data_puller_dagster.sources.base import KLINE_FIELDS
from data_puller_dagster.sources.ratelimit import MinuteBudget
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines, wire_strings
from data_puller_dagster_tests.sources.conftest import FIXTURES, binance, utc

DTYPES = {c: str(pd.Series(dtype=d).dtype) for c, d in BINANCE_RAW_DTYPES.items()}


def assert_raw_dtypes(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(BINANCE_RAW_DTYPES)
    assert {c: str(t) for c, t in df.dtypes.items()} == DTYPES


def assert_same_as_wire(df: pd.DataFrame, source: pd.DataFrame) -> None:
    """Every field equals what the server sent (strings compared as text)."""
    wire = wire_strings(source).reset_index(drop=True)
    got = df[KLINE_FIELDS].reset_index(drop=True)
    for c in ("open_time", "close_time", "trades"):
        np.testing.assert_array_equal(got[c].to_numpy(), wire[c].astype("int64").to_numpy())
    for c in set(KLINE_FIELDS) - {"open_time", "close_time", "trades"}:
        assert got[c].astype(object).tolist() == wire[c].astype(str).tolist(), c


def test_thirty_days_of_1m_in_44_pages_each_candle_exactly_once() -> None:
    candles = generate_klines("2024-03-01", 30 * 1440)
    with FakeBinance({("BTCUSDT", "1m"): candles}, latency=0.01) as fb:
        a = binance(fb.url, max_concurrency=8)
        try:
            df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-31"))
        finally:
            a.close()
        assert fb.klines_requests == 44
        assert fb.max_in_flight > 1  # pages really ran concurrently
    assert len(df) == 43_200
    assert df["open_time"].is_unique and df["ts"].is_monotonic_increasing
    assert_raw_dtypes(df)
    assert_same_as_wire(df, candles)
    assert (
        (df["source"] == "binance").all()
        and (df["symbol"] == "BTCUSDT").all()
        and (df["timeframe"] == "1m").all()
    )
    assert (df["ts"] == pd.to_datetime(df["open_time"], unit="ms", utc=True)).all()
    assert (df["fetched_at"] >= df["ts"].max()).all()


def test_recorded_ethbtc_klines_parse_exactly() -> None:
    body = json.loads((FIXTURES / "binance" / "klines_ETHBTC_1m_2025-06-21_chainslake.json").read_text())
    frame = pd.DataFrame(body, columns=KLINE_FIELDS)
    with FakeBinance({("ETHBTC", "1m"): frame}) as fb:
        a = binance(fb.url)
        df = a.fetch("ETHBTC", "1m", utc("2025-06-21 03:00"), utc("2025-06-21 04:00"))
        a.close()
    assert len(df) == 10
    assert df["open_time"].tolist() == [r[0] for r in body]
    assert df["close_time"].tolist() == [r[6] for r in body]
    assert df["trades"].tolist() == [r[8] for r in body]
    for i, c in enumerate(KLINE_FIELDS):
        if c not in ("open_time", "close_time", "trades"):
            assert df[c].tolist() == [r[i] for r in body], c
    zero = df[df["trades"] == 0]
    assert len(zero) == 5 and (zero["volume"] == "0.00000000").all()  # kept, distinguishable from missing
    assert (zero["open"] == zero["close"]).all()


def test_empty_range_and_future_range_return_typed_empty_frame() -> None:
    candles = generate_klines("2024-03-01", 60)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        a = binance(fb.url)
        empty = a.fetch("BTCUSDT", "1m", utc("2024-02-01"), utc("2024-02-02"))
        future = a.fetch(
            "BTCUSDT",
            "1m",
            pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=2),
            pd.Timestamp.now(tz="UTC") + pd.Timedelta(days=3),
        )
        a.close()
        assert fb.klines_requests == 2  # the past range is asked once; the future one never
    assert empty.empty and future.empty
    assert_raw_dtypes(empty)
    assert_raw_dtypes(raw_empty("binance"))


def test_never_requests_past_now() -> None:
    now = utc("2024-03-01 10:00:30")
    candles = generate_klines("2024-03-01", 1440)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        a = binance(fb.url, now=lambda: now)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-02"))
        a.close()
        ends = [int(r["params"]["endTime"]) for r in fb.received]
    assert max(ends) <= now.value // 1_000_000
    assert df["ts"].max() == utc("2024-03-01 10:00")  # the open candle is included, nothing later
    assert len(df) == 601


def test_duplicates_across_pages_are_kept_and_sorted() -> None:
    candles = generate_klines("2024-03-01", 3000)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.duplicates = 5
        a = binance(fb.url)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01") + pd.Timedelta(minutes=3000))
        a.close()
    assert len(df) == 3000 + 2 * 5  # pages 2 and 3 each repeat 5 candles
    assert df["open_time"].nunique() == 3000
    assert df["ts"].is_monotonic_increasing


def test_server_capping_limit_below_window_is_followed_not_lost() -> None:
    candles = generate_klines("2024-03-01", 2500)
    with FakeBinance({("BTCUSDT", "1m"): candles}, max_limit=400) as fb:
        a = binance(fb.url, page_limit=400)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-02"))
        a.close()
    assert len(df) == 1440 and df["open_time"].is_unique


def test_429_honours_retry_after_then_succeeds() -> None:
    candles = generate_klines("2024-03-01", 100)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.throttle(1, retry_after=1)
        a = binance(fb.url)
        t = time.monotonic()
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 01:40"))
        elapsed = time.monotonic() - t
        a.close()
        assert fb.klines_requests == 2
    assert len(df) == 100
    assert elapsed >= 1.0  # waited the Retry-After, not the millisecond backoff


def test_429_forever_raises_rate_limited_after_bounded_retries() -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 10)}) as fb:
        fb.throttle(100, retry_after=0)
        a = binance(fb.url, max_retries=2)
        with pytest.raises(RateLimitedError, match=r"binance BTCUSDT 1m 2024-03-01T00:00:00\+00:00.*429"):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:10"))
        a.close()
        assert fb.klines_requests == 3


def test_418_stops_at_once_and_says_until_when() -> None:
    until_ms = 1660090423228
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 5000)}) as fb:
        fb.ban(until_ms)
        a = binance(fb.url, now=lambda: utc("2022-08-10"))
        with pytest.raises(IpBannedError) as ei:
            a.fetch("BTCUSDT", "1m", utc("2022-08-01"), utc("2022-08-02"))
        assert ei.value.until == pd.Timestamp(until_ms, unit="ms", tz="UTC").to_pydatetime()
        assert "banned until 2022-08-10T00:13:43" in str(ei.value)
        first = fb.klines_requests
        assert first <= a.rest.max_concurrency  # no retries: at most the pages already in flight


def test_418_ban_blocks_later_requests_through_the_shared_budget() -> None:
    budget = MinuteBudget(6000, 0.8, used_header="X-MBX-USED-WEIGHT-1M", provider="binance")
    until_ms = int((pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)).value // 1_000_000)
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 50)}) as fb:
        fb.ban(until_ms)
        a = binance(fb.url, budget=budget)
        with pytest.raises(IpBannedError):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        fb.unban()
        b = binance(fb.url, budget=budget)  # a new adapter sharing the process budget
        with pytest.raises(IpBannedError, match="banned until"):
            b.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        assert fb.klines_requests == 1


def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    candles = generate_klines("2024-03-01", 100)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.server_errors(2, 503)
        a = binance(fb.url, max_retries=3)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 01:40"))
        assert a.rest.http.retries == 2
        a.close()
        assert fb.klines_requests == 3
    assert len(df) == 100


def test_5xx_exhausted_fails_the_whole_fetch_naming_symbol_range_cause() -> None:
    candles = generate_klines("2024-03-01", 5000)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.server_errors(50, 502)
        a = binance(fb.url, max_retries=1, max_concurrency=1)
        with pytest.raises(TransientSourceError) as ei:
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-02"))
        a.close()
    msg = str(ei.value)
    assert (
        "binance BTCUSDT 1m 2024-03-01" in msg and "HTTP 502" in msg and "gave up after 2 attempt(s)" in msg
    )


def test_timeout_is_retried() -> None:
    candles = generate_klines("2024-03-01", 100)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.slow(1, 1.0)
        a = binance(fb.url, timeout=0.3)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 01:40"))
        a.close()
    assert len(df) == 100 and a.rest.http.retries == 1


def test_invalid_symbol_is_not_retried_and_names_the_symbol() -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 10)}) as fb:
        fb.invalid_symbols.add("NOPEUSDT")
        a = binance(fb.url)
        with pytest.raises(
            InvalidRequestError, match=r"code -1121: Invalid symbol\..*'NOPEUSDT' does not exist"
        ):
            a.fetch("NOPEUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:10"))
        a.close()
        assert fb.klines_requests == 1


def test_malformed_row_fails_instead_of_dropping_it() -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 100)}) as fb:
        fb.malformed = True
        a = binance(fb.url)
        with pytest.raises(MalformedResponseError, match=r"binance BTCUSDT 1m .*1 kline row\(s\)"):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 01:40"))
        a.close()


def test_weight_header_slows_before_the_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Server says the IP already used 95 of 100: the next request waits for the next window."""
    budget = MinuteBudget(
        100, 0.8, used_header="X-MBX-USED-WEIGHT-1M", window_seconds=1.0, provider="binance"
    )
    candles = generate_klines("2024-03-01", 3000)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.weight_offset = 93
        a = binance(fb.url, budget=budget, max_concurrency=1)
        df = a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01") + pd.Timedelta(minutes=3000))
        a.close()
    assert len(df) == 3000
    assert budget.waited_seconds > 0.5  # two of the three pages had to wait for a fresh window


def test_invalid_symbol_is_refused_before_any_request() -> None:
    with FakeBinance() as fb:
        a = binance(fb.url)
        with pytest.raises(ValueError, match="not a valid symbol"):
            a.fetch("../etc", "1m", utc("2024-03-01"), utc("2024-03-02"))
        assert fb.count() == 0


def test_retries_are_logged_with_what_was_requested(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 10)}) as fb:
        fb.server_errors(1)
        a = binance(fb.url)
        a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:10"))
        a.close()
    assert "retry 1/3" in caplog.text  # the retry was logged with what was requested
