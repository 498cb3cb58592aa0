"""The gap-filling sensors against a real (SQLite) instance, with state built from real events and
real runs of the stub code location. Ticks call the evaluate_* functions with a fixed clock, and the
sensor definitions themselves through build_sensor_context."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import dagster as dg
import pytest
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.automation.gap_state import BACKOFF_BASE_SECONDS, PENDING_TTL_SECONDS
from data_puller_dagster.automation.jobs import PROVIDER_TAG
from data_puller_dagster.automation.sensors import (
    CONFIRMED_GAP,
    MISSING_BY_DAY,
    SENSOR_TAG,
    build_sensors,
    evaluate_dataset_files,
    evaluate_dataset_gaps,
    evaluate_pipeline_gaps,
    gap_sensor_name,
    partition_key,
)
from data_puller_dagster.config import ConfigError
from data_puller_dagster_tests.automation.conftest import NOW, Runner, day, make_cfg


def ranges(ev) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in ev.run_requests]


def pk(i: int, sym: str = "BTCUSDT") -> str:
    return partition_key(day(i), sym)


def report(instance, cfg, layer: str, keys: list[str], missing: dict[str, int] | None = None) -> None:
    """Runless materializations (what a run of that layer records), with missing_by_day when given."""
    feed = cfg.feeds[0]
    key = asset_key(feed, layer, feed.timeframe)
    for k in keys:
        md = {}
        if layer == "normalized":
            d, s = k.split("|")
            n = (missing or {}).get(k, 0)
            md[MISSING_BY_DAY] = {d: {s: n}} if n else {}
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=k, metadata=md))


def test_missing_days_become_contiguous_range_runs_per_symbol(instance) -> None:
    cfg = make_cfg(max_per_run=3)
    report(instance, cfg, "normalized", [pk(2)])
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert ranges(ev) == [
        (pk(0), pk(1)),
        (pk(0, "ETHUSDT"), pk(2, "ETHUSDT")),
        (pk(3), pk(4)),
        (pk(3, "ETHUSDT"), pk(4, "ETHUSDT")),
    ]
    r = ev.run_requests[0]
    assert r.job_name == "crypto_pipeline"
    assert r.tags[PROVIDER_TAG] == "binance" and r.tags[SENSOR_TAG] == "crypto_gap_filler"
    assert r.tags["data_puller/gap_reason"] == "missing"
    assert len({r.run_key for r in ev.run_requests}) == 4


def test_sensor_definition_cursor_prevents_duplicate_requests(instance) -> None:
    cfg = make_cfg()
    sensor = next(s for s in build_sensors(cfg) if s.name == gap_sensor_name(cfg.feeds[0]))
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    ctx = dg.build_sensor_context(instance=instance)
    first = sensor.evaluate_tick(ctx)
    assert len(first.run_requests) == 2  # one 5-day range per symbol
    cursor = json.loads(first.cursor)
    assert cursor["v"] == 1 and len(cursor["pend"]) == 2
    again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
    assert again.run_requests == [] and again.skip_message


def test_failed_day_is_refetched_alone(instance) -> None:
    cfg = make_cfg(("BTCUSDT",))
    runner = Runner(cfg, instance, holes={"fail": [pk(2)]})
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    for req in ev.run_requests:
        # one range run: days 0..4 in one run fails as a whole; run the days one by one instead
        for i in range(5):
            single = dg.RunRequest(
                run_key=f"{req.run_key}-{i}",
                job_name=req.job_name,
                tags={**req.tags, RANGE_START: pk(i), RANGE_END: pk(i)},
            )
            assert runner.run(single).success == (i != 2)
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert ranges(ev) == [(pk(2), pk(2))]
    assert ev.run_requests[0].tags["data_puller/gap_reason"] == "failed"


def test_incomplete_days_are_refetched_after_settling_then_confirmed(instance) -> None:
    cfg = make_cfg(("BTCUSDT",), max_attempts=2)
    feed = cfg.feeds[0]
    # provider lacks 60 candles on day 0 for good (maintenance), 3 on day 1 until a refetch, and the
    # still-settling yesterday (day 4) lacks 2
    holes = {pk(0): 60, pk(1): 3, pk(4): 2}
    runner = Runner(cfg, instance, holes=holes)
    ev = evaluate_pipeline_gaps(instance, cfg, feed, None, NOW)
    assert ranges(ev) == [(pk(0), pk(4))]
    assert runner.run(ev.run_requests[0]).success
    holes.pop(pk(1))  # the provider publishes day 1's late candles

    ev = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert ranges(ev) == [(pk(0), pk(1))]  # settled incomplete days; day 4 not yet settled
    assert ev.run_requests[0].tags["data_puller/gap_reason"] == "incomplete"
    assert json.loads(ev.cursor)["inc"][pk(0)] == {"m": 60, "a": 1}
    assert runner.run(ev.run_requests[0]).success

    ev = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert ranges(ev) == [(pk(0), pk(0))]  # day 1 closed; day 0: second and last attempt
    assert runner.run(ev.run_requests[0]).success

    ev = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert ev.run_requests == []
    (obs,) = ev.asset_events
    assert obs.partition == pk(0) and obs.asset_key == asset_key(feed, "normalized", "1h")
    assert obs.metadata[CONFIRMED_GAP].value is True and obs.metadata["missing_candles"].value == 60
    assert json.loads(ev.cursor)["conf"] == {pk(0): 60}

    # a later tick neither refetches nor re-reports it; day 4 is refetched once it has settled
    later = NOW + timedelta(hours=36)
    ev2 = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, later)
    # (36 h later the window has also grown by two new days, which are simply missing)
    assert ev2.asset_events == [] and ranges(ev2) == [(pk(4), pk(6))]
    assert ev2.run_requests[0].tags["data_puller/gap_reason"] == "incomplete,missing"
    assert json.loads(ev2.cursor)["inc"][pk(4)] == {"m": 2, "a": 1}

    # the observation is the durable record: after a cursor reset the confirmed gap is recovered
    instance.report_runless_asset_event(obs)
    fresh = evaluate_pipeline_gaps(instance, cfg, feed, None, NOW)
    assert json.loads(fresh.cursor)["conf"] == {pk(0): 60} and fresh.run_requests == []


def test_new_symbol_gets_its_whole_history(instance) -> None:
    cfg = make_cfg(("BTCUSDT",))
    runner = Runner(cfg, instance)
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert all(runner.run(r).success for r in ev.run_requests)
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, NOW)
    assert ev.run_requests == []

    grown = make_cfg(("BTCUSDT", "SOLUSDT"))
    ev = evaluate_pipeline_gaps(instance, grown, grown.feeds[0], ev.cursor, NOW)
    assert ranges(ev) == [(pk(0, "SOLUSDT"), pk(4, "SOLUSDT"))]


def test_in_flight_bound_counts_queued_runs_and_unsubmitted_requests(instance) -> None:
    cfg = make_cfg(max_per_run=1, max_runs_in_flight=3)  # 10 one-day gaps
    feed = cfg.feeds[0]
    ev = evaluate_pipeline_gaps(instance, cfg, feed, None, NOW)
    assert ranges(ev) == [(pk(0), pk(0)), (pk(0, "ETHUSDT"), pk(0, "ETHUSDT")), (pk(1), pk(1))]
    assert evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW).run_requests == []

    runner = Runner(cfg, instance)
    assert all(runner.run(r).success for r in ev.run_requests)
    # another run of this sensor is still running (e.g. launched before a cursor reset)
    instance.add_run(
        dg.DagsterRun(
            job_name="crypto_pipeline",
            run_id=str(uuid.uuid4()),
            status=dg.DagsterRunStatus.STARTED,
            tags={SENSOR_TAG: "crypto_gap_filler"},
        )
    )
    ev = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert ranges(ev) == [(pk(1, "ETHUSDT"), pk(1, "ETHUSDT")), (pk(2), pk(2))]


def test_lost_request_is_requested_again_after_ttl(instance) -> None:
    cfg = make_cfg(("BTCUSDT",))
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    later = NOW + timedelta(seconds=PENDING_TTL_SECONDS + 1)
    again = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, later)
    assert ranges(again) == ranges(ev) and again.run_requests[0].run_key != ev.run_requests[0].run_key


def test_failing_symbol_backs_off(instance) -> None:
    cfg = make_cfg(("BTCUSDT",))
    runner = Runner(cfg, instance, holes={"fail": [pk(3)]})
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert not runner.run(ev.run_requests[0]).success
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, NOW)
    assert ev.run_requests == [] and any("backoff" in n for n in ev.notes)
    after = NOW + timedelta(seconds=BACKOFF_BASE_SECONDS)
    assert ranges(evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, after)) == [(pk(0), pk(4))]


def test_dataset_days_wait_for_the_next_enriched_day(instance) -> None:
    cfg = make_cfg(("BTCUSDT",))
    feed = cfg.feeds[0]
    report(instance, cfg, "enriched", [pk(i) for i in range(4)])  # day 4 not enriched yet
    ev = evaluate_dataset_gaps(instance, cfg, feed, None, NOW)
    assert ranges(ev) == [(pk(0), pk(2))]
    assert ev.run_requests[0].job_name == "crypto_llm_dataset"
    assert evaluate_dataset_gaps(instance, cfg, feed, ev.cursor, NOW).run_requests == []

    runner = Runner(cfg, instance)
    assert runner.run(ev.run_requests[0]).success
    ev = evaluate_dataset_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert ev.run_requests == []
    report(instance, cfg, "enriched", [pk(2)])  # day 2 refetched and re-enriched: days 1, 2 are stale
    ev = evaluate_dataset_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert (
        ranges(ev) == [(pk(1), pk(2))]
        and ev.run_requests[0].tags["data_puller/gap_reason"] == "dataset_stale"
    )


def test_dataset_last_day_of_a_closed_feed_needs_no_next_day(instance) -> None:
    cfg = make_cfg(("BTCUSDT",), end_date=day(3))
    report(instance, cfg, "enriched", [pk(i) for i in range(4)])
    ev = evaluate_dataset_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert ranges(ev) == [(pk(0), pk(3))]


def test_files_run_once_after_dataset_changes_settle(instance) -> None:
    cfg = make_cfg(("BTCUSDT",), end_date=day(1))
    feed = cfg.feeds[0]
    runner = Runner(cfg, instance)
    ev = evaluate_dataset_files(instance, cfg, feed, None, NOW)
    assert ev.run_requests == []  # no examples yet
    report(instance, cfg, "enriched", [pk(0), pk(1)])
    ev = evaluate_dataset_files(instance, cfg, feed, ev.cursor, NOW)
    assert ev.run_requests == []  # still nothing built

    ds = evaluate_dataset_gaps(instance, cfg, feed, None, NOW)
    assert runner.run(ds.run_requests[0]).success
    files = evaluate_dataset_files(instance, cfg, feed, ev.cursor, NOW)
    (req,) = files.run_requests
    assert req.job_name == "crypto_llm_dataset_files"
    assert evaluate_dataset_files(instance, cfg, feed, files.cursor, NOW).run_requests == []
    assert runner.run(req).success
    done = evaluate_dataset_files(instance, cfg, feed, files.cursor, NOW)
    assert done.run_requests == [] and "up to date" in done.notes[0]

    # day 1 re-enriched, its examples rebuilt: files wait while another examples run is in flight
    report(instance, cfg, "enriched", [pk(1)])
    ds = evaluate_dataset_gaps(instance, cfg, feed, ds.cursor, NOW)
    assert ranges(ds) == [(pk(0), pk(1))] and runner.run(ds.run_requests[0]).success
    other = dg.DagsterRun(
        job_name="crypto_llm_dataset", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED
    )
    instance.add_run(other)
    wait = evaluate_dataset_files(instance, cfg, feed, done.cursor, NOW)
    assert wait.run_requests == [] and any("dataset runs in flight" in n for n in wait.notes)
    instance.report_run_canceled(other)
    (again,) = evaluate_dataset_files(instance, cfg, feed, wait.cursor, NOW).run_requests
    assert again.run_key != req.run_key


def test_stub_location_with_real_jobs_and_sensors_loads() -> None:
    from data_puller_dagster_tests.automation.stub_location import Holes, stub_definitions

    defs = stub_definitions(make_cfg(), Holes())
    dg.Definitions.validate_loadable(defs)
    assert {s.name for s in defs.sensors} == {
        "crypto_gap_filler",
        "crypto_dataset_filler",
        "crypto_dataset_files",
    }


def test_failure_backoff_is_configurable(instance) -> None:
    cfg = make_cfg(("BTCUSDT",), failure_backoff_seconds=60)
    runner = Runner(cfg, instance, holes={"fail": [pk(3)]})
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], None, NOW)
    assert not runner.run(ev.run_requests[0]).success
    ev = evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, NOW)
    assert ev.run_requests == [] and any("backoff" in n for n in ev.notes)
    after = NOW + timedelta(seconds=60)
    assert ranges(evaluate_pipeline_gaps(instance, cfg, cfg.feeds[0], ev.cursor, after)) == [(pk(0), pk(4))]

    with pytest.raises(ConfigError, match="failure_backoff_seconds"):
        make_cfg(failure_backoff_seconds=-1)
