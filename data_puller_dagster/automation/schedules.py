"""The daily schedule: shortly after UTC midnight, yesterday's partition of every symbol of every feed."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.automation.sensor_common import credentials_skip
from data_puller_dagster.config import AppConfig, FeedConfig


def daily_run_requests(feed: FeedConfig, day) -> list[dg.RunRequest]:
    """One run per symbol (Dagster runs hold one key range of a multi-partitioned asset)."""
    if day < feed.start_date or (feed.end_date and day > feed.end_date):
        return []
    return [
        dg.RunRequest(
            run_key=f"daily:{feed.name}:{day.isoformat()}:{key}",
            partition_key=dg.MultiPartitionKey({"date": day.isoformat(), "symbol": key}),
            tags={"data_puller/trigger": "schedule"},
        )
        for key in feed.symbol_keys
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
        return daily_run_requests(feed, yesterday)

    return daily


def build_schedules(cfg: AppConfig) -> list[dg.ScheduleDefinition]:
    return [build_schedule(cfg, feed) for feed in cfg.feeds]
