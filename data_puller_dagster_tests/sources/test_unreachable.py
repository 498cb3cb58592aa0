"""Hosts that cannot be reached fail at once with one clear line; a host that never answers is bounded.

Real sockets only: a name under the reserved `.invalid` TLD (never resolves), a port nothing listens
on (connection refused) and a server that accepts and never answers (fakes/silent.py).
"""

from __future__ import annotations

import pandas as pd
import pytest

from data_puller_dagster.config import BinanceSourceConfig, TwelveDataSourceConfig
from data_puller_dagster.sources import TransientSourceError, UnreachableError
from data_puller_dagster.sources.binance import BinanceAdapter
from data_puller_dagster.sources.twelvedata import TwelveDataAdapter
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.fakes.silent import UNRESOLVABLE_URL, SilentServer, refused_url
from data_puller_dagster_tests.sources.conftest import rest, utc

KEY = "td-secret-key-0123456789"
DAY = (utc("2024-03-01"), utc("2024-03-02"))


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text, text
    return text


def test_unresolvable_binance_host_fails_at_once_naming_host_and_setting() -> None:
    r = rest(UNRESOLVABLE_URL, max_retries=5)
    with pytest.raises(UnreachableError) as ei:
        r.fetch_range("BTCUSDT", "1m", *DAY)
    msg = one_line(ei.value)
    assert "cannot reach no-such-host.invalid: name does not resolve" in msg
    assert "BINANCE_BASE_URL" in msg and "sources.binance.base_url" in msg and "BTCUSDT" in msg
    assert not ei.value.retryable
    assert r.http.retries == 0 and r.http.requests_sent <= 2  # one try per page (the day has 2), no retry


def test_refused_connection_fails_at_once() -> None:
    url = refused_url()
    r = rest(url, max_retries=5)
    with pytest.raises(UnreachableError) as ei:
        r.fetch_range("BTCUSDT", "1m", *DAY)
    msg = one_line(ei.value)
    assert f"cannot reach {url.removeprefix('http://')}: connection refused" in msg
    assert "BINANCE_BASE_URL" in msg
    assert r.http.retries == 0


def test_twelvedata_unreachable_names_its_setting_and_never_the_key() -> None:
    cfg = TwelveDataSourceConfig(base_url=UNRESOLVABLE_URL, api_key=KEY, max_retries=5)
    td = TwelveDataAdapter.from_config(cfg, backoff_base=0.001)
    try:
        with pytest.raises(UnreachableError) as ei:
            td.fetch("EUR/USD", "1h", utc("2024-03-01").to_pydatetime(), utc("2024-03-02").to_pydatetime())
    finally:
        td.close()
    msg = one_line(ei.value)
    assert "TWELVEDATA_BASE_URL" in msg and "name does not resolve" in msg and KEY not in msg
    assert td.http.retries == 0


def test_unreachable_archive_names_the_archive_setting() -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 1440)}) as fb:
        cfg = BinanceSourceConfig(base_url=fb.url, archive_url=refused_url(), max_retries=5)
        adapter = BinanceAdapter.from_config(cfg, backoff_base=0.001)
        try:
            with pytest.raises(UnreachableError) as ei:
                adapter.fetch("BTCUSDT", "1m", DAY[0].to_pydatetime(), DAY[1].to_pydatetime())
        finally:
            adapter.close()
        assert fb.klines_requests == 0  # nothing was half-fetched over REST
    msg = one_line(ei.value)
    assert "BINANCE_ARCHIVE_URL" in msg and "connection refused" in msg


def test_silent_host_is_bounded_by_read_timeout_and_max_retry_seconds() -> None:
    with SilentServer() as s:
        r = rest(s.url, timeout=0.2, connect_timeout=0.2, max_retries=20, max_retry_seconds=1.0,
                 backoff_base=0.05, max_concurrency=1)  # fmt: skip
        with pytest.raises(TransientSourceError) as ei:
            r.fetch_range("BTCUSDT", "1m", DAY[0], DAY[0] + pd.Timedelta(minutes=10))
    msg = one_line(ei.value)
    assert ei.value.retryable
    assert "Read timed out" in msg and "max_retry_seconds=1" in msg
    # 20 retries were allowed; the 1 s retry budget with 0.2 s reads stops well before them.
    assert 2 <= r.http.requests_sent <= 6, r.http.requests_sent


def test_config_keys_for_timeouts_and_retry_bound() -> None:
    b = BinanceSourceConfig()
    assert (b.connect_timeout_seconds, b.timeout_seconds, b.max_retry_seconds) == (5.0, 30.0, 120.0)
    t = TwelveDataSourceConfig(connect_timeout_seconds=2, max_retry_seconds=30)
    td = TwelveDataAdapter.from_config(t)
    assert (td.http.connect_timeout, td.http.timeout, td.http.max_retry_seconds) == (2.0, 30.0, 30.0)
    td.close()
