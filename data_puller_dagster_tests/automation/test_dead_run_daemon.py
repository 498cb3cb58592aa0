"""A run killed with kill -9 is marked FAILURE by run monitoring and the gap sensor refills its days.

Real processes throughout: a temporary DAGSTER_HOME with the SHIPPED dagster.yaml (LocalRunLauncher, run
monitoring), in which only two run_monitoring values are shortened so the test takes about a minute:
poll_interval_seconds 30 -> 3 and free_slots_after_run_end_seconds 60 -> 1. The real code location
(`data_puller_dagster.definitions`) reads a temporary config whose Binance is a GatedBinance on 127.0.0.1.

1. `dagster job execute` (the README's in-process range command) for two days of one symbol; the fake
   holds its klines requests, so the run is STARTED and inside the raw step.
2. `dagster-daemon run` starts; its gap sensor's first tick skips the in-progress days, and run
   monitoring checks the live run without failing it.
3. The command's whole process tree is killed with SIGKILL (the run worker, and the step process the
   multiprocess executor spawned, both die without a word, like an OOM kill or a reboot).
4. Run monitoring marks the run FAILURE within a few polls (with Dagster's DefaultRunLauncher it stayed
   STARTED until max_runtime_seconds, 6 h), the slot it held in the binance pool is freed, and the gap
   sensor's next tick (interval_seconds 30, the minimum) launches a run for the failed days, which
   stores all 1440 candles of each day.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import yaml
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START

from data_puller_dagster.assets.naming import asset_key, table_ref
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.run_launcher import HOST_TAG
from data_puller_dagster.automation.sensors import REASON_TAG, SENSOR_TAG, partition_key
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.fakes.binance import generate_klines
from data_puller_dagster_tests.fakes.slow import GatedBinance

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYMBOL = "BTCUSDT"
POLL_SECONDS = 3
# Monitoring polls after the kill before the run must be FAILURE (generous for a loaded 2-core machine,
# and far below max_runtime_seconds, the only way a DefaultRunLauncher instance fails a STARTED run).
FAIL_DEADLINE_SECONDS = 20 * POLL_SECONDS


def shipped_instance_yaml() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dagster.yaml").read_text())


def _config(tmp_path: Path, binance_url: str, start: date) -> dict[str, Any]:
    return {
        "storage": {"data_dir": str(tmp_path / "data")},
        "sources": {"binance": {"base_url": binance_url, "use_archive": False, "max_retries": 1}},
        "feeds": [
            {
                "name": "crypto",
                "source": "binance",
                "asset_class": "crypto",
                "timeframe": "1m",
                "enrich_timeframes": [],
                "symbols": [SYMBOL],
                "start_date": start.isoformat(),
                # Pinned, so the sensor's window does not grow by a day if the test crosses UTC midnight.
                "end_date": (start + timedelta(days=1)).isoformat(),
            }
        ],
        "dataset": {"enabled": False},
        "runs": {"retry_max": 0},
        "automation": {
            "schedule": {"enabled": False},
            "gap_sensor": {"interval_seconds": 30, "settle_hours": 0, "failure_backoff_seconds": 0},
        },
    }


class Proc:
    """A subprocess in its own session (so its whole process tree can be killed) logging to a file."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path):
        self.log = log
        self._out = log.open("w")
        self.p = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def text(self) -> str:
        return self.log.read_text()

    def kill_tree(self) -> None:
        """SIGKILL to the process group: the command and every process it spawned."""
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(30)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(10)
        self._out.close()


def wait(what: str, cond: Callable[[], bool], timeout: float, *procs: Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            assert p.p.poll() is None, f"{p.log.name} exited:\n{p.text()[-4000:]}"
            assert "Error loading repository location" not in p.text(), p.text()[-6000:]
        if cond():
            return
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.log.name}\n{p.text()[-4000:]}" for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def run_scenario(tmp_path: Path, instance_yaml: dict[str, Any]) -> None:
    """The whole story for a given dagster.yaml (the test passes the shipped one)."""
    today = datetime.now(UTC).date()
    start = today - timedelta(days=2)
    days = [start, start + timedelta(days=1)]  # the sensor's whole window: start .. yesterday
    keys = [partition_key(d, SYMBOL) for d in days]
    full = generate_klines(pd.Timestamp(start), 2 * 1440, "1m", seed=5)

    home = tmp_path / "home"
    home.mkdir()
    inst = dict(instance_yaml)
    inst["run_monitoring"] = {
        **inst["run_monitoring"],
        "poll_interval_seconds": POLL_SECONDS,
        "free_slots_after_run_end_seconds": 1,
    }
    (home / "dagster.yaml").write_text(yaml.safe_dump(inst))
    (tmp_path / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {"python_module": {"module_name": "data_puller_dagster.definitions", "working_directory": str(REPO)}}
                ]
            }
        )
    )

    with GatedBinance({(SYMBOL, "1m"): full}) as fake:
        raw_cfg = _config(tmp_path, fake.url, start)
        cfg = parse_config(raw_cfg, env={})
        feed = cfg.feed("crypto")
        norm_key = asset_key(feed, "normalized", "1m")
        cfg_path = tmp_path / "data_puller.yaml"
        cfg_path.write_text(yaml.safe_dump(raw_cfg))
        env = {**os.environ, "DAGSTER_HOME": str(home), "DATA_PULLER_CONFIG": str(cfg_path)}
        # The instance's SQLite storage exists before any other process opens it (no schema race).
        with dg.DagsterInstance.from_config(str(home)) as instance:
            fake.close()
            tags = {RANGE_START: keys[0], RANGE_END: keys[-1]}
            cli = Proc(
                [str(BIN / "dagster"), "job", "execute", "-m", "data_puller_dagster.definitions",
                 "-j", "crypto_pipeline", "--tags", json.dumps(tags)],
                env, tmp_path, tmp_path / "cli.log",
            )  # fmt: skip
            daemon = None
            try:
                # The daemon starts once the run exists (its days are then in progress) and loads the
                # code location while the run's step process starts.
                wait("the CLI run to start", lambda: bool(instance.get_runs()), 120, cli)
                daemon = Proc(
                    [str(BIN / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
                    env, tmp_path, tmp_path / "daemon.log",
                )  # fmt: skip
                fake.wait_for_request(120)
                (killed,) = instance.get_runs()
                assert killed.status == dg.DagsterRunStatus.STARTED
                (rec,) = instance.get_records_for_run(
                    killed.run_id, of_type=dg.DagsterEventType.RUN_START
                ).records
                assert rec.event_log_entry.dagster_event.pid == cli.p.pid  # the CLI process runs it

                # The sensor skipped the in-progress days, and monitoring checked the live run (and left
                # it alone), before the run is killed.
                checked = f"Checking run {killed.run_id}"
                skipped = "Sensor crypto_gap_filler skipped: nothing to fill"
                wait("monitoring and the sensor to see the live run",
                     lambda: checked in (t := daemon.text()) and skipped in t, 120, daemon)  # fmt: skip
                assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED

                cli.kill_tree()
                fake.open()

                def status() -> dg.DagsterRunStatus:
                    return instance.get_run_by_id(killed.run_id).status

                wait("run monitoring to fail the killed run", lambda: status() == dg.DagsterRunStatus.FAILURE,
                     FAIL_DEADLINE_SECONDS, daemon)  # fmt: skip
                failure = instance.get_records_for_run(
                    killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
                ).records
                assert f"run worker (pid {cli.p.pid} on {socket.gethostname()}) no longer exists" in (
                    failure[0].event_log_entry.dagster_event.message or ""
                )

                def refills() -> list[dg.DagsterRun]:
                    return instance.get_runs(dg.RunsFilter(tags={SENSOR_TAG: "crypto_gap_filler"}))

                wait("the gap sensor's run to refill the days",
                     lambda: len(r := refills()) >= 1 and all(x.is_finished for x in r), 150, daemon)  # fmt: skip
                (refill,) = refills()
                assert refill.status == dg.DagsterRunStatus.SUCCESS, daemon.text()[-4000:]
                assert (refill.tags[RANGE_START], refill.tags[RANGE_END]) == (keys[0], keys[-1])
                assert refill.tags[REASON_TAG] == "failed"
                assert refill.tags[HOST_TAG] == socket.gethostname()  # launched (and checked) here
            finally:
                fake.open()
                cli.kill_tree()
                cli.stop()
                if daemon is not None:
                    daemon.stop()

            parts = feed_partitions(feed)
            assert instance.get_status_by_partition(norm_key, keys, parts) == dict.fromkeys(
                keys, dg.AssetPartitionStatus.MATERIALIZED
            )

    stored = Router(cfg).read(
        table_ref(feed, "normalized", "1m"), PartitionSlice(symbols={SYMBOL: SYMBOL}, start=days[0], end=days[-1])
    )
    assert stored["ts"].dt.date.value_counts().sort_index().to_dict() == dict.fromkeys(days, 1440)
    assert sorted(stored["ts"]) == list(pd.to_datetime(full["open_time"], unit="ms", utc=True))


def test_killed_cli_run_is_failed_by_monitoring_and_refilled_by_the_gap_sensor(tmp_path: Path) -> None:
    run_scenario(tmp_path, shipped_instance_yaml())
