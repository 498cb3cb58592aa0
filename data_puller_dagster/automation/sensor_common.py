"""What the gap-filling sensors share: names, tags, the clock rules, and turning days into run requests.

Pure of instance reads (those are in instance_reads) so the day/range/tag rules stay plain functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from data_puller_dagster.assets.partitions import DATE_DIM, SYMBOL_DIM
from data_puller_dagster.automation.gap_state import Pending, SensorState, contiguous_ranges, day_range
from data_puller_dagster.automation.jobs import FEED_TAG, PROVIDER_TAG
from data_puller_dagster.config import AppConfig, FeedConfig, missing_credentials

SENSOR_TAG = "data_puller/sensor"
TRIGGER_TAG = "data_puller/trigger"
REASON_TAG = "data_puller/gap_reason"
CONFIRMED_GAP = "data_puller/confirmed_gap"
FILES_SLOT = "*files*"  # pseudo-symbol of the files run in the cursor
MISSING_BY_DAY = "missing_by_day"  # same key as assets.normalized.MISSING_BY_DAY (not imported: heavy deps)

# Grace after the daily schedule's time before the sensor treats yesterday as its own to fill, so the
# two do not fetch the same day twice around midnight.
SCHEDULE_GRACE = timedelta(hours=1)


def gap_sensor_name(feed: FeedConfig) -> str:
    return f"{feed.name}_gap_filler"


def dataset_sensor_name(feed: FeedConfig) -> str:
    return f"{feed.name}_dataset_filler"


def files_sensor_name(feed: FeedConfig) -> str:
    return f"{feed.name}_dataset_files"


@dataclass
class Evaluation:
    """One tick's outcome, independent of the sensor context (what tests and the sensor share)."""

    run_requests: list[dg.RunRequest] = field(default_factory=list)
    asset_events: list[dg.AssetObservation] = field(default_factory=list)
    cursor: str = ""
    notes: list[str] = field(default_factory=list)

    def to_result(self) -> dg.SensorResult:
        skip = None
        if not self.run_requests and not self.asset_events:
            skip = dg.SkipReason("; ".join(self.notes) or "nothing to fill")
        return dg.SensorResult(
            run_requests=self.run_requests,
            asset_events=self.asset_events,
            cursor=self.cursor,
            skip_reason=skip,
        )


def credentials_skip(cfg: AppConfig, feed: FeedConfig) -> dg.SkipReason | None:
    """A skip for feeds whose source cannot authenticate: a run launched now could only fail on
    authentication (and be retried), so sensors and schedules say why and request nothing."""
    reason = missing_credentials(cfg, feed)
    if reason is None:
        return None
    return dg.SkipReason(
        f"{reason}: export it (or set sources.twelvedata.api_key) and reload the code location; "
        f"no {feed.name} runs are requested until then"
    )


def partition_key(day: date, symbol: str) -> str:
    return str(dg.MultiPartitionKey({DATE_DIM: day.isoformat(), SYMBOL_DIM: symbol}))


def split_key(key: str) -> tuple[date, str]:
    d, _, s = key.partition("|")
    return date.fromisoformat(d), s


def last_fill_day(cfg: AppConfig, feed: FeedConfig, now: datetime) -> date | None:
    """Newest day the sensors fill: yesterday (UTC), or the day before while the daily schedule still
    owns yesterday (until its run time + SCHEDULE_GRACE), capped at end_date. None before start_date."""
    today = now.astimezone(UTC).date()
    last = today - timedelta(days=1)
    if cfg.automation.schedule.enabled:
        sched = datetime.combine(today, time(0), tzinfo=UTC) + timedelta(
            minutes=cfg.automation.schedule.minutes_after_midnight
        )
        if now < sched + SCHEDULE_GRACE:
            last -= timedelta(days=1)
    if feed.end_date and feed.end_date < last:
        last = feed.end_date
    return last if last >= feed.start_date else None


def settled(day: date, now: datetime, settle_hours: int) -> bool:
    """A day's data is final once settle_hours have passed since the day ended (UTC)."""
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)
    return now >= end + timedelta(hours=settle_hours)


def _tags(feed: FeedConfig, sensor: str, symbol: str, start: date, end: date, reason: str) -> dict[str, str]:
    return {
        ASSET_PARTITION_RANGE_START_TAG: partition_key(start, symbol),
        ASSET_PARTITION_RANGE_END_TAG: partition_key(end, symbol),
        PROVIDER_TAG: feed.source,
        FEED_TAG: feed.name,
        SENSOR_TAG: sensor,
        TRIGGER_TAG: "gap_sensor",
        REASON_TAG: reason,
    }


def request_ranges(
    state: SensorState,
    feed: FeedConfig,
    sensor: str,
    job: str,
    needs: dict[str, dict[date, str]],
    max_days: int,
    budget: int,
    now: float,
) -> list[tuple[dg.RunRequest, str, date, date]]:
    """Turn {symbol: {day: reason}} into at most `budget` range runs, oldest first, and record them
    as pending. Oldest first because later layers (indicators, datasets) read earlier days."""
    ranges = [
        (start, sym, end) for sym, days in needs.items() for start, end in contiguous_ranges(days, max_days)
    ]
    ranges.sort()
    out = []
    for start, sym, end in ranges[:budget]:
        reasons = sorted({needs[sym][d] for d in day_range(start, end)})
        key = state.next_run_key(sensor, sym, start, end)
        state.pending[key] = Pending(sym, start, end, now)
        req = dg.RunRequest(
            run_key=key, job_name=job, tags=_tags(feed, sensor, sym, start, end, ",".join(reasons))
        )
        out.append((req, sym, start, end))
    return out
