"""`<feed>_gap_filler` -> `<feed>_pipeline`: keeps a feed's normalized history complete.

(a) days of [start_date, last complete day] whose normalized partition was never materialized or whose
    last run failed (this also gives a newly added symbol its whole history);
(a') days whose normalized partition is materialized but a downstream layer of the pipeline (derived,
    enriched) FAILED for that day: a blocking check that rejected another day of the same range run
    stores the good days in normalized, and Dagster marks the skipped downstream partitions FAILED;
    without a run nothing would ever rebuild them (reason `downstream_failed`);
(b) materialized days whose `missing_by_day` metadata reports missing candles, once the day is
    `settle_hours` old: refetched at most `max_attempts` times, then recorded as a CONFIRMED gap (an
    AssetObservation on the normalized partition with `data_puller/confirmed_gap`) and left alone.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime

import dagster as dg

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.gap_state import Incomplete, SensorState, day_range
from data_puller_dagster.automation.instance_reads import (
    bootstrap_confirmed,
    budget,
    read_materializations,
    resolve_pending,
)
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.automation.sensor_common import (
    CONFIRMED_GAP,
    Evaluation,
    gap_sensor_name,
    last_fill_day,
    partition_key,
    request_ranges,
    settled,
    split_key,
)
from data_puller_dagster.config import AppConfig, FeedConfig


def _drop_out_of_window(state: SensorState, feed: FeedConfig) -> None:
    """Forget days of symbols removed from the config or outside the feed's history window."""
    symbols = set(feed.symbol_keys)

    def keep(k: str) -> bool:
        d, s = split_key(k)
        return s in symbols and d >= feed.start_date and (feed.end_date is None or d <= feed.end_date)

    state.incomplete = {k: v for k, v in state.incomplete.items() if keep(k)}
    state.confirmed = {k: v for k, v in state.confirmed.items() if keep(k)}


def downstream_keys(feed: FeedConfig) -> list[dg.AssetKey]:
    """The pipeline job's layers built from normalized: derived and enriched timeframes."""
    return [asset_key(feed, "derived", tf) for tf in feed.derived_timeframes] + [
        asset_key(feed, "enriched", tf) for tf in feed.enriched_timeframes
    ]


def _downstream_failed(instance: dg.DagsterInstance, feed: FeedConfig, keys: list[str]) -> set[str]:
    """Partition keys whose latest derived/enriched attempt failed (or was skipped after an upstream
    failure, which Dagster records as FAILED too)."""
    failed: set[str] = set()
    parts = feed_partitions(feed)
    for key in downstream_keys(feed):
        status = instance.get_status_by_partition(key, keys, parts) or {}
        failed.update(k for k, st in status.items() if st == dg.AssetPartitionStatus.FAILED)
    return failed


def evaluate_pipeline_gaps(
    instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, cursor: str | None, now: datetime
) -> Evaluation:
    """One tick of `<feed>_gap_filler`: missing, failed, downstream-failed and (settled) incomplete days
    -> pipeline runs."""
    gs = cfg.automation.gap_sensor
    name = gap_sensor_name(feed)
    norm_key = asset_key(feed, "normalized", feed.timeframe)
    symbols = list(feed.symbol_keys)
    state = SensorState.load(cursor)
    ts = now.timestamp()
    ev = Evaluation()

    not_submitted = resolve_pending(instance, state, ts, gs.failure_backoff_seconds)
    if state.fresh:
        bootstrap_confirmed(instance, norm_key, state)
        state.fresh = False
    caught_up = read_materializations(instance, norm_key, state, set(symbols))
    if not caught_up:
        ev.notes.append("still reading materialization history; incomplete days wait for the next tick")
    _drop_out_of_window(state, feed)

    last = last_fill_day(cfg, feed, now)
    needs: dict[str, dict[date, str]] = defaultdict(dict)
    if last is not None:
        days = list(day_range(feed.start_date, last))
        keys = [partition_key(d, s) for s in symbols for d in days]
        status = instance.get_status_by_partition(norm_key, keys, feed_partitions(feed)) or {}
        down_failed = _downstream_failed(instance, feed, keys)
        for sym in symbols:
            for d in days:
                pk = partition_key(d, sym)
                st = status.get(pk)
                if st == dg.AssetPartitionStatus.IN_PROGRESS or state.is_pending(sym, d):
                    continue
                if st is None:
                    needs[sym][d] = "missing"
                elif st == dg.AssetPartitionStatus.FAILED:
                    needs[sym][d] = "failed"
                elif pk in state.incomplete:
                    # refetched (which rebuilds its downstream too) only once settled, at most
                    # max_attempts times, whatever its downstream status
                    if caught_up and settled(d, now, gs.settle_hours):
                        inc = state.incomplete[pk]
                        if inc.attempts >= gs.max_attempts:
                            ev.asset_events.append(_confirm(state, norm_key, pk, inc, gs.max_attempts))
                        else:
                            needs[sym][d] = "incomplete"
                elif caught_up and pk in down_failed and pk not in state.confirmed:
                    needs[sym][d] = "downstream_failed"
    for sym in list(needs):
        if state.backing_off(sym, ts) or not needs[sym]:
            if needs[sym]:
                ev.notes.append(f"{sym}: runs failed recently; retry after backoff")
            del needs[sym]

    room = budget(instance, cfg, name, not_submitted)
    if needs and room == 0:
        ev.notes.append(f"{gs.max_runs_in_flight} runs in flight (max_runs_in_flight); waiting")
    for req, sym, start, end in request_ranges(
        state, feed, name, pipeline_job_name(feed), needs, cfg.runs.max_partitions_per_run, room, ts
    ):
        for d in day_range(start, end):
            inc = state.incomplete.get(partition_key(d, sym))
            if inc is not None and needs[sym].get(d) == "incomplete":
                inc.attempts += 1
        ev.run_requests.append(req)
    ev.cursor = state.dump()
    return ev


def _confirm(
    state: SensorState, key: dg.AssetKey, pk: str, inc: Incomplete, max_attempts: int
) -> dg.AssetObservation:
    """Record a gap the provider really has (e.g. exchange maintenance): no more refetches."""
    state.incomplete.pop(pk, None)
    state.confirmed[pk] = inc.missing
    day, sym = split_key(pk)
    return dg.AssetObservation(
        asset_key=key,
        partition=pk,
        description=(
            f"Confirmed gap: {inc.missing} candle(s) of {sym} on {day} still missing after "
            f"{inc.attempts} refetch(es); the provider does not have them (e.g. maintenance). Not retried; "
            "materialize the partition by hand to check again."
        ),
        metadata={
            CONFIRMED_GAP: dg.MetadataValue.bool(True),
            "missing_candles": dg.MetadataValue.int(inc.missing),
            "refetch_attempts": dg.MetadataValue.int(inc.attempts),
            "max_attempts": dg.MetadataValue.int(max_attempts),
            "day": dg.MetadataValue.text(day.isoformat()),
            "symbol": dg.MetadataValue.text(sym),
        },
    )
