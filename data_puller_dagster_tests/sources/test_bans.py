"""Persisted bans (sources/bans.py): a 418 seen by one adapter stops every other one that shares the
data_dir - a fresh budget and a fresh store object stand for another process - before any request."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.sources import IpBannedError
from data_puller_dagster.sources.bans import BanStateError, BanStore, ban_key
from data_puller_dagster.sources.ratelimit import MinuteBudget
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines
from data_puller_dagster_tests.sources.conftest import binance, utc


def fresh_budget() -> MinuteBudget:
    return MinuteBudget(6000, 0.8, used_header="X-MBX-USED-WEIGHT-1M", provider="binance")


def test_418_ban_is_persisted_and_honoured_by_another_adapter(tmp_path: Path) -> None:
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 50)}) as fb:
        fb.ban_for(30)
        a = binance(fb.url, budget=fresh_budget(), bans=BanStore.for_data_dir(tmp_path))
        with pytest.raises(IpBannedError, match="HTTP 418, IP banned until") as first:
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        b = binance(fb.url, budget=fresh_budget(), bans=BanStore.for_data_dir(tmp_path))
        with pytest.raises(IpBannedError, match=r"BTCUSDT 1m 2024-03-01.*banned until") as second:
            b.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        assert fb.klines_requests == 1 and fb.requests_while_banned == []
        assert first.value.until is not None and first.value.until == second.value.until
        assert abs(first.value.until.timestamp() * 1000 - fb.ban_ends_ms) < 1
    state = json.loads((tmp_path / ".state" / "bans.json").read_text())
    assert (
        list(state) == [ban_key("binance", fb.url)] and "418" in state[ban_key("binance", fb.url)]["reason"]
    )


def test_418_without_an_end_assumes_the_shortest_ban(tmp_path: Path) -> None:
    store = BanStore.for_data_dir(tmp_path)
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 50)}) as fb:
        fb.ban(1)  # a body timestamp in 1970: no usable end, no Retry-After
        a = binance(fb.url, budget=fresh_budget(), bans=store)
        with pytest.raises(IpBannedError, match="assuming 2 minutes"):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
    end = store.until(ban_key("binance", fb.url))
    assert end is not None and 100 < end - time.time() <= 120


def test_expired_ban_does_not_block_and_later_end_wins(tmp_path: Path) -> None:
    store = BanStore.for_data_dir(tmp_path)
    now = time.time()
    store.record("binance h:1", now + 60, "418")
    store.record("binance h:1", now + 10, "418 again, shorter")  # never shortens a recorded ban
    store.record("binance h:2", now - 1, "over")
    assert store.until("binance h:1") == pytest.approx(now + 60)
    assert store.until("binance h:2") is None
    assert BanStore.for_data_dir(tmp_path).until("binance h:1") == pytest.approx(now + 60)


def test_unreadable_state_file_stops_requests_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / ".state" / "bans.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-03-01", 50)}) as fb:
        a = binance(fb.url, budget=fresh_budget(), bans=BanStore(path))
        with pytest.raises(BanStateError, match=r"bans.json cannot be read.*Delete the file if no ban"):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        assert fb.klines_requests == 0


def test_after_the_ban_ends_requests_go_through(tmp_path: Path) -> None:
    candles = generate_klines("2024-03-01", 50)
    with FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        fb.ban_for(1)
        a = binance(fb.url, budget=fresh_budget(), bans=BanStore.for_data_dir(tmp_path))
        with pytest.raises(IpBannedError):
            a.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        time.sleep(max(0.0, fb.ban_ends_ms / 1000 - time.time()) + 0.05)
        b = binance(fb.url, budget=fresh_budget(), bans=BanStore.for_data_dir(tmp_path))
        df = b.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-01 00:50"))
        assert fb.requests_while_banned == []
    assert df["open_time"].tolist() == candles["open_time"].tolist()
    assert (df["ts"] >= pd.Timestamp("2024-03-01", tz="UTC")).all()
