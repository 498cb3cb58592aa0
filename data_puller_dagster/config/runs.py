"""`runs:`, `validation:`, `automation:` and `stream:`: how and when the pipeline runs."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import (
    Field,
    SecretStr,
)

from data_puller_dagster.config.base import _Model


# ------------------------------------------------------------------------------------ runs, automation
class RunsConfig(_Model):
    max_partitions_per_run: int = Field(31, ge=1, le=400, description="Date partitions per backfill run.")
    backfill_policy: Literal["multi_run", "single_run"] = Field(
        "multi_run",
        description="multi_run: backfills split into runs of max_partitions_per_run days (bounded memory). "
        "single_run: one run per range, needed by `dagster asset materialize --partition-range`.",
    )
    retry_max: int = Field(3, ge=0, le=10)
    retry_delay_seconds: float = Field(30, ge=0)
    executor: Literal["in_process", "multiprocess", "celery"] = Field(
        "in_process",
        description="in_process: a run's steps run one after another in the run's own process (no process "
        "start-up and re-import per step). multiprocess: one process per step (Dagster's default; "
        "independent steps such as several derived timeframes run in parallel). celery: each step is a task "
        "on dagster-celery workers (deploy/dagster.celery.yaml; the workers may run on other hosts).",
    )
    celery_broker: SecretStr = Field(
        default_factory=lambda: SecretStr(
            os.environ.get("DATA_PULLER_CELERY_BROKER") or "amqp://guest:guest@127.0.0.1:5672//"
        ),
        description="executor celery: the broker the workers listen on (DATA_PULLER_CELERY_BROKER).",
    )
    celery_backend: SecretStr = Field(
        default_factory=lambda: SecretStr("rpc://"),
        description="executor celery: where step results come back (rpc:// = replies through the broker).",
    )


class ValidationConfig(_Model):
    """When a partition's data is too broken to build on."""

    max_quarantined_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Above this share of quarantined rows the blocking schema check fails: a response "
        "that is mostly broken (wrong interval, wrong clock, corrupt page) is not trusted downstream.",
    )


class ScheduleConfig(_Model):
    enabled: bool = True
    minutes_after_midnight: int = Field(15, ge=0, lt=24 * 60, description="UTC offset of the daily run.")
    run_per: Literal["feed", "symbol"] = Field(
        "feed",
        description="feed: one run per feed for yesterday, all its symbols (one process, one fetch of all "
        "symbols, one batch of events). symbol: one run per symbol (a symbol's failure leaves the others' "
        "runs alone; the gap sensor refetches failed days either way).",
    )


class GapSensorConfig(_Model):
    enabled: bool = True
    interval_seconds: int = Field(300, ge=30)
    max_runs_in_flight: int = Field(4, ge=1)
    settle_hours: int = Field(36, ge=0, description="Age before a day's data is treated as final.")
    max_attempts: int = Field(3, ge=1, description="Refetches of an incomplete day before it is confirmed.")
    failure_backoff_seconds: float = Field(
        300,
        ge=0,
        description=(
            "Wait after a symbol's failed sensor run before its days are requested again; doubles per "
            "consecutive failure (capped at 6 h)."
        ),
    )


class LiveSensorConfig(_Model):
    """`<feed>__live_progress`: records what `data-puller stream` wrote to the live tables."""

    enabled: bool = Field(False, description="Start the live progress sensors RUNNING (only useful with a stream).")
    interval_seconds: int = Field(60, ge=10, description="How often the live tables of the day are read back.")


class AutomationConfig(_Model):
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    gap_sensor: GapSensorConfig = Field(default_factory=GapSensorConfig)
    live_sensor: LiveSensorConfig = Field(default_factory=LiveSensorConfig)


class StreamConfig(_Model):
    """`data-puller stream`: live candles in micro-batches through the same normalize, validation and routes."""

    max_batch_rows: int = Field(20000, ge=1, description="Most events normalized and routed as one micro-batch.")
    store_flush_seconds: float = Field(
        10.0, gt=0, description="Stores get the current day's closed live candles at most this often."
    )
    log_interval_seconds: float = Field(60.0, gt=0, description="One progress line per connection this often.")
    initial_backfill: Literal["day", "none"] = Field(
        "day", description="At start, fetch the day's closed candles over REST (day) or start with the stream (none)."
    )
    backfill_give_up_seconds: float = Field(
        300.0, gt=0, description="Stop retrying a REST gap fill after this long (the batch pipeline fills it)."
    )
    shutdown_timeout_seconds: float = Field(5.0, gt=0, description="SIGTERM/SIGINT: time to flush and exit.")

