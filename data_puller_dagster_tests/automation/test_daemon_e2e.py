"""End to end: `dagster-daemon run` with the repo's dagster.yaml in a temporary DAGSTER_HOME, on the stub
code location (real jobs and sensors, fake provider). The default-RUNNING gap sensor launches runs
through the queued run coordinator, they succeed, and the history is closed. Slow (about a minute):
the daemon loads the code location and every run starts a process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import yaml

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.sensors import SENSOR_TAG, partition_key
from data_puller_dagster_tests.automation.conftest import day, make_cfg

REPO = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 240


def test_daemon_sensor_launches_runs_that_close_the_gaps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    cfg = make_cfg(("BTCUSDT",), days=3)
    cfg_path, holes_path = tmp_path / "data_puller.yaml", tmp_path / "holes.json"
    cfg_path.write_text(
        yaml.safe_dump(cfg.model_dump(mode="json", exclude={"storage": True, "sources": True}))
    )
    holes_path.write_text(json.dumps({}))
    (tmp_path / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "data_puller_dagster_tests.automation.stub_location",
                            "working_directory": str(REPO),
                        }
                    }
                ]
            }
        )
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "STUB_CONFIG": str(cfg_path),
        "STUB_HOLES": str(holes_path),
    }
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", str(tmp_path / "workspace.yaml")],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    feed = cfg.feeds[0]
    keys = [partition_key(day(i), "BTCUSDT") for i in range(2, 5)]
    try:
        os.environ["DAGSTER_HOME"] = str(home)  # the test reads the same instance
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + DEADLINE_SECONDS
            done = False
            while time.monotonic() < deadline and not done:
                time.sleep(3)
                assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
                status = instance.get_status_by_partition(
                    asset_key(feed, "normalized", "1h"), keys, feed_partitions(feed)
                )
                runs = instance.get_runs(dg.RunsFilter(tags={SENSOR_TAG: "crypto_gap_filler"}))
                done = (
                    bool(status)
                    and set(status.values()) == {dg.AssetPartitionStatus.MATERIALIZED}
                    and bool(runs)
                    and all(r.is_finished for r in runs)
                )
            assert done, (
                f"gaps not closed in {DEADLINE_SECONDS}s; runs: {[(r.run_id, r.status) for r in runs]}"
            )
            assert runs and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
            assert runs[-1].tags["dagster/asset_partition_range_start"] == keys[0]
    finally:
        os.environ.pop("DAGSTER_HOME", None)
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        log.close()
