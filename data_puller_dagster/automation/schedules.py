"""The daily schedule: shortly after UTC midnight, yesterday's partition of every symbol of every feed."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.automation.sensor_common import credentials_skip, partition_key
from data_puller_dagster.config import AppConfig, FeedConfig


def daily_run_requests(feed: FeedConfig, day, run_per: str = "feed") -> list[dg.RunRequest]:
    """Yesterday of every symbol: one run for the feed (a key range over the symbols of one day), or one
    run per symbol. Why one run by default: a daily run's own work is a second or two, while each run pays
    a process start, a code-location import and its event writes; ten symbols as ten runs queue behind
    the per-provider run limit for most of a minute."""
    if day < feed.start_date or (feed.end_date and day > feed.end_date):
        return []
    keys = list(feed.symbol_keys)
    tags = {"data_puller/trigger": "schedule"}
    if run_per == "feed" and len(keys) > 1:
        return [
            dg.RunRequest(
                run_key=f"daily:{feed.name}:{day.isoformat()}",
                tags={
                    **tags,
                    ASSET_PARTITION_RANGE_START_TAG: partition_key(day, keys[0]),
                    ASSET_PARTITION_RANGE_END_TAG: partition_key(day, keys[-1]),
                },
            )
        ]
    return [
        dg.RunRequest(
            run_key=f"daily:{feed.name}:{day.isoformat()}:{key}",
            partition_key=dg.MultiPartitionKey({"date": day.isoformat(), "symbol": key}),
            tags=tags,
        )
        for key in keys
    ]


def build_schedule(cfg: AppConfig, feed: FeedConfig) -> dg.ScheduleDefinition:
    offset = cfg.automation.schedule.minutes_after_midnight
    cron = f"{offset % 60} {offset // 60} * * *"

    @dg.schedule(
        name=f"{feed.name}_daily",
        cron_schedule=cron,
        execution_timezone="UTC",
        job_name=pipeline_job_name(feed),
        default_status=dg.DefaultScheduleStatus.RUNNING
        if cfg.automation.schedule.enabled
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Daily at {offset // 60:02d}:{offset % 60:02d} UTC: yesterday's {feed.name} candles, every symbol.",
    )
    def daily(context: dg.ScheduleEvaluationContext):
        skip = credentials_skip(cfg, feed)
        if skip is not None:
            return skip
        yesterday = (context.scheduled_execution_time - timedelta(days=1)).date()
        return daily_run_requests(feed, yesterday, cfg.automation.schedule.run_per)

    return daily


def build_schedules(cfg: AppConfig) -> list[dg.ScheduleDefinition]:
    return [build_schedule(cfg, feed) for feed in cfg.feeds]
