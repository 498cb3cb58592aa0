"""Gap-filling sensors (issue 8): they keep every feed's history complete, without a human backfill.

Why sensors and not AutomationCondition: eager/on_missing/on_cron only look at the latest date
partition, so they never fill history, a symbol added to the config, or a day the provider returned
incomplete. Three sensors per feed, each targeting one job (a sensor may only launch the jobs it
names, and the jobs are defined once in automation.jobs):

- `<feed>_gap_filler` -> `<feed>_pipeline` (gap_sensor): never materialized, failed (normalized or a
  downstream layer), and settled incomplete days; a day still incomplete after `max_attempts`
  refetches becomes a confirmed gap.
- `<feed>_dataset_filler` -> `<feed>_llm_dataset` (dataset_sensors): dataset days whose enriched inputs
  are newer than their examples.
- `<feed>_dataset_files` -> `<feed>_llm_dataset_files` (dataset_sensors): the JSONL files, once the
  examples changed and nothing is left to build or in flight.

Every run covers one symbol's contiguous day range of at most `runs.max_partitions_per_run` days
(range tags, like Dagster's multi_run backfills), carries the provider tag the run queue limits, a
`data_puller/sensor` tag, and a unique run_key. At most `max_runs_in_flight` runs of a sensor are
queued or running at once. The cursor (see gap_state) remembers requested runs until they finish, so
a gap is requested once, not on every tick; a symbol whose runs fail backs off exponentially.

This module builds the sensor definitions and re-exports the names tests and code locations import.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import dagster as dg
from dagster._time import get_current_datetime

from data_puller_dagster.automation.dataset_sensors import (
    dataset_needs,
    evaluate_dataset_files,
    evaluate_dataset_gaps,
)
from data_puller_dagster.automation.gap_sensor import evaluate_pipeline_gaps
from data_puller_dagster.automation.instance_reads import NOT_FINISHED, in_flight, stored_cursor
from data_puller_dagster.automation.jobs import (
    FEED_TAG,
    dataset_files_job_name,
    dataset_job_name,
    pipeline_job_name,
)
from data_puller_dagster.automation.sensor_common import (
    CONFIRMED_GAP,
    FILES_SLOT,
    MISSING_BY_DAY,
    REASON_TAG,
    SCHEDULE_GRACE,
    SENSOR_TAG,
    TRIGGER_TAG,
    Evaluation,
    credentials_skip,
    dataset_sensor_name,
    files_sensor_name,
    gap_sensor_name,
    last_fill_day,
    partition_key,
    settled,
    split_key,
)
from data_puller_dagster.config import AppConfig, FeedConfig

__all__ = [
    "CONFIRMED_GAP",
    "FILES_SLOT",
    "MISSING_BY_DAY",
    "NOT_FINISHED",
    "REASON_TAG",
    "SCHEDULE_GRACE",
    "SENSOR_TAG",
    "TRIGGER_TAG",
    "Evaluation",
    "build_sensors",
    "dataset_needs",
    "dataset_sensor_name",
    "evaluate_dataset_files",
    "evaluate_dataset_gaps",
    "evaluate_pipeline_gaps",
    "files_sensor_name",
    "gap_sensor_name",
    "in_flight",
    "last_fill_day",
    "partition_key",
    "settled",
    "split_key",
    "stored_cursor",
]


def _now() -> datetime:
    """The daemon's clock (dagster._time): the same one it uses for tick intervals, and the one
    Dagster's own test seam (dagster._core.test_utils.freeze_time) sets, so tests can tick the real
    sensor definitions at a chosen time (settle windows, backoff expiry)."""
    return get_current_datetime()


def build_sensors(cfg: AppConfig) -> list[dg.SensorDefinition]:
    """The gap-filling sensors of every feed: RUNNING by default when automation.gap_sensor.enabled."""
    gs = cfg.automation.gap_sensor
    status = dg.DefaultSensorStatus.RUNNING if gs.enabled else dg.DefaultSensorStatus.STOPPED
    sensors: list[dg.SensorDefinition] = []
    for feed in cfg.feeds:
        specs = [
            (
                gap_sensor_name(feed),
                pipeline_job_name(feed),
                evaluate_pipeline_gaps,
                f"Fills {feed.name} history: never materialized or failed days (also failed derived/enriched "
                f"days), and incomplete days once {gs.settle_hours} h old (at most {gs.max_attempts} "
                "refetches, then a confirmed gap).",
            ),
        ]
        if cfg.dataset.enabled:
            specs += [
                (
                    dataset_sensor_name(feed),
                    dataset_job_name(feed),
                    evaluate_dataset_gaps,
                    f"Builds {feed.name} LLM examples of each day once that day and the next are enriched.",
                ),
                (
                    files_sensor_name(feed),
                    dataset_files_job_name(feed),
                    evaluate_dataset_files,
                    f"Rewrites the {feed.name} JSONL dataset files when the examples changed and settled.",
                ),
            ]
        for name, job, fn, desc in specs:
            sensors.append(_make_sensor(cfg, feed, name, job, fn, desc, status))
    return sensors


EvaluateFn = Callable[[dg.DagsterInstance, AppConfig, FeedConfig, "str | None", datetime], Evaluation]


def _make_sensor(
    cfg: AppConfig,
    feed: FeedConfig,
    name: str,
    job: str,
    fn: EvaluateFn,
    description: str,
    status: dg.DefaultSensorStatus,
) -> dg.SensorDefinition:
    """A thin sensor around an evaluate_* function; the clock is read here so tests can pass their own."""

    @dg.sensor(
        name=name,
        job_name=job,
        minimum_interval_seconds=cfg.automation.gap_sensor.interval_seconds,
        default_status=status,
        description=description,
        tags={FEED_TAG: feed.name},
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        skip = credentials_skip(cfg, feed)
        if skip is not None:
            return skip
        ev = fn(context.instance, cfg, feed, context.cursor, _now())
        for note in ev.notes:
            context.log.info(note)
        for obs in ev.asset_events:
            context.log.warning(obs.description or "confirmed gap")
        return ev.to_result()

    return _sensor
