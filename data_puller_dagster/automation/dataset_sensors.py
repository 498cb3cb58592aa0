"""The LLM dataset sensors of a feed.

- `<feed>_dataset_filler` -> `<feed>_llm_dataset`: dataset days D whose enriched D and D+1 (or D is the
  feed's end_date) are materialized and newer than dataset D (never built, failed, or upstream refetched).
- `<feed>_dataset_files` -> `<feed>_llm_dataset_files`: one run when the examples changed since the
  files were written and no examples are in flight or still to be built, so a long backfill writes the
  files once instead of after every range.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

import dagster as dg

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.gap_state import Pending, SensorState, day_range
from data_puller_dagster.automation.instance_reads import (
    NOT_FINISHED,
    budget,
    in_flight,
    resolve_pending,
    stored_cursor,
)
from data_puller_dagster.automation.jobs import FEED_TAG, dataset_files_job_name, dataset_job_name
from data_puller_dagster.automation.sensor_common import (
    FILES_SLOT,
    SENSOR_TAG,
    TRIGGER_TAG,
    Evaluation,
    dataset_sensor_name,
    files_sensor_name,
    last_fill_day,
    partition_key,
    request_ranges,
)
from data_puller_dagster.config import AppConfig, FeedConfig


def dataset_needs(
    instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, state: SensorState, now: datetime
) -> dict[str, dict[date, str]]:
    """Dataset days to (re)build: enriched D and D+1 (or D == end_date) materialized and newer than D's
    examples (never built, failed, or upstream refetched since), not in progress or pending."""
    last = last_fill_day(cfg, feed, now)
    if last is None:
        return {}
    tf = feed.llm_timeframe
    enr_key, ds_key = asset_key(feed, "enriched", tf), asset_key(feed, "dataset", tf)
    mat = dg.DagsterEventType.ASSET_MATERIALIZATION
    enriched = instance.get_latest_storage_id_by_partition(enr_key, mat)
    built = instance.get_latest_storage_id_by_partition(ds_key, mat)
    symbols = list(feed.symbol_keys)
    days = list(day_range(feed.start_date, last))
    status = (
        instance.get_status_by_partition(
            ds_key, [partition_key(d, s) for s in symbols for d in days], feed_partitions(feed)
        )
        or {}
    )
    needs: dict[str, dict[date, str]] = defaultdict(dict)
    for sym in symbols:
        for d in days:
            pk = partition_key(d, sym)
            this = enriched.get(pk)
            nxt = this if feed.end_date == d else enriched.get(partition_key(d + timedelta(days=1), sym))
            if this is None or nxt is None:
                continue
            if status.get(pk) == dg.AssetPartitionStatus.IN_PROGRESS or state.is_pending(sym, d):
                continue
            have = built.get(pk)
            if have is None:
                needs[sym][d] = "dataset_missing"
            elif have < max(this, nxt):
                needs[sym][d] = "dataset_stale"
    return needs


def evaluate_dataset_gaps(
    instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, cursor: str | None, now: datetime
) -> Evaluation:
    """One tick of `<feed>_dataset_filler`: ready dataset days -> `<feed>_llm_dataset` runs."""
    name = dataset_sensor_name(feed)
    state = SensorState.load(cursor)
    state.fresh = False
    ts = now.timestamp()
    ev = Evaluation()
    not_submitted = resolve_pending(
        instance, state, ts, cfg.automation.gap_sensor.failure_backoff_seconds
    )
    needs = dataset_needs(instance, cfg, feed, state, now)
    for sym in [s for s in needs if state.backing_off(s, ts)]:
        ev.notes.append(f"{sym}: dataset runs failed recently; retry after backoff")
        del needs[sym]
    room = budget(instance, cfg, name, not_submitted)
    if any(needs.values()) and room == 0:
        ev.notes.append(f"{cfg.automation.gap_sensor.max_runs_in_flight} dataset runs in flight; waiting")
    for req, *_ in request_ranges(
        state, feed, name, dataset_job_name(feed), needs, cfg.runs.max_partitions_per_run, room, ts
    ):
        ev.run_requests.append(req)
    ev.cursor = state.dump()
    return ev


def evaluate_dataset_files(
    instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, cursor: str | None, now: datetime
) -> Evaluation:
    """One tick of `<feed>_dataset_files`: rewrite the JSONL files once the examples changed and settled
    (no examples run in flight, none left to build), so a long backfill writes the files once."""
    name = files_sensor_name(feed)
    tf = feed.llm_timeframe
    ds_key, files_key = asset_key(feed, "dataset", tf), dataset_files_key(feed)
    state = SensorState.load(cursor)
    state.fresh = False
    ts = now.timestamp()
    ev = Evaluation()
    not_submitted = resolve_pending(
        instance, state, ts, cfg.automation.gap_sensor.failure_backoff_seconds
    )

    records = {
        r.asset_entry.asset_key: r.asset_entry for r in instance.get_asset_records([ds_key, files_key])
    }
    ds_entry, files_entry = records.get(ds_key), records.get(files_key)
    ds_sid = ds_entry.last_materialization_storage_id if ds_entry else None
    files_sid = files_entry.last_materialization_storage_id if files_entry else None
    if ds_sid is None or (files_sid is not None and files_sid > ds_sid):
        ev.notes.append("dataset files are up to date")
    elif state.pending or not_submitted or in_flight(instance, name):
        ev.notes.append("a files run is already in flight")
    elif instance.get_runs_count(dg.RunsFilter(job_name=dataset_job_name(feed), statuses=NOT_FINISHED)):
        ev.notes.append("dataset runs in flight; files wait until they finish")
    elif _dataset_backlog(instance, cfg, feed, now):
        ev.notes.append("dataset days still to build; files wait")
    elif state.backing_off(FILES_SLOT, ts):
        ev.notes.append("the last files run failed; retry after backoff")
    else:
        state.seq += 1
        key = f"{name}:{state.seq}:{ds_sid}"
        state.pending[key] = Pending(FILES_SLOT, feed.start_date, feed.start_date, ts)
        state.files = {"sid": ds_sid}
        ev.run_requests.append(
            dg.RunRequest(
                run_key=key,
                job_name=dataset_files_job_name(feed),
                tags={FEED_TAG: feed.name, SENSOR_TAG: name, TRIGGER_TAG: "gap_sensor"},
            )
        )
    ev.cursor = state.dump()
    return ev


def _dataset_backlog(instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, now: datetime) -> bool:
    """Whether the dataset sensor still has days to build. Symbols it is backing off (their runs keep
    failing, per its stored cursor) do not count, or one broken symbol would block the files forever."""
    needs = dataset_needs(instance, cfg, feed, SensorState(), now)
    if not any(needs.values()):
        return False
    other = stored_cursor(instance, dataset_sensor_name(feed))
    ts = now.timestamp()
    return any(days and not other.backing_off(sym, ts) for sym, days in needs.items())
