"""Gap-filling sensors (issue 8): they keep every feed's history complete, without a human backfill.

Why sensors and not AutomationCondition: eager/on_missing/on_cron only look at the latest date
partition, so they never fill history, a symbol added to the config, or a day the provider returned
incomplete. Three sensors per feed, each targeting one job (a sensor may only launch the jobs it
names, and the jobs are defined once in automation.jobs):

- `<feed>_gap_filler` -> `<feed>_pipeline`:
  (a) days of [start_date, last complete day] whose normalized partition was never materialized or
      whose last run failed (this also gives a newly added symbol its whole history);
  (b) materialized days whose `missing_by_day` metadata reports missing candles, once the day is
      `settle_hours` old: refetched at most `max_attempts` times, then recorded as a CONFIRMED gap
      (an AssetObservation on the normalized partition with `data_puller/confirmed_gap`) and left alone.
- `<feed>_dataset_filler` -> `<feed>_llm_dataset`: dataset days D whose enriched D and D+1 (or D is the
  feed's end_date) are materialized and newer than dataset D (never built, failed, or upstream refetched).
- `<feed>_dataset_files` -> `<feed>_llm_dataset_files`: one run when the examples changed since the
  files were written and no examples are in flight or still to be built.

Every run covers one symbol's contiguous day range of at most `runs.max_partitions_per_run` days
(range tags, like Dagster's multi_run backfills), carries the provider tag the run queue limits, a
`data_puller/sensor` tag, and a unique run_key. At most `max_runs_in_flight` runs of a sensor are
queued or running at once. The cursor (see gap_state) remembers requested runs until they finish, so
a gap is requested once, not on every tick; a symbol whose runs fail backs off exponentially.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import dagster as dg
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    RUN_KEY_TAG,
)

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.assets.partitions import DATE_DIM, SYMBOL_DIM, feed_partitions
from data_puller_dagster.automation.gap_state import (
    Incomplete,
    Pending,
    SensorState,
    contiguous_ranges,
    day_range,
)
from data_puller_dagster.automation.jobs import (
    FEED_TAG,
    PROVIDER_TAG,
    dataset_files_job_name,
    dataset_job_name,
    pipeline_job_name,
)
from data_puller_dagster.config import AppConfig, FeedConfig

SENSOR_TAG = "data_puller/sensor"
TRIGGER_TAG = "data_puller/trigger"
REASON_TAG = "data_puller/gap_reason"
CONFIRMED_GAP = "data_puller/confirmed_gap"
FILES_SLOT = "*files*"  # pseudo-symbol of the files run in the cursor
MISSING_BY_DAY = "missing_by_day"  # same key as assets.normalized.MISSING_BY_DAY (not imported: heavy deps)

# Grace after the daily schedule's time before the sensor treats yesterday as its own to fill, so the
# two do not fetch the same day twice around midnight.
SCHEDULE_GRACE = timedelta(hours=1)
# Materialization events read per tick at most (pages x page size); the rest is read next tick.
EVENT_PAGE = 1000
EVENT_PAGES_PER_TICK = 20

NOT_FINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_SUCCESS = {dg.DagsterRunStatus.SUCCESS}
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


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


# ----------------------------------------------------------------------------------------- helpers
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


def in_flight(instance: dg.DagsterInstance, sensor_name: str) -> int:
    """Runs this sensor launched that are queued or running (by the data_puller/sensor tag)."""
    return instance.get_runs_count(dg.RunsFilter(tags={SENSOR_TAG: sensor_name}, statuses=NOT_FINISHED))


def _resolve_pending(instance: dg.DagsterInstance, state: SensorState, now: float) -> int:
    """Update pending requests from their runs' statuses; return how many have no run yet (requested
    this or a recent tick, not yet submitted): they count toward the in-flight bound too."""
    if not state.pending:
        return 0
    keys = list(state.pending)
    runs = instance.get_runs(dg.RunsFilter(tags={RUN_KEY_TAG: keys}), limit=len(keys) * 2)
    status: dict[str, str | None] = {}
    for run in runs:
        k = run.tags.get(RUN_KEY_TAG)
        if k is None:
            continue
        s = "success" if run.status in _SUCCESS else "failure" if run.status in _FAILED else "running"
        if status.get(k) != "running":  # a running duplicate outranks a finished one
            status[k] = s
    state.resolve(status, now)
    return sum(1 for k in state.pending if k not in status)


def _budget(instance: dg.DagsterInstance, cfg: AppConfig, name: str, not_submitted: int) -> int:
    return max(cfg.automation.gap_sensor.max_runs_in_flight - in_flight(instance, name) - not_submitted, 0)


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


def _request_ranges(
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


def _missing_for(metadata: dict, key: str) -> int | None:
    """Missing candles of one partition from a normalized materialization's `missing_by_day`.

    A run covering several days records the same run-wide mapping on every partition it materializes,
    so only this partition's day and symbol are read. None when the event has no such metadata."""
    value = metadata.get(MISSING_BY_DAY)
    if value is None:
        return None
    by_day = getattr(value, "data", value)
    if not isinstance(by_day, dict):
        return None
    day, sym = key.split("|", 1)
    try:
        return int((by_day.get(day) or {}).get(sym, 0))
    except (TypeError, ValueError):
        return None


def _bootstrap_confirmed(instance: dg.DagsterInstance, key: dg.AssetKey, state: SensorState) -> None:
    """After a cursor reset, recover confirmed gaps from their observations so they are not refetched."""
    cursor = None
    while True:
        res = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=key), limit=EVENT_PAGE, cursor=cursor, ascending=True
        )
        for rec in res.records:
            obs = rec.asset_observation
            if obs is None or rec.partition_key is None or CONFIRMED_GAP not in obs.metadata:
                continue
            missing = obs.metadata.get("missing_candles")
            state.confirmed[rec.partition_key] = int(getattr(missing, "value", missing) or 0)
        if not res.has_more:
            return
        cursor = res.cursor


def _read_materializations(
    instance: dg.DagsterInstance, key: dg.AssetKey, state: SensorState, symbols: set[str]
) -> bool:
    """Fold new normalized materializations (storage id > cursor) into the incomplete/confirmed state.
    Returns True when caught up with the event log (False: more next tick)."""
    for _ in range(EVENT_PAGES_PER_TICK):
        res = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=state.mat_id or None),
            limit=EVENT_PAGE,
            ascending=True,
        )
        for rec in res.records:
            state.mat_id = max(state.mat_id, rec.storage_id)
            pk = rec.partition_key
            mat = rec.asset_materialization
            if pk is None or mat is None or pk.split("|", 1)[-1] not in symbols:
                continue
            missing = _missing_for(dict(mat.metadata), pk)
            if missing is None:
                continue
            if missing == 0:
                state.incomplete.pop(pk, None)
                state.confirmed.pop(pk, None)
            elif pk in state.confirmed:
                state.confirmed[pk] = missing
            else:
                prev = state.incomplete.get(pk)
                state.incomplete[pk] = Incomplete(missing, prev.attempts if prev else 0)
        if not res.has_more:
            return True
    return False


def _drop_out_of_window(state: SensorState, feed: FeedConfig) -> None:
    """Forget days of symbols removed from the config or outside the feed's history window."""
    symbols = set(feed.symbol_keys)

    def keep(k: str) -> bool:
        d, s = split_key(k)
        return s in symbols and d >= feed.start_date and (feed.end_date is None or d <= feed.end_date)

    state.incomplete = {k: v for k, v in state.incomplete.items() if keep(k)}
    state.confirmed = {k: v for k, v in state.confirmed.items() if keep(k)}


# ---------------------------------------------------------------------------------- (a) + (b)
def evaluate_pipeline_gaps(
    instance: dg.DagsterInstance, cfg: AppConfig, feed: FeedConfig, cursor: str | None, now: datetime
) -> Evaluation:
    """One tick of `<feed>_gap_filler`: missing, failed and (settled) incomplete days -> pipeline runs."""
    gs = cfg.automation.gap_sensor
    name = gap_sensor_name(feed)
    norm_key = asset_key(feed, "normalized", feed.timeframe)
    symbols = list(feed.symbol_keys)
    state = SensorState.load(cursor)
    ts = now.timestamp()
    ev = Evaluation()

    not_submitted = _resolve_pending(instance, state, ts)
    if state.fresh:
        _bootstrap_confirmed(instance, norm_key, state)
        state.fresh = False
    caught_up = _read_materializations(instance, norm_key, state, set(symbols))
    if not caught_up:
        ev.notes.append("still reading materialization history; incomplete days wait for the next tick")
    _drop_out_of_window(state, feed)

    last = last_fill_day(cfg, feed, now)
    needs: dict[str, dict[date, str]] = defaultdict(dict)
    if last is not None:
        days = list(day_range(feed.start_date, last))
        keys = [partition_key(d, s) for s in symbols for d in days]
        status = instance.get_status_by_partition(norm_key, keys, feed_partitions(feed)) or {}
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
                elif pk in state.incomplete and caught_up and settled(d, now, gs.settle_hours):
                    inc = state.incomplete[pk]
                    if inc.attempts >= gs.max_attempts:
                        ev.asset_events.append(_confirm(state, norm_key, pk, inc, gs.max_attempts))
                    else:
                        needs[sym][d] = "incomplete"
    for sym in list(needs):
        if state.backing_off(sym, ts) or not needs[sym]:
            if needs[sym]:
                ev.notes.append(f"{sym}: runs failed recently; retry after backoff")
            del needs[sym]

    budget = _budget(instance, cfg, name, not_submitted)
    if needs and budget == 0:
        ev.notes.append(f"{gs.max_runs_in_flight} runs in flight (max_runs_in_flight); waiting")
    for req, sym, start, end in _request_ranges(
        state, feed, name, pipeline_job_name(feed), needs, cfg.runs.max_partitions_per_run, budget, ts
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


# ----------------------------------------------------------------------------------------- (c)
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
    not_submitted = _resolve_pending(instance, state, ts)
    needs = dataset_needs(instance, cfg, feed, state, now)
    for sym in [s for s in needs if state.backing_off(s, ts)]:
        ev.notes.append(f"{sym}: dataset runs failed recently; retry after backoff")
        del needs[sym]
    budget = _budget(instance, cfg, name, not_submitted)
    for req, *_ in _request_ranges(
        state, feed, name, dataset_job_name(feed), needs, cfg.runs.max_partitions_per_run, budget, ts
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
    not_submitted = _resolve_pending(instance, state, ts)

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
    other = _stored_cursor(instance, dataset_sensor_name(feed))
    ts = now.timestamp()
    return any(days and not other.backing_off(sym, ts) for sym, days in needs.items())


def _stored_cursor(instance: dg.DagsterInstance, sensor_name: str) -> SensorState:
    for st in instance.all_instigator_state(instigator_type=dg.InstigatorType.SENSOR):
        if st.name == sensor_name and st.instigator_data is not None:
            return SensorState.load(getattr(st.instigator_data, "cursor", None))
    return SensorState()


# ------------------------------------------------------------------------------------ definitions
def _now() -> datetime:
    return datetime.now(UTC)


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
                f"Fills {feed.name} history: never materialized or failed days, and incomplete days once "
                f"{gs.settle_hours} h old (at most {gs.max_attempts} refetches, then a confirmed gap).",
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
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        ev = fn(context.instance, cfg, feed, context.cursor, _now())
        for note in ev.notes:
            context.log.info(note)
        for obs in ev.asset_events:
            context.log.warning(obs.description or "confirmed gap")
        return ev.to_result()

    return _sensor
