"""End to end with the REAL code location: `dagster-daemon run` against a temporary DAGSTER_HOME (the
repo's dagster.yaml), workspace.yaml -> `data_puller_dagster.definitions`, and DATA_PULLER_CONFIG -> a
temporary config whose Binance base URL is a FakeBinance started here (real HTTP on 127.0.0.1, reached by
the daemon's run worker subprocesses).

One crypto feed, one symbol, base 1h, history = the last three days (ending yesterday). On the first
fetch the provider lacks six candles of the middle day. The default-RUNNING gap sensor's first tick
launches one run for the whole window (never materialized); it succeeds with the middle day incomplete.
The test then gives the provider the full series, and the sensor's next tick (interval_seconds is 30,
the config's minimum, and settle_hours 0) refetches that day. Afterwards every partition of the
normalized asset is materialized, the last materialization of each reports no missing candles, and the
stored data has all 72 candles. About a minute: daemon start, two run processes, one 30 s tick interval.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import yaml

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.sensors import REASON_TAG, SENSOR_TAG, partition_key
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

REPO = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 150
SYMBOL = "BTCUSDT"
HOLE_HOURS = (5, 6, 7, 8, 9, 10)  # candles of the middle day the provider lacks on the first fetch


def _config(tmp_path: Path, binance_url: str, start: date) -> dict:
    return {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
        "feeds": [
            {
                "name": "crypto",
                "source": "binance",
                "asset_class": "crypto",
                "timeframe": "1h",
                "symbols": [SYMBOL],
                "start_date": start.isoformat(),
            }
        ],
        "indicators": {"warmup_candles": 30},
        "dataset": {"enabled": False},
        "runs": {"retry_max": 0},
        "automation": {
            "schedule": {"enabled": False},
            "gap_sensor": {
                "interval_seconds": 30,
                "settle_hours": 0,
                "max_attempts": 2,
                "max_runs_in_flight": 4,
            },
        },
    }


def _wait(what: str, cond, daemon: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.poll() is None, f"daemon exited:\n{log.read_text()[-4000:]}"
        text = log.read_text()
        assert "Error loading repository location" not in text, text[-6000:]
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{log.read_text()[-4000:]}")


def test_daemon_runs_the_real_pipeline_and_closes_the_gaps(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    start = today - timedelta(days=3)
    days = [start + timedelta(days=i) for i in range(3)]  # start .. yesterday
    full = generate_klines(pd.Timestamp(start), 3 * 24, "1h", seed=11)
    hole = {int(pd.Timestamp(days[1], tz="UTC").value // 1_000_000) + h * 3_600_000 for h in HOLE_HOURS}
    first = full[~full["open_time"].isin(hole)]

    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    (tmp_path / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "data_puller_dagster.definitions",
                            "working_directory": str(REPO),
                        }
                    }
                ]
            }
        )
    )
    log_path = tmp_path / "daemon.log"
    keys = [partition_key(d, SYMBOL) for d in days]

    with FakeBinance({(SYMBOL, "1h"): first}) as fake:
        raw_cfg = _config(tmp_path, fake.url, start)
        cfg = parse_config(raw_cfg, env={})
        feed = cfg.feed("crypto")
        norm_key = asset_key(feed, "normalized", "1h")
        cfg_path = tmp_path / "data_puller.yaml"
        cfg_path.write_text(yaml.safe_dump(raw_cfg))
        env = {**os.environ, "DAGSTER_HOME": str(home), "DATA_PULLER_CONFIG": str(cfg_path)}
        # The test creates the instance's SQLite storage before the daemon starts, so the two processes
        # do not race to create the schema.
        with dg.DagsterInstance.from_config(str(home)) as instance, log_path.open("w") as log:
            daemon = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "dagster-daemon"),
                    "run",
                    "-w",
                    str(tmp_path / "workspace.yaml"),
                ],
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:

                def sensor_runs() -> list[dg.DagsterRun]:
                    return list(
                        reversed(instance.get_runs(dg.RunsFilter(tags={SENSOR_TAG: "crypto_gap_filler"})))
                    )

                def finished(n: int):
                    return lambda: len(runs := sensor_runs()) >= n and all(r.is_finished for r in runs[:n])

                # Tick 1: the whole window was never materialized -> one run (one symbol, one range).
                _wait("the first gap-filling run", finished(1), daemon, log_path, DEADLINE_SECONDS)
                run1 = sensor_runs()[0]
                assert run1.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-4000:]
                assert run1.tags["dagster/asset_partition_range_start"] == keys[0]
                assert run1.tags["dagster/asset_partition_range_end"] == keys[-1]
                assert run1.tags[REASON_TAG] == "missing"
                # Each partition's materialization carries its own day (issue 14): read the holed day's.
                first = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=norm_key, asset_partitions=[keys[1]]), limit=1
                ).records
                assert first, "the holed day was not materialized"
                by_day = first[0].asset_materialization.metadata["missing_by_day"].value
                assert by_day.get(days[1].isoformat(), {}).get(SYMBOL) == len(HOLE_HOURS), by_day

                # The provider now has the candles; a later tick refetches the incomplete (settled) day.
                fake.add(SYMBOL, "1h", full)

                def middle_day_complete() -> bool:
                    recs = instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=norm_key, asset_partitions=[keys[1]]), limit=1
                    ).records
                    md = recs[0].asset_materialization.metadata if recs else {}
                    done = "missing_candles" in md and md["missing_candles"].value == 0
                    return done and all(r.is_finished for r in sensor_runs())

                _wait(
                    "the refetch of the incomplete day",
                    middle_day_complete,
                    daemon,
                    log_path,
                    DEADLINE_SECONDS,
                )
                refetches = sensor_runs()[1:]
                # Normally one; two if a tick fell between the first run's end and fake.add above.
                assert 1 <= len(refetches) <= 2
                for run in refetches:
                    assert run.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-4000:]
                    assert run.tags["dagster/asset_partition_range_start"] == keys[1]
                    assert run.tags["dagster/asset_partition_range_end"] == keys[1]
                    assert run.tags[REASON_TAG] == "incomplete"
            finally:
                daemon.terminate()
                try:
                    daemon.wait(30)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        status = instance.get_status_by_partition(norm_key, keys, feed_partitions(feed))
        assert status == dict.fromkeys(keys, dg.AssetPartitionStatus.MATERIALIZED)
        runs = instance.get_runs(dg.RunsFilter(tags={SENSOR_TAG: "crypto_gap_filler"}))
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}

    stored = Router(cfg).read(
        table_ref(feed, "normalized", "1h"),
        PartitionSlice(symbols={SYMBOL: SYMBOL}, start=days[0], end=days[-1]),
    )
    assert len(stored) == 72
    assert sorted(stored["ts"]) == list(pd.to_datetime(full["open_time"], unit="ms", utc=True))
