"""The daily schedules of the real definitions (built from a test config): each feed's schedule, evaluated
at a given tick, requests yesterday's partition of every symbol of the feed, within start/end dates: as one
run per feed (a key range over the symbols of that day, the default) or one run per symbol."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START

from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.definitions import build_definitions

START = date(2024, 3, 1)
FOREX_END = date(2024, 3, 10)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> AppConfig:
    data = tmp_path_factory.mktemp("schedule") / "data"
    return parse_config(
        {
            "storage": {"data_dir": str(data)},
            "sources": {"twelvedata": {"api_key": "td-test-key-0123456789"}},
            "feeds": [
                {
                    "name": "crypto",
                    "source": "binance",
                    "asset_class": "crypto",
                    "timeframe": "1h",
                    "symbols": ["BTCUSDT", "ETHUSDT"],
                    "start_date": START.isoformat(),
                },
                {
                    "name": "forex",
                    "source": "twelvedata",
                    "asset_class": "forex",
                    "timeframe": "1h",
                    "symbols": ["EUR/USD", "GBP/JPY", "USD/JPY"],
                    "start_date": START.isoformat(),
                    "end_date": FOREX_END.isoformat(),
                },
            ],
            "automation": {"schedule": {"minutes_after_midnight": 75}},
        },
        env={},
    )


@pytest.fixture(scope="module")
def defs(cfg: AppConfig) -> dg.Definitions:
    return build_definitions(cfg)


def tick(day: date) -> datetime:
    """The schedule's tick on `day` (01:15 UTC with minutes_after_midnight=75)."""
    return datetime(day.year, day.month, day.day, 1, 15, tzinfo=UTC)


def evaluate(defs: dg.Definitions, feed_name: str, when: datetime) -> list[dg.RunRequest]:
    repo = defs.get_repository_def()
    schedule = repo.get_schedule_def(f"{feed_name}_daily")
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=when, repository_def=repo) as ctx,
    ):
        data = schedule.evaluate_tick(ctx)
    assert data.skip_message is None or not data.run_requests
    return list(data.run_requests or [])


def requested_keys(feed, requests: list[dg.RunRequest]) -> list[str]:
    """The partition keys the requests' runs materialize (a range request expanded as Dagster does)."""
    parts = feed_partitions(feed)
    out: list[str] = []
    for r in requests:
        if r.partition_key is not None:
            out.append(str(r.partition_key))
            continue
        rng = dg.PartitionKeyRange(r.tags[RANGE_START], r.tags[RANGE_END])
        out.extend(str(k) for k in parts.get_partition_keys_in_range(rng))
    return sorted(out)


def test_schedules_are_daily_after_midnight_utc_and_running(cfg: AppConfig, defs: dg.Definitions) -> None:
    for feed in cfg.feeds:
        schedule = defs.get_repository_def().get_schedule_def(f"{feed.name}_daily")
        assert schedule.cron_schedule == "15 1 * * *"
        assert schedule.execution_timezone == "UTC"
        assert schedule.job_name == pipeline_job_name(feed)
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize("feed_name", ["crypto", "forex"])
def test_tick_requests_yesterday_for_every_symbol(
    cfg: AppConfig, defs: dg.Definitions, feed_name: str
) -> None:
    feed = cfg.feed(feed_name)
    when = tick(date(2024, 3, 5))
    requests = evaluate(defs, feed_name, when)
    [request] = requests  # one run for the feed: every symbol of the day
    assert request.partition_key is None
    assert request.tags[RANGE_START].startswith("2024-03-04|") and request.tags[RANGE_END].startswith("2024-03-04|")
    keys = requested_keys(feed, requests)
    assert keys == sorted(f"2024-03-04|{s}" for s in feed.symbol_keys)
    assert len(keys) == len(feed.symbols)
    # Every request names a partition the job's partitions definition has at that time, and run keys
    # are unique per partition (a re-evaluated tick does not launch twice).
    valid = set(feed_partitions(feed).get_partition_keys(current_time=when))
    assert set(keys) <= valid
    assert len({r.run_key for r in requests}) == len(requests)
    job = defs.resolve_job_def(pipeline_job_name(feed))
    assert all(r.job_name in (None, job.name) for r in requests)


def test_one_run_per_symbol_when_configured(cfg: AppConfig) -> None:
    per_symbol = cfg.model_copy(
        update={"automation": cfg.automation.model_copy(
            update={"schedule": cfg.automation.schedule.model_copy(update={"run_per": "symbol"})})}
    )  # fmt: skip
    feed = per_symbol.feed("forex")
    requests = evaluate(build_definitions(per_symbol), "forex", tick(date(2024, 3, 5)))
    assert sorted(str(r.partition_key) for r in requests) == sorted(f"2024-03-04|{s}" for s in feed.symbol_keys)
    assert len({r.run_key for r in requests}) == len(requests) == 3


def test_forex_symbols_use_path_safe_keys(cfg: AppConfig, defs: dg.Definitions) -> None:
    keys = set(requested_keys(cfg.feed("forex"), evaluate(defs, "forex", tick(date(2024, 3, 8)))))
    assert keys == {"2024-03-07|EURUSD", "2024-03-07|GBPJPY", "2024-03-07|USDJPY"}


@pytest.mark.parametrize(
    ("feed_name", "tick_day", "expected_day"),
    [
        ("crypto", START, None),  # yesterday is before start_date
        ("crypto", START + timedelta(days=1), START),  # first day of history
        ("crypto", date(2024, 6, 1), date(2024, 5, 31)),  # open-ended feed keeps going
        ("forex", START, None),
        ("forex", START + timedelta(days=1), START),
        ("forex", FOREX_END + timedelta(days=1), FOREX_END),  # last day of history
        ("forex", FOREX_END + timedelta(days=2), None),  # after end_date: nothing
        ("forex", date(2024, 6, 1), None),
    ],
)
def test_nothing_outside_the_history_window(
    cfg: AppConfig, defs: dg.Definitions, feed_name: str, tick_day: date, expected_day: date | None
) -> None:
    feed = cfg.feed(feed_name)
    keys = requested_keys(feed, evaluate(defs, feed_name, tick(tick_day)))
    expected = (
        [] if expected_day is None else sorted(f"{expected_day.isoformat()}|{s}" for s in feed.symbol_keys)
    )
    assert keys == expected


def test_the_feed_run_of_a_tick_materializes_every_symbol(tmp_path) -> None:
    """The tick's one request, run on a real instance against the fake Binance: every symbol's day is
    fetched, stored and built through every layer, each partition with its own metadata."""
    from data_puller_dagster.assets.naming import asset_key
    from data_puller_dagster_tests.assets.test_pipeline import crypto_config, read
    from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    series = {(s, "1m"): generate_klines("2024-01-01", 4 * 1440, "1m", seed=i) for i, s in enumerate(symbols)}
    with FakeBinance(series) as fake:
        cfg = crypto_config(tmp_path, fake.url, symbols=symbols)
        defs = build_definitions(cfg)
        [request] = evaluate(defs, "crypto", tick(date(2024, 1, 3)))
        feed = cfg.feed("crypto")
        with dg.instance_for_test() as instance:
            result = defs.resolve_job_def(pipeline_job_name(feed)).execute_in_process(
                instance=instance, tags=request.tags, raise_on_error=False
            )
            assert result.success
            for layer, tf in (("normalized", "1m"), ("derived", "1h"), ("enriched", "1h")):
                key = asset_key(feed, layer, tf)
                assert sorted(instance.get_materialized_partitions(key)) == [f"2024-01-02|{s}" for s in symbols]
            for s in symbols:
                [rec] = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=asset_key(feed, "normalized", "1m"),
                                          asset_partitions=[f"2024-01-02|{s}"]), limit=1).records  # fmt: skip
                assert rec.asset_materialization.metadata["dagster/row_count"].value == 1440
        day = read(cfg, "normalized", "1m", "2024-01-02", "2024-01-02", symbols={s: s for s in symbols})
        assert day.groupby("symbol").size().to_dict() == dict.fromkeys(symbols, 1440)
