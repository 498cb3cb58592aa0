"""Every sensor of a feed, on the REAL definitions (build_definitions of a test config), ticked the way the
sensor daemon ticks it, in each state it can be in (issue 13 item 5).

A tick here is what the daemon does with a sensor: evaluate the SensorDefinition with the cursor stored
in the instance's instigator state, store the returned cursor back there (where another sensor reads
it: `<feed>_dataset_files` reads `<feed>_dataset_filler`'s backoff), and record the returned asset
events. The clock is Dagster's own (frozen per tick with dagster._core.test_utils.freeze_time, which
the sensors read through dagster._time), so settle windows and backoffs are crossed without waiting.
What a tick requests is submitted as a QUEUED run (like the queued run coordinator), executed as a real
run of the real jobs against a GatedBinance on 127.0.0.1 and real stores, or held mid-step (STARTED) by
the fake's closed gate.

States: nothing materialized; a run in flight (STARTED, with and without a stored cursor); gaps left to
fill; incomplete days before and after settling and after max_attempts (confirmed gap); dataset days
left to build (the `<feed>_dataset_files` crash of item 5); dataset / files runs queued; runs failed
(backoff, and its expiry); files stale with nothing in flight; files up to date.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.scheduler.instigation import InstigatorState, InstigatorStatus, SensorInstigatorData
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START
from dagster._core.storage.tags import RUN_KEY_TAG
from dagster._core.test_utils import freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.automation.gap_state import BACKOFF_BASE_SECONDS
from data_puller_dagster.automation.sensors import CONFIRMED_GAP, REASON_TAG, partition_key
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.fakes.binance import generate_klines
from data_puller_dagster_tests.fakes.slow import GatedBinance

TODAY = datetime.now(UTC).date()
NOW = datetime.combine(TODAY, time(12), tzinfo=UTC)
START = TODAY - timedelta(days=5)
DAYS = [START + timedelta(days=i) for i in range(5)]  # day 4 = yesterday = end_date
SYM = "BTCUSDT"
GAP, YGAP = (5, 6, 7), (10, 11)  # hours missing on day 1 (for good) and on yesterday (until published)
GAP_SENSOR, DS_SENSOR, FILES_SENSOR = "crypto_gap_filler", "crypto_dataset_filler", "crypto_dataset_files"
# Where the daemon would find the sensors (any stable origin: instigator state is keyed by it).
REPO_ORIGIN = RemoteRepositoryOrigin(
    InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="data_puller_dagster.definitions")),
    "__repository__",
)


def pk(i: int) -> str:
    return partition_key(DAYS[i], SYM)


def ms(day_i: int, hour: int) -> int:
    return int(pd.Timestamp(DAYS[day_i], tz="UTC").value // 1_000_000) + hour * 3_600_000


class Daemon:
    """Ticks the real sensor definitions like the sensor daemon and executes/submits what they request."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
        self.instance, self.defs = instance, defs
        self.sensors = {s.name: s for s in defs.sensors}
        self.states: dict[str, InstigatorState] = {}

    def stored(self, name: str) -> str | None:
        st = self.states.get(name)
        return st.instigator_data.cursor if st is not None else None

    def tick(self, name: str, at: datetime = NOW, *, reset: bool = False) -> SensorExecutionData:
        """One tick at `at`. `reset` evaluates with no cursor (as after a cursor reset or a lost state)
        and, to keep the scenario going, does not store what it returns."""
        with freeze_time(at):
            ctx = dg.build_sensor_context(
                instance=self.instance, cursor=None if reset else self.stored(name), definitions=self.defs
            )
            data = self.sensors[name].evaluate_tick(ctx)
        if reset:
            return data
        st = InstigatorState(
            REPO_ORIGIN.get_instigator_origin(name),
            InstigatorType.SENSOR,
            InstigatorStatus.DECLARED_IN_CODE,
            SensorInstigatorData(cursor=data.cursor, last_tick_timestamp=at.timestamp()),
        )
        if name in self.states:
            self.instance.update_instigator_state(st)
        else:
            self.instance.add_instigator_state(st)
        self.states[name] = st
        for event in data.asset_events:
            self.instance.report_runless_asset_event(event)
        return data

    def _tags(self, req: dg.RunRequest) -> dict[str, str]:
        return {**req.tags, RUN_KEY_TAG: req.run_key}

    def run(self, req: dg.RunRequest) -> None:
        result = self.defs.resolve_job_def(req.job_name).execute_in_process(
            instance=self.instance, tags=self._tags(req), raise_on_error=False
        )
        assert result.success, req.job_name

    def queue(self, req: dg.RunRequest) -> dg.DagsterRun:
        """Submitted but not yet dequeued (what the queued run coordinator stores)."""
        job = self.defs.resolve_job_def(req.job_name)
        return self.instance.create_run_for_job(
            job,
            tags=self._tags(req),
            status=dg.DagsterRunStatus.QUEUED,
            remote_job_origin=REPO_ORIGIN.get_job_origin(req.job_name),
        )


def ranges(data: SensorExecutionData) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in data.run_requests or []]


def skipped(data: SensorExecutionData, why: str) -> bool:
    return not data.run_requests and why in (data.skip_message or "")


@pytest.fixture
def world(tmp_path: Path):
    full = generate_klines(pd.Timestamp(START), 5 * 24, "1h", seed=5)
    lacking = {ms(1, h) for h in GAP} | {ms(4, h) for h in YGAP}
    with GatedBinance({(SYM, "1h"): full[~full["open_time"].isin(lacking)]}) as fake:
        with dg.instance_for_test() as instance:
            cfg = parse_config(
                {
                    "storage": {"data_dir": str(tmp_path / "data")},
                    "sources": {"binance": {"base_url": fake.url, "use_archive": False, "max_retries": 1}},
                    "feeds": [
                        {
                            "name": "crypto",
                            "source": "binance",
                            "asset_class": "crypto",
                            "timeframe": "1h",
                            "symbols": [SYM],
                            "start_date": START.isoformat(),
                            "end_date": DAYS[-1].isoformat(),
                        }
                    ],
                    "indicators": {"warmup_candles": 30},
                    "dataset": {"enabled": True, "context_window": 5, "min_quality": 0.0},
                    "runs": {"retry_max": 0, "max_partitions_per_run": 3},
                    "automation": {
                        "schedule": {"enabled": False},
                        "gap_sensor": {"max_runs_in_flight": 1, "settle_hours": 36, "max_attempts": 2},
                    },
                },
                env={},
            )
            defs = build_definitions(cfg)
            dg.Definitions.validate_loadable(defs)
            yield Daemon(instance, defs), fake, full, cfg.feed("crypto")


def test_every_sensor_in_every_state_on_the_real_definitions(world) -> None:
    d, fake, full, feed = world
    # crypto__live_progress only observes the live table (tested in test_live_assets.py).
    assert set(d.sensors) == {GAP_SENSOR, DS_SENSOR, FILES_SENSOR, "crypto__live_progress"}

    # -- nothing materialized: history is missing; nothing to build; no examples, so no files
    first = d.tick(GAP_SENSOR)
    assert ranges(first) == [(pk(0), pk(2))] and first.run_requests[0].tags[REASON_TAG] == "missing"
    assert skipped(d.tick(DS_SENSOR), "nothing to fill")
    assert skipped(d.tick(FILES_SENSOR), "up to date")

    # -- its run in flight (STARTED, held mid-step by the provider): not requested again, neither
    #    with the stored cursor (pending) nor after a cursor reset (in progress; in-flight bound)
    fake.close()
    worker = threading.Thread(target=d.run, args=(first.run_requests[0],))
    worker.start()
    try:
        fake.wait_for_request(60)
        assert [r.status for r in d.instance.get_runs()] == [dg.DagsterRunStatus.STARTED]
        # days 3..4 wait for the in-flight bound; days 0..2 are pending (cursor) / in progress (reset)
        assert skipped(d.tick(GAP_SENSOR), "runs in flight")
        assert skipped(d.tick(GAP_SENSOR, reset=True), "runs in flight")
    finally:
        fake.open()
        worker.join(120)
    assert not worker.is_alive()

    # -- incomplete day 1 (settled) comes first (oldest first; one run in flight at most): refetched
    #    up to max_attempts times while days 3..4 are still a gap to fill
    for attempt in (1, 2):
        refetch = d.tick(GAP_SENSOR)
        assert ranges(refetch) == [(pk(1), pk(1))], attempt
        assert refetch.run_requests[0].tags[REASON_TAG] == "incomplete"
        d.run(refetch.run_requests[0])
    # -- then day 1 is a confirmed gap (reported once), and the gap left is filled
    confirm = d.tick(GAP_SENSOR)
    assert [e.partition for e in confirm.asset_events] == [pk(1)]
    assert ranges(confirm) == [(pk(3), pk(4))] and confirm.run_requests[0].tags[REASON_TAG] == "missing"
    d.run(confirm.run_requests[0])
    norm = asset_key(feed, "normalized", "1h")
    (obs,) = d.instance.fetch_observations(dg.AssetRecordsFilter(asset_key=norm), limit=5).records
    assert obs.asset_observation.metadata[CONFIRMED_GAP].value is True
    assert obs.asset_observation.metadata["missing_candles"].value == len(GAP)
    # -- yesterday is incomplete too, but not settled yet: nothing to do; after a cursor reset the
    #    confirmed gap is recovered from its observation, not refetched
    done = d.tick(GAP_SENSOR)
    assert skipped(done, "nothing to fill") and done.asset_events == []
    assert skipped(d.tick(GAP_SENSOR, reset=True), "nothing to fill")

    # -- dataset days to build, one range at a time (max_runs_in_flight 1)
    ds1 = d.tick(DS_SENSOR)
    assert ranges(ds1) == [(pk(0), pk(2))] and ds1.run_requests[0].tags[REASON_TAG] == "dataset_missing"
    assert skipped(d.tick(FILES_SENSOR), "up to date")  # no examples yet
    d.run(ds1.run_requests[0])
    # examples exist, files do not, and days 3..4 are still to build: the files wait (item 5's crash)
    assert skipped(d.tick(FILES_SENSOR), "dataset days still to build")

    # -- a dataset run queued: the filler waits for it, and so do the files
    ds2 = d.tick(DS_SENSOR)
    assert ranges(ds2) == [(pk(3), pk(4))]
    queued = d.queue(ds2.run_requests[0])
    assert skipped(d.tick(DS_SENSOR), "nothing to fill")  # pending in the stored cursor
    assert skipped(d.tick(DS_SENSOR, reset=True), "nothing to fill")  # its partitions are in progress
    assert skipped(d.tick(FILES_SENSOR), "dataset runs in flight")

    # -- that run failed (canceled): the filler backs off the symbol; per its stored cursor the files
    #    no longer wait for a backed-off symbol, so they are written from what was built
    d.instance.report_run_canceled(queued)
    assert skipped(d.tick(DS_SENSOR), "retry after backoff")
    files1 = d.tick(FILES_SENSOR)
    assert [r.job_name for r in files1.run_requests] == ["crypto_llm_dataset_files"]

    # -- the files run queued, then failed: in flight, then backoff
    files_run = d.queue(files1.run_requests[0])
    assert skipped(d.tick(FILES_SENSOR), "already in flight")
    d.instance.report_run_canceled(files_run)
    assert skipped(d.tick(FILES_SENSOR), "retry after backoff")

    # -- backoffs expired: the filler builds days 3..4 again; files stale with nothing in flight
    later = NOW + timedelta(seconds=BACKOFF_BASE_SECONDS + 1)
    ds3 = d.tick(DS_SENSOR, later)
    assert ranges(ds3) == [(pk(3), pk(4))]
    d.run(ds3.run_requests[0])
    assert skipped(d.tick(DS_SENSOR, later), "nothing to fill")
    files2 = d.tick(FILES_SENSOR, later)
    assert len(files2.run_requests) == 1
    d.run(files2.run_requests[0])
    assert skipped(d.tick(FILES_SENSOR, later), "up to date")
    assert d.instance.get_latest_materialization_event(dataset_files_key(feed)) is not None

    # -- yesterday settles (36 h later) with its candles published: refetched, then everything
    #    downstream follows: its examples are stale (files still match the last build), then the files
    settled = NOW + timedelta(hours=36)
    fake.add(SYM, "1h", full[~full["open_time"].isin({ms(1, h) for h in GAP})])
    y = d.tick(GAP_SENSOR, settled)
    assert ranges(y) == [(pk(4), pk(4))] and y.run_requests[0].tags[REASON_TAG] == "incomplete"
    d.run(y.run_requests[0])
    assert skipped(d.tick(GAP_SENSOR, settled), "nothing to fill")
    stale = d.tick(DS_SENSOR, settled)
    assert ranges(stale) == [(pk(3), pk(4))] and stale.run_requests[0].tags[REASON_TAG] == "dataset_stale"
    d.run(stale.run_requests[0])
    assert skipped(d.tick(DS_SENSOR, settled), "nothing to fill")
    files3 = d.tick(FILES_SENSOR, settled)
    assert len(files3.run_requests) == 1
    d.run(files3.run_requests[0])
    assert skipped(d.tick(FILES_SENSOR, settled), "up to date")
