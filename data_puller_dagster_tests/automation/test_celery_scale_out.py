"""Scale-out, end to end on this machine: two dagster-celery workers (started with the documented
command) execute the steps of an 8-symbol x 10-day 1m backfill (8 ranged runs, one per symbol, launched
with `dagster job execute`) on the Postgres-backed instance of deploy/dagster.celery.yaml, pulling from a
Binance stand-in that enforces a scaled-down weight limit and bans after repeated 429s, with the weight
budget shared in Redis. Mid-backfill one worker is SIGKILLed (process group: as if its host died).

Proven: steps ran on both workers (celery hostname and pid of each step execution); the killed worker's
unfinished steps were handed by RabbitMQ to the other worker and succeeded there, and every run
succeeded (no rerun needed: acks_late + reject_on_worker_lost, deploy/celery_worker.yaml); no window ever
carried more weight than the limit, no 429 was needed and nothing was sent while banned; Parquet and
Postgres hold the same 14,400 candles per symbol, none missing, none twice.

Scale: Binance allows 6000 weight per minute at 2 weight per 1000-candle page. 8 x 10 days of 1m is 120
pages = 240 weight, which no per-minute limit would notice, so the stand-in allows 60 weight per 5 s
window (a 0.8 safety fraction leaves 48 = 24 pages per window): the pull needs >= 5 windows and is paced
by the shared budget, as a large backfill is by Binance's real limit.

Services: RabbitMQ (rabbitmqctl creates and deletes a vhost), PostgreSQL (a database created and dropped),
Redis (keys scoped by the stand-in's port, deleted afterwards). Unreachable: skip locally, FAIL under CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster_tests.automation import celery_cluster as cc
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

SYMBOLS = [f"S{i}USDT" for i in range(8)]
DAYS = 10
START = date(2024, 1, 1)
CANDLES = DAYS * 1440
LIMIT, WINDOW = 60, 5.0


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[cc.Deployment, FakeBinance]]:
    try:
        cc.check_redis()
        with cc.vhost() as broker, cc.database() as db, FakeBinance() as fake:
            cc.serve(fake, SYMBOLS, START, DAYS, LIMIT, WINDOW)
            cfg = cc.backfill_config(tmp_path / "data", fake.url, db, SYMBOLS, START, DAYS, LIMIT, WINDOW)
            dep = cc.Deployment(tmp_path, broker, db, cfg)
            dep.write()
            try:
                yield dep, fake
            finally:
                dep.stop_workers()
                cc.delete_budget_keys(fake.url)
    except cc.Unavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(str(e))
        pytest.skip(str(e))


def read_layer(cfg, store: str, layer: str) -> pd.DataFrame:
    from data_puller_dagster.assets.naming import table_ref
    from data_puller_dagster.io.router import Router
    from data_puller_dagster.io.tables import PartitionSlice

    feed = cfg.feeds[0]
    part = PartitionSlice(feed.symbol_keys, feed.start_date, feed.end_date)
    router = Router(cfg)
    df = router.store(store).read(table_ref(feed, layer, "1m"), part)
    return df.sort_values(["symbol", "ts"], ignore_index=True)


@pytest.mark.timeout(420)
def test_two_celery_workers_share_one_budget_and_survive_a_killed_worker(deployment) -> None:
    from data_puller_dagster.config import load_config

    dep, fake = deployment
    dep.start_worker("w1")
    dep.start_worker("w2")
    dep.wait_workers_ready()
    instance = dep.instance()
    try:
        dep.set_pools(instance)
        result = cc.run_backfill(dep, instance, SYMBOLS, START, DAYS, kill="w1")
        took = result["seconds"]
        steps = cc.step_workers(instance)
        statuses = {
            r.tags["dagster/asset_partition_range_start"]: r.status.value for r in instance.get_runs()
        }
        run_configs = [str(r.run_config) for r in instance.get_runs()]
    finally:
        instance.dispose()
    logs = {p.name: p.read_text(errors="replace")[-2500:] for p in dep.root.glob("run-*.log")}
    assert set(result["codes"].values()) == {0}, (result["codes"], logs)
    assert set(statuses.values()) == {"SUCCESS"} and len(statuses) == len(SYMBOLS)
    # the broker's password reaches neither the runs' stored config nor any run or worker log
    secret = dep.broker.split("//", 1)[1].split("@", 1)[0]  # guest:guest
    logs_all = "".join(p.read_text(errors="replace") for p in dep.root.glob("*.log"))
    assert secret not in "".join(run_configs) and secret not in logs_all

    # steps ran on both workers; the killed one's unfinished steps were re-executed on the other
    assert {x["worker"] for x in steps} == {"w1", "w2"}
    assert all(x["pid_ok"] for x in steps if x["succeeded"])  # each step began and ended in one process
    pids = {w: {x["pid"] for x in steps if x["worker"] == w} for w in ("w1", "w2")}
    assert pids["w1"] and pids["w2"] and not pids["w1"] & pids["w2"], pids  # ... of that worker's pool
    assert result["killed_running"], "w1 was never seen running a step"
    done = {(x["run"], x["step"]): x for x in steps if x["succeeded"]}
    for lost in result["killed_running"]:
        again = done[(lost["run"], lost["step"])]
        assert again["worker"] == "w2", (lost, again)
    assert not [x for x in steps if x["worker"] == "w2" and not x["succeeded"]]

    print(  # the figures, for -s runs and failure reports
        f"backfill {took:.1f}s; steps per worker "
        f"{ {w: sum(x['worker'] == w for x in steps) for w in ('w1', 'w2')} }; killed mid-step: "
        f"{[x['step'] for x in result['killed_running']]}; weight per window {sorted(fake.window_weights.values())}"
    )
    # the provider's limit held for the deployment as a whole
    assert 0 < fake.max_window_weight <= LIMIT, fake.window_weights
    # A reservation at a window's edge is charged to the next window too (it may land there); a request
    # slower than that margin can still reach the server a window late and earn a 429. The 429 pauses
    # every worker (shared), so it never escalates: no ban was earned and none was ignored.
    assert fake.throttled < 3 and fake.requests_while_banned == []
    assert len([w for w in fake.window_weights.values() if w]) >= 5  # paced over >= 5 windows
    assert took > 4 * WINDOW

    # complete, no duplicates, and the stores agree
    cfg = load_config(dep.config_path)
    parquet, postgres = read_layer(cfg, "parquet", "normalized"), read_layer(cfg, "postgres", "normalized")
    counts = parquet.groupby("symbol", observed=True).size()
    assert counts.to_dict() == dict.fromkeys(SYMBOLS, CANDLES)
    assert not parquet.duplicated(["symbol", "ts"]).any()
    for i, s in enumerate(SYMBOLS):
        expected = generate_klines(pd.Timestamp(START), CANDLES, seed=i)
        got = parquet[parquet["symbol"] == s]
        assert (pd.DatetimeIndex(got["ts"]).as_unit("ms").asi8 == expected["open_time"].to_numpy()).all()
        assert (got["close"].to_numpy() == expected["close"].to_numpy()).all()
    cols = ["symbol", "ts", "open", "high", "low", "close", "volume"]
    pd.testing.assert_frame_equal(
        parquet[cols].astype({"symbol": str}), postgres[cols].astype({"symbol": str}), check_dtype=False
    )
