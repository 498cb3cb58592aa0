"""The Redis-backed shared budget (sources/shared_budget.py) against the real Redis on 127.0.0.1:6379 and
FakeBinance enforcing a scaled-down weight limit: separate processes stay under one limit together (and
do not without it), a ban or a 429 pause seen by one budget holds every other one, the used-weight header
corrects the count, and an unreachable store fails retryably without showing its password.

Redis: DATA_PULLER_TEST_REDIS_URL (default redis://127.0.0.1:6379/0). Unreachable: skip locally, FAIL
under CI=true. Keys are scoped by the fake's port (unique per test) and deleted afterwards."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pandas as pd
import pytest

from data_puller_dagster.config import BinanceSourceConfig, TwelveDataSourceConfig
from data_puller_dagster.sources.binance import BinanceAdapter
from data_puller_dagster.sources.errors import IpBannedError, TransientSourceError
from data_puller_dagster.sources.ratelimit import MinuteBudget, shared_budget
from data_puller_dagster.sources.shared_budget import SharedBudget, scope_of
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

REDIS_URL = os.environ.get("DATA_PULLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")
CANDLES = 6000  # 6 pages of 1000 per symbol
START = pd.Timestamp("2024-01-01", tz="UTC")


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as e:
        msg = f"Redis at {REDIS_URL} is unreachable ({e}); start it or set DATA_PULLER_TEST_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return REDIS_URL


@pytest.fixture
def fake(redis_url: str) -> Iterator[FakeBinance]:
    import redis

    with FakeBinance(
        {(s, "1m"): generate_klines(START, CANDLES, seed=i) for i, s in enumerate(SYMBOLS)}
    ) as fb:
        yield fb
    client = redis.Redis.from_url(redis_url)
    host = fb.url.split("//", 1)[1]
    keys = list(client.scan_iter(match=f"data_puller:budget:*:{host}:*"))
    if keys:
        client.delete(*keys)


def _config(url: str, shared: str | None, **kw: object) -> BinanceSourceConfig:
    return BinanceSourceConfig(
        base_url=url, use_archive=False, max_concurrency=4, max_retries=3, shared_budget=shared,
        weight_budget_per_minute=20, weight_safety_fraction=0.7, budget_window_seconds=1, **kw,
    )  # fmt: skip


def _pull(url: str, shared: str | None, symbols: tuple[str, ...], start: Any) -> tuple[int, str]:
    """One process's pull through the pipeline's own wiring (BinanceAdapter.from_config), begun together
    with the other process's (`start`: a barrier, so a slow spawn cannot serialize them)."""
    adapter = BinanceAdapter.from_config(_config(url, shared), backoff_base=0.01)
    kind = type(adapter.rest.budget).__name__
    start.wait(60)
    rows = 0
    try:
        for s in symbols:
            rows += len(adapter.fetch(s, "1m", START, START + pd.Timedelta(minutes=CANDLES)))
    except IpBannedError:
        return -1, kind
    finally:
        adapter.close()
    return rows, kind


def _two_processes(url: str, shared: str | None) -> list[tuple[int, str]]:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(2, mp_context=ctx) as pool:
        start = manager.Barrier(2)
        futures = [pool.submit(_pull, url, shared, half, start) for half in (SYMBOLS[:2], SYMBOLS[2:])]
        return [f.result(timeout=120) for f in futures]


@pytest.mark.parametrize("header", [True, False], ids=["with-used-weight-header", "without"])
def test_processes_share_one_weight_limit(fake: FakeBinance, redis_url: str, header: bool) -> None:
    # The limit: 20 weight per 1 s window (10 pages); each process alone would allow 14 (0.7 x 20).
    fake.enforce_weight(20, 1.0, ban_after_429s=3, ban_seconds=2)
    fake.used_weight_header = header
    started = time.monotonic()
    results = _two_processes(fake.url, redis_url)
    took = time.monotonic() - started
    assert results == [(2 * CANDLES, "SharedBudget")] * 2
    assert fake.throttled == 0 and fake.requests_while_banned == []
    assert 0 < fake.max_window_weight <= 20, fake.window_weights
    # 24 pages x 2 = 48 weight at <= 14 per window (the shared threshold): at least 4 windows
    assert len([w for w in fake.window_weights.values() if w]) >= 4 and took >= 2.5


def test_without_the_shared_budget_the_processes_overrun_it(fake: FakeBinance) -> None:
    """The control: per-process budgets, and no used-weight header to learn the other's spending from
    (as with Twelve Data, whose credits have none): each keeps to 14 per window, which alone fits a limit
    of 15, but not the two together, so 429s. (With the header, Binance's per-process budgets mostly
    follow each other and only race: 0-2 429s a run.) The limit is 15, not 20 as above: against 20, two
    processes that happen to fill alternate windows (seen: 20, 8, 20 weight) stay under it, 1 run in 5."""
    fake.enforce_weight(15, 1.0, ban_after_429s=3, ban_seconds=2)
    fake.used_weight_header = False
    results = _two_processes(fake.url, None)
    assert {kind for _, kind in results} == {"MinuteBudget"}
    assert fake.throttled > 0, fake.window_weights


def _budget(url: str, redis_url: str, **kw: object) -> SharedBudget:
    local = MinuteBudget(20, 0.7, used_header="X-MBX-USED-WEIGHT-1M", window_seconds=1, provider="binance")
    return SharedBudget.like(local, redis_url, url, **kw)


def test_a_ban_seen_by_one_worker_stops_every_other(fake: FakeBinance, redis_url: str) -> None:
    one, other = _budget(fake.url, redis_url), _budget(fake.url, redis_url)  # two connections, one scope
    fake.ban_for(3)
    a = BinanceAdapter.from_config(_config(fake.url, None), budget=one, backoff_base=0.01)
    b = BinanceAdapter.from_config(_config(fake.url, None), budget=other, backoff_base=0.01)
    with pytest.raises(IpBannedError):
        a.fetch(SYMBOLS[0], "1m", START, START + pd.Timedelta(hours=1))
    sent = fake.klines_requests
    with pytest.raises(IpBannedError, match="shared budget store redis://127.0.0.1:6379/0"):
        b.fetch(SYMBOLS[1], "1m", START, START + pd.Timedelta(hours=1))
    assert fake.klines_requests == sent == 1 and fake.requests_while_banned == []
    assert other.banned_until() is not None
    a.close(), b.close()


def test_a_429_pause_holds_every_worker(fake: FakeBinance, redis_url: str) -> None:
    one, other = _budget(fake.url, redis_url), _budget(fake.url, redis_url)
    one.pause(0.8)
    started = time.monotonic()
    other.acquire(2)
    assert time.monotonic() - started >= 0.7


class _Waited(Exception):
    pass


def test_the_used_weight_header_corrects_the_count(fake: FakeBinance, redis_url: str) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        raise _Waited

    local = MinuteBudget(
        20, 0.7, used_header="X-MBX-USED-WEIGHT-1M", window_seconds=30, provider="binance", sleep=sleep
    )
    budget = SharedBudget.like(local, redis_url, fake.url)
    budget.acquire(2)
    budget.observe({"X-MBX-USED-WEIGHT-1M": "12"})  # other clients on the IP spent 10 more
    assert budget.used == 12
    with pytest.raises(_Waited):
        budget.acquire(4)  # 12 + 4 > 14: held until the next window
    assert 0 < waits[0] <= 30.1


def test_a_reservation_at_the_window_edge_counts_in_the_next_window_too(fake: FakeBinance, redis_url: str) -> None:
    """The window is Redis's clock: wait (on it) for the last 0.25 s of a 1 s window, reserve, and the
    next window's key holds the reservation too; a reservation mid-window does not reach it."""
    budget = _budget(fake.url, redis_url)
    assert budget.edge_seconds == 0.25

    def redis_now() -> float:
        sec, usec = budget.client.time()
        return sec + usec / 1e6

    now = redis_now()
    time.sleep((math.floor(now) + 0.3 - now) % 1.0)  # 0.3 s into a window: not the edge
    budget.acquire(2)
    wid = math.floor(redis_now())
    assert budget.client.get(f"{budget.scope}:w:{wid + 1}") is None
    now = redis_now()
    time.sleep(max(0.0, wid + 0.85 - now))  # the same window's edge
    budget.acquire(4)
    assert math.floor(redis_now()) == wid, "the machine was too slow to hit the edge; rerun"
    assert int(budget.client.get(f"{budget.scope}:w:{wid}")) == 6
    assert int(budget.client.get(f"{budget.scope}:w:{wid + 1}")) == 4


def test_unreachable_store_fails_retryably_without_its_password() -> None:
    local = MinuteBudget(20, provider="binance")
    budget = SharedBudget.like(local, "redis://:hunter22@127.0.0.1:1/0", "http://127.0.0.1:9")
    with pytest.raises(TransientSourceError) as err:
        budget.acquire(2)
    assert err.value.retryable and "hunter22" not in str(err.value)
    assert "redis://127.0.0.1:1/0" in str(err.value) and "sources.binance.shared_budget" in str(err.value)


def test_config_selects_the_budget_and_twelve_data_is_scoped_per_key_hash(redis_url: str) -> None:
    key = "0123456789abcdef0123456789abcdef"
    td = TwelveDataSourceConfig(base_url="http://127.0.0.1:7/x", api_key=key, shared_budget=redis_url)
    b = shared_budget(
        "twelvedata", td.base_url, lambda: MinuteBudget(td.credits_per_minute, provider="twelvedata"), options=td
    )
    assert isinstance(b, SharedBudget) and key not in b.scope
    assert b.scope == scope_of("twelvedata", td.base_url, key, 60.0) and ":127.0.0.1:7:" in b.scope
    other_key = TwelveDataSourceConfig(base_url=td.base_url, api_key=key[::-1], shared_budget=redis_url)
    b2 = shared_budget(
        "twelvedata", td.base_url, lambda: MinuteBudget(other_key.credits_per_minute, provider="twelvedata"),
        options=other_key,
    )
    assert b2.scope != b.scope  # credits are per key
    plain = BinanceSourceConfig(base_url="http://127.0.0.1:8")
    local = shared_budget(
        "binance", plain.base_url, lambda: MinuteBudget(plain.weight_budget_per_minute), options=plain
    )
    assert isinstance(local, MinuteBudget)  # the embedded default, unchanged without shared_budget
