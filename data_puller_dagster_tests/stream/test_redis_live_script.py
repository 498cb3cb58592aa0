"""The Redis destination's live path (one server-side script per chunk), on the real local Redis:
what it writes equals what the MULTI/EXEC path writes, across chunks and symbols; a re-sent candle is
refused by Redis and counted; a key of the wrong type stops the batch before anything is written; a user
who may not run scripts gets the MULTI/EXEC path instead; MAXLEN trims."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pandas as pd
import pytest
import redis

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.io.destinations.redis_stream_store import RedisStreamDestination, RedisStreamOptions
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.symbols import partition_key
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster_tests.io.test_stream_destinations import REDIS_URL
from data_puller_dagster_tests.stream.conftest import DAY, redis_entries
from data_puller_dagster_tests.stream.test_redis_live import FEED

SYMBOLS = ["BTCUSDT", "ETHUSDT", "XRPUSDT"]
PART = PartitionSlice({partition_key(s): s for s in SYMBOLS}, DAY.date(), DAY.date())
TABLE = table_ref(FEED, "live", "1m")


def burst(minutes: range, final_last: bool = True) -> pd.DataFrame:
    """Every symbol's candles of these minutes; the last minute still forming unless `final_last`."""
    rows = [(s, m) for s in SYMBOLS for m in minutes]
    last = minutes[-1]
    df = pd.DataFrame({
        "ts": [DAY + pd.Timedelta(minutes=m) for _, m in rows], "symbol": [s for s, _ in rows],
        "asset_class": "crypto", "timeframe": "1m", "source": "binance_ws", "open": 10.0, "high": 12.0,
        "low": 9.0, "close": [10.0 + m / 100 + i for i, (_, m) in enumerate(rows)], "volume": 1.0, "trades": 3,
        "quote_volume": 10.0, "fetched_at": pd.Timestamp.now(tz="UTC"),
        "is_final": [final_last or m != last for _, m in rows],
    })  # fmt: skip
    return df.astype(CANONICAL_DTYPES)


def dest(prefix: str, url: str = REDIS_URL, **opts) -> RedisStreamDestination:
    return RedisStreamDestination(RedisStreamOptions(
        url=url, stream=prefix + ":{table}:{symbol_key}", updates_stream=prefix + ":{table}:{symbol_key}:u",
        **opts))  # fmt: skip


def contents(prefix: str) -> dict[str, list[tuple[str, dict]]]:
    """Every stream of the prefix: final ones with their ids, update ones without (generated)."""
    out = {}
    for s in SYMBOLS:
        out[s] = redis_entries(f"{prefix}:live_ohlcv_1m:{s}")
        out[s + ":u"] = [("*", c) for _, c in redis_entries(f"{prefix}:live_ohlcv_1m:{s}:u")]
    return out


@pytest.fixture
def noscript_url(prefix) -> Iterator[str]:
    """A Redis user who may do everything but run scripts."""
    r = redis.Redis.from_url(REDIS_URL)
    user = f"dpnoscript{os.getpid()}"
    r.acl_setuser(user, enabled=True, nopass=True, keys=["*"], commands=["+@all", "-@scripting"])
    host_part = REDIS_URL.split("://", 1)[1].rsplit("@", 1)[-1]
    yield f"redis://{user}@{host_part}"
    r.acl_deluser(user)


def test_the_script_writes_what_the_pipeline_writes(prefix, noscript_url) -> None:
    a, b = prefix + ":script", prefix + ":pipe"
    scripted, piped = dest(a, batch_size=4), dest(b, url=noscript_url, batch_size=4)  # chunks split bursts
    batches = [burst(range(0, 3), final_last=False), burst(range(2, 5), final_last=False), burst(range(4, 6))]
    for d in (scripted, piped):
        for frame in batches[:2]:
            d.publish(TABLE, frame, PART)
    md_s, md_p = scripted.publish(TABLE, batches[2], PART), piped.publish(TABLE, batches[2], PART)
    scripted.close(), piped.close()
    got, want = contents(a), contents(b)
    assert got == want
    step = 60_000
    for s in SYMBOLS:  # finals once each, at candle-time ids, in order; updates carry the whole life
        assert [i for i, _ in got[s]] == [f"{DAY.value // 10**6 + m * step}-0" for m in range(6)]
        assert len(got[s + ":u"]) == 3 + 3 + 2
    assert md_s["published"] == md_p["published"] == 6 and md_s["updates_published"] == 6
    assert md_s["batches"] == 3  # 6 finals + 6 update rows in chunks of 4: one script call each
    assert md_p["batches"] == 2  # the MULTI/EXEC path (its batches count finals only) did the other


def test_a_resent_batch_is_refused_by_redis_and_counted(prefix) -> None:
    d = dest(prefix)
    first = d.publish(TABLE, burst(range(0, 2)), PART)
    again = d.publish(TABLE, burst(range(0, 3)), PART)  # two minutes re-sent, one new
    d.close()
    assert (first["published"], first["refused_as_duplicate"]) == (6, 0)
    assert (again["published"], again["refused_as_duplicate"], again["skipped_rows"]) == (3, 6, 6)
    for s in SYMBOLS:
        assert len(redis_entries(f"{prefix}:live_ohlcv_1m:{s}")) == 3
        assert len(redis_entries(f"{prefix}:live_ohlcv_1m:{s}:u")) == 2 + 3  # at least once: re-sent rows too


def test_a_key_of_another_type_stops_the_batch_before_any_write(prefix) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    r.set(f"{prefix}:live_ohlcv_1m:XRPUSDT", "not a stream")
    d = dest(prefix)
    with pytest.raises(StorageError, match=r"XRPUSDT' is not a stream \(a string\); delete it"):
        d.publish(TABLE, burst(range(0, 2)), PART)
    d.close()
    assert r.get(f"{prefix}:live_ohlcv_1m:XRPUSDT") == b"not a stream"
    assert [k for k in r.scan_iter(f"{prefix}:*")] == [f"{prefix}:live_ohlcv_1m:XRPUSDT".encode()]


def test_maxlen_trims_the_live_streams(prefix) -> None:
    d = dest(prefix, maxlen=1)
    for m in range(0, 300, 100):  # approximate trimming works on whole nodes: write enough to see it
        d.publish(TABLE, burst(range(m, m + 100)), PART)
    d.close()
    r = redis.Redis.from_url(REDIS_URL)
    n = r.xlen(f"{prefix}:live_ohlcv_1m:BTCUSDT")
    assert 1 <= n < 300
    last = r.xrevrange(f"{prefix}:live_ohlcv_1m:BTCUSDT", count=1)[0][0].decode()
    assert last == f"{DAY.value // 10**6 + 299 * 60_000}-0"
