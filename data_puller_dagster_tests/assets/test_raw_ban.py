"""A Binance 418 ban through the doors users use: `dagster asset materialize` subprocesses on a temporary
DAGSTER_HOME with the repo's dagster.yaml and a retry policy (runs.retry_max 2, short delay).

Why subprocesses: Dagster's RetryPolicy re-runs a failed step in a new process, and a second command is
another process again. Only a ban persisted where every process looks (`<data_dir>/.state/bans.json`)
keeps them all from hitting a banned IP. The fake records every request it receives while banned.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pandas as pd
import yaml

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.config import load_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

REPO = Path(__file__).resolve().parents[2]
DAGSTER = Path(sys.executable).parent / "dagster"
PARTITION = "2024-01-01|BTCUSDT"
# Long enough for two CLI commands to run inside it on a loaded 2-core machine (each loads the code
# location; the first also starts a step process per attempt); the test then waits for its end once.
BAN_SECONDS = 75
IN_PROCESS = '{"execution": {"config": {"in_process": {}}}}'


def _setup(tmp_path: Path, binance_url: str) -> tuple[dict[str, str], Path, Path]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    cfg_path = tmp_path / "data_puller.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "storage": {"data_dir": str(tmp_path / "data")},
                "sources": {
                    "binance": {
                        "base_url": binance_url,
                        "use_archive": False,
                        "max_retries": 2,
                        "timeout_seconds": 5,
                    },
                },  # fmt: skip
                "feeds": [
                    {
                        "name": "crypto",
                        "source": "binance",
                        "asset_class": "crypto",
                        "timeframe": "1h",
                        "symbols": ["BTCUSDT"],
                        "start_date": "2024-01-01",
                        "end_date": "2024-01-02",
                    }
                ],
                "dataset": {"enabled": False},
                # multiprocess: every step attempt, retries included, runs in a new process
                "runs": {"retry_max": 2, "retry_delay_seconds": 0.2, "executor": "multiprocess"},
            }
        )
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "TWELVEDATA_", "DATA_PULLER_"))
    }
    env.update({"DAGSTER_HOME": str(home), "DATA_PULLER_CONFIG": str(cfg_path)})
    return env, home, cfg_path


def _materialize(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    """`dagster asset materialize` of the raw asset for PARTITION (runs.executor multiprocess: every step
    attempt, retries included, runs in a new process, unless `--config-json` selects in_process)."""
    return subprocess.run(
        [str(DAGSTER), "asset", "materialize", "-m", "data_puller_dagster.definitions",
         "--select", "crypto/raw_ohlcv_1h", "--partition", PARTITION, *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _step_events(home: Path) -> list[tuple[str, dict[str, int], str]]:
    """(run status, counts of step event types, step failure texts) for every run, oldest first."""
    out = []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run in reversed(instance.get_runs()):
            counts: dict[str, int] = {}
            failures = []
            for e in instance.all_logs(run.run_id):
                if e.dagster_event is None:
                    continue
                t = e.dagster_event.event_type_value
                counts[t] = counts.get(t, 0) + 1
                if t == "STEP_FAILURE":
                    data = e.dagster_event.step_failure_data
                    failures.append(
                        f"{data.user_failure_data.description if data.user_failure_data else ''} "
                        f"{data.error.to_string() if data.error else ''}"
                    )
            out.append((run.status.value, counts, "\n".join(failures)))
    return out


def test_ban_is_persisted_and_no_process_sends_while_banned(tmp_path: Path) -> None:
    candles = generate_klines("2024-01-01", 48, "1h")
    with FakeBinance({("BTCUSDT", "1h"): candles}) as fb:
        env, home, cfg_path = _setup(tmp_path, fb.url)
        fb.ban_for(BAN_SECONDS)

        first = _materialize(env)
        assert first.returncode != 0
        assert fb.klines_requests == 1  # the request that got the 418
        assert fb.requests_while_banned == []  # no step retry (new process) knocked again
        [(status, counts, failure)] = _step_events(home)
        assert status == "FAILURE"
        assert counts.get("STEP_START") == 1 and "STEP_UP_FOR_RETRY" not in counts
        assert "crypto" in failure and "BTCUSDT" in failure and "2024-01-01" in failure
        assert "banned until" in failure
        assert (tmp_path / "data" / ".state" / "bans.json").is_file()

        # Another process while the ban runs (in-process executor: the CLI process is the new process).
        second = _materialize(env, "--config-json", IN_PROCESS)
        assert time.time() * 1000 < fb.ban_ends_ms, "the ban ended before the check; raise BAN_SECONDS"
        assert second.returncode != 0
        assert fb.klines_requests == 1 and fb.requests_while_banned == []
        runs = _step_events(home)
        assert len(runs) == 2
        status, counts, failure = runs[1]
        assert status == "FAILURE" and counts.get("STEP_START") == 1 and "STEP_UP_FOR_RETRY" not in counts
        assert "banned until" in failure and "BTCUSDT" in failure

        assert fb.ban_ends_ms is not None
        time.sleep(max(0.0, fb.ban_ends_ms / 1000 - time.time()) + 0.3)
        third = _materialize(env, "--config-json", IN_PROCESS)  # the ban is over: the pull goes through
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert fb.requests_while_banned == []

    cfg = load_config(cfg_path)
    stored = Router(cfg).read(
        table_ref(cfg.feed("crypto"), "raw", "1h"),
        PartitionSlice(symbols={"BTCUSDT": "BTCUSDT"}, start=date(2024, 1, 1), end=date(2024, 1, 1)),
    )
    day = candles[candles["open_time"] < pd.Timestamp("2024-01-02", tz="UTC").value // 1_000_000]
    assert stored["open_time"].tolist() == day["open_time"].tolist()
