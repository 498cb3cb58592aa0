"""What the gap-filling sensors read from the Dagster instance: runs in flight, the outcome of the runs
they requested, normalized materializations (missing candles), confirmed-gap observations, and another
sensor's stored cursor. Kept apart from the decisions so each read is written (and paged) once."""

from __future__ import annotations

import dagster as dg

# InstigatorType is not exported at dagster's top level in 1.13 (dg.InstigatorType raises AttributeError);
# this is where the daemon itself imports it from.
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.storage.tags import RUN_KEY_TAG

from data_puller_dagster.automation.gap_state import Incomplete, SensorState
from data_puller_dagster.automation.sensor_common import CONFIRMED_GAP, MISSING_BY_DAY, SENSOR_TAG
from data_puller_dagster.config import AppConfig

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


def in_flight(instance: dg.DagsterInstance, sensor_name: str) -> int:
    """Runs this sensor launched that are queued or running (by the data_puller/sensor tag)."""
    return instance.get_runs_count(dg.RunsFilter(tags={SENSOR_TAG: sensor_name}, statuses=NOT_FINISHED))


def resolve_pending(
    instance: dg.DagsterInstance, state: SensorState, now: float, backoff_base: float
) -> int:
    """Update pending requests from their runs' statuses (a failed run backs its symbol off
    `backoff_base` s, see SensorState.resolve); return how many have no run yet (requested this or a
    recent tick, not yet submitted): they count toward the in-flight bound too."""
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
    state.resolve(status, now, backoff_base)
    return sum(1 for k in state.pending if k not in status)


def budget(instance: dg.DagsterInstance, cfg: AppConfig, name: str, not_submitted: int) -> int:
    """Runs this sensor may still request: max_runs_in_flight minus queued/running and unsubmitted."""
    return max(cfg.automation.gap_sensor.max_runs_in_flight - in_flight(instance, name) - not_submitted, 0)


def missing_for(metadata: dict, key: str) -> int | None:
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


def bootstrap_confirmed(instance: dg.DagsterInstance, key: dg.AssetKey, state: SensorState) -> None:
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


def read_materializations(
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
            missing = missing_for(dict(mat.metadata), pk)
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


def stored_cursor(instance: dg.DagsterInstance, sensor_name: str) -> SensorState:
    """The cursor the daemon stored for another sensor after its last tick (empty state if none).

    Sensors are matched by name: each feed's sensor names are unique within this project's location."""
    for st in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
        if st.name == sensor_name and st.instigator_data is not None:
            return SensorState.load(getattr(st.instigator_data, "cursor", None))
    return SensorState()
