"""Twelve Data adapter against FakeTwelveData (real local HTTP): paging, fixtures, both error modes, key hygiene."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.config import TwelveDataSourceConfig
from data_puller_dagster.sources import (
    TWELVEDATA_RAW_DTYPES,
    AuthenticationError,
    InvalidRequestError,
    LocalDataMissingError,
    RateLimitedError,
    SourceError,
    TransientSourceError,
)
from data_puller_dagster.sources.ratelimit import MinuteBudget
from data_puller_dagster.sources.twelvedata import (
    TwelveDataAdapter,
    parse_time_series_body,
    seconds_to_next_minute,
)
from data_puller_dagster_tests.fakes.twelvedata import FakeTwelveData, generate_time_series
from data_puller_dagster_tests.sources.conftest import DEMO, FIXTURES, utc

KEY = "td-secret-KEY-4242-abcdef"
TD = FIXTURES / "twelvedata"
ERRORS = json.loads((TD / "error_bodies_observed.json").read_text())


def adapter(url: str, key: str | None = KEY, **kw: object) -> TwelveDataAdapter:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("max_retries", 2)
    kw.setdefault("minute_wait", lambda: 0.05)
    kw.setdefault("budget", MinuteBudget(1000, provider="twelvedata"))
    return TwelveDataAdapter(url, key, **kw)  # type: ignore[arg-type]


def assert_dtypes(df: pd.DataFrame) -> None:
    assert list(df.columns) == list(TWELVEDATA_RAW_DTYPES)
    assert {c: str(t) for c, t in df.dtypes.items()} == {
        c: str(pd.Series(dtype=d).dtype) for c, d in TWELVEDATA_RAW_DTYPES.items()
    }


def test_recorded_aapl_body_served_and_parsed_exactly() -> None:
    body = json.loads((TD / "time_series_AAPL_1min_2023-08-24_go-twelvedata.json").read_text())
    values = pd.DataFrame(body["values"])
    with FakeTwelveData({("AAPL", "1min"): values}, api_key=KEY) as ft:
        a = adapter(ft.url)
        df = a.fetch("AAPL", "1m", utc("2023-08-24 10:00"), utc("2023-08-24 12:00"))
        a.close()
    assert_dtypes(df)
    asc = body["values"][::-1]  # recorded newest first; the adapter asks order=asc and sorts by ts
    assert len(df) == 30
    for c in ("datetime", "open", "high", "low", "close", "volume"):
        assert df[c].tolist() == [v[c] for v in asc], c
    assert df["ts"].iloc[0] == utc("2023-08-24 10:40") and df["ts"].is_monotonic_increasing


def test_forex_daily_body_has_null_volume_and_midnight_ts() -> None:
    batch = json.loads((TD / "batch_time_series_forex_1day_2023-08-04.json").read_text())
    df = parse_time_series_body(batch["USD/EUR"], "USD/EUR", "1d", utc("2023-08-05"), "test")
    assert_dtypes(df)
    assert df["volume"].isna().all() and len(df) == 4
    assert df["datetime"].tolist() == [v["datetime"] for v in batch["USD/EUR"]["values"]]
    assert sorted(df["ts"].tolist()) == [utc(f"2023-08-0{d}") for d in (1, 2, 3, 4)]


def test_unparseable_datetime_is_kept_as_nat() -> None:
    body = {"values": [{"datetime": "2024-01-02 10:00:00", "open": "1", "high": "1", "low": "1", "close": "1"},
                       {"datetime": "not a date", "open": "1", "high": "1", "low": "1", "close": "1"}], "status": "ok"}  # fmt: skip
    df = parse_time_series_body(body, "EUR/USD", "1h", utc("2024-01-03"), "test")
    assert len(df) == 2 and df["ts"].isna().sum() == 1 and df["datetime"].iloc[1] == "not a date"


def test_paging_by_time_window_many_pages_each_bar_once() -> None:
    series = generate_time_series("2022-01-03", 2 * 8760, "1h", volume=False, weekdays_only=True)
    with FakeTwelveData({("EUR/USD", "1h"): series}, api_key=KEY) as ft:
        a = adapter(ft.url, outputsize=500, max_concurrency=4)
        df = a.fetch("EUR/USD", "1h", utc("2022-01-03"), utc("2024-01-01"))
        a.close()
        params = [r["params"] for r in ft.received]
    assert len(params) == 35  # 728 days x 24 h / 500 per window, one request each
    assert {p["timezone"] for p in params} == {"UTC"} and {p["order"] for p in params} == {"asc"}
    assert {p["interval"] for p in params} == {"1h"} and {p["outputsize"] for p in params} == {"500"}
    inside = series[pd.to_datetime(series["datetime"]) < pd.Timestamp("2024-01-01")]
    assert df["datetime"].tolist() == inside["datetime"].tolist()  # every bar exactly once, none truncated
    assert df["volume"].isna().all()


def test_key_only_in_authorization_header_never_in_url() -> None:
    with FakeTwelveData({("EUR/USD", "1h"): generate_time_series("2024-01-01", 48)}, api_key=KEY) as ft:
        a = adapter(ft.url)
        a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        a.close()
        assert ft.received
        for r in ft.received:
            assert KEY not in r["raw_path"] and "apikey" not in r["query"].lower()
            assert r["headers"]["Authorization"] == f"apikey {KEY}"
    assert KEY not in repr(a)


@pytest.mark.parametrize("mode", ["body", "status"])
def test_bad_key_raises_authentication_error_without_the_key(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeTwelveData(
        {("EUR/USD", "1h"): generate_time_series("2024-01-01", 48)}, api_key="the-right-key", error_mode=mode
    ) as ft:
        a = adapter(ft.url, key=KEY)
        with pytest.raises(AuthenticationError) as ei:
            a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        a.close()
        assert ft.time_series_requests == 1  # not retried
    assert "bad or missing TWELVEDATA_API_KEY" in str(ei.value) and "EUR/USD" in str(ei.value)
    for text in (str(ei.value), repr(ei.value), caplog.text):
        assert KEY not in text


def test_key_never_in_logs_or_error_for_a_failing_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeTwelveData({("EUR/USD", "1h"): generate_time_series("2024-01-01", 48)}, api_key=KEY) as ft:
        ft.server_errors(10, 502)
        ft.respond_with(
            {"code": 500, "message": f"internal error for apikey {KEY}", "status": "error"}
        )  # an echoing server
        a = adapter(ft.url, max_retries=2)
        with pytest.raises(TransientSourceError) as ei:
            a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        a.close()
    assert "gave up after 3 attempt(s)" in str(ei.value)
    assert "retry 1/2" in caplog.text
    for text in (str(ei.value), repr(ei.value), caplog.text):
        assert KEY not in text


def test_missing_key_fails_before_any_request() -> None:
    with FakeTwelveData(api_key=KEY) as ft:
        a = adapter(ft.url, key=None)
        with pytest.raises(AuthenticationError, match="bad or missing TWELVEDATA_API_KEY"):
            a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-02"))
        assert ft.count() == 0


@pytest.mark.parametrize("mode", ["body", "status"])
@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("invalid_interval_400", InvalidRequestError, r"Invalid \*\*interval\*\*"),
        ("symbol_not_found_400", InvalidRequestError, r"EUR/USD.*symbol.*not found|not found.*'EUR/USD'"),
        ("bad_apikey_401", AuthenticationError, "bad or missing TWELVEDATA_API_KEY"),
        ("daily_credits_429_prefix", RateLimitedError, "daily API credits are spent"),
    ],
)
def test_recorded_error_bodies_map_to_typed_errors(
    mode: str, name: str, error: type[SourceError], match: str
) -> None:
    body = dict(ERRORS[name])
    if "message_prefix" in body:
        body["message"] = body.pop("message_prefix")
    with FakeTwelveData(
        {("EUR/USD", "1h"): generate_time_series("2024-01-01", 48)}, api_key=KEY, error_mode=mode
    ) as ft:
        ft.respond_with(body)
        a = adapter(ft.url)
        with pytest.raises(error, match=match):
            a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        a.close()
        assert ft.time_series_requests == 1  # none of these is retried


@pytest.mark.parametrize("mode", ["body", "status"])
def test_no_data_on_dates_is_an_empty_result(mode: str) -> None:
    with FakeTwelveData(
        {("AAPL", "1day"): generate_time_series("2024-01-01", 5, "1d")}, api_key=KEY, error_mode=mode
    ) as ft:
        ft.respond_with(ERRORS["no_data_for_dates_400"])
        a = adapter(ft.url)
        df = a.fetch(
            "AAPL", "1d", utc("2024-01-06"), utc("2024-01-08")
        )  # the recorded body, then the fake's own
        a.close()
    assert df.empty
    assert_dtypes(df)


@pytest.mark.parametrize("mode", ["body", "status"])
def test_minute_429_waits_for_next_minute_then_succeeds(mode: str) -> None:
    series = generate_time_series("2024-01-01", 48)
    with FakeTwelveData({("EUR/USD", "1h"): series}, api_key=KEY, error_mode=mode) as ft:
        ft.respond_with(ERRORS["minute_credits_429"], n=2)
        a = adapter(ft.url, minute_wait=lambda: 0.3)
        t = time.monotonic()
        df = a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        assert time.monotonic() - t >= 0.6
        a.close()
        assert ft.time_series_requests == 3
    assert df["datetime"].tolist() == series["datetime"].tolist()


def test_minute_429_forever_raises_rate_limited() -> None:
    with FakeTwelveData({("EUR/USD", "1h"): generate_time_series("2024-01-01", 48)}, api_key=KEY) as ft:
        ft.throttle(10)
        a = adapter(ft.url, max_retries=2)
        with pytest.raises(RateLimitedError, match=r"twelvedata EUR/USD 1h 2024-01-01.*minute credits"):
            a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-03"))
        assert ft.time_series_requests == 3


def test_seconds_to_next_minute() -> None:
    assert seconds_to_next_minute(120.0) == pytest.approx(60.5)
    assert seconds_to_next_minute(179.5) == pytest.approx(1.0)


def test_credit_budget_spreads_requests_over_windows() -> None:
    budget = MinuteBudget(2, provider="twelvedata", window_seconds=0.5)
    series = generate_time_series("2024-01-01", 24 * 10)
    with FakeTwelveData({("EUR/USD", "1h"): series}, api_key=KEY) as ft:
        a = adapter(ft.url, outputsize=48, budget=budget, max_concurrency=4)
        df = a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-11"))  # 5 pages, 2 per window
        a.close()
    assert len(df) == 240
    assert budget.waited_seconds > 0.4


def test_file_url_reads_demo_eurusd_within_range() -> None:
    a = TwelveDataAdapter((DEMO / "twelvedata").as_uri(), None)
    df = a.fetch("EUR/USD", "1h", utc("2017-05-01"), utc("2017-05-08"))
    assert_dtypes(df)
    assert df["ts"].min() >= utc("2017-05-01") and df["ts"].max() < utc("2017-05-08")
    assert len(df) == 24 * 5  # Mon 1 .. Fri 5 May; the weekend is absent in the data
    assert df["volume"].isna().all()
    body = json.loads((DEMO / "twelvedata/time_series/EURUSD/1h.json").read_text())
    first = next(v for v in body["values"] if v["datetime"] == "2017-05-01 00:00:00")
    assert df.iloc[0][["datetime", "open", "high", "low", "close"]].tolist() == [
        first[c] for c in ("datetime", "open", "high", "low", "close")
    ]


def test_file_url_missing_file_names_the_path(tmp_path: Path) -> None:
    a = TwelveDataAdapter(tmp_path.as_uri(), None)
    with pytest.raises(LocalDataMissingError, match=r"time_series/GBPUSD/1h\.json"):
        a.fetch("GBP/USD", "1h", utc("2024-01-01"), utc("2024-01-02"))


def test_from_config_reads_key_from_secret() -> None:
    with FakeTwelveData({("EUR/USD", "1h"): generate_time_series("2024-01-01", 24)}, api_key=KEY) as ft:
        cfg = TwelveDataSourceConfig(base_url=ft.url, api_key=KEY, max_retries=0)
        a = TwelveDataAdapter.from_config(cfg)
        df = a.fetch("EUR/USD", "1h", utc("2024-01-01"), utc("2024-01-02"))
        a.close()
    assert len(df) == 24 and KEY not in repr(a)
