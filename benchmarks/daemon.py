"""The daily update through the daemon, as a deployment runs it: `dagster-daemon run` on the shipped
instance (DAGSTER_HOME with the repository's dagster.yaml), the code location from workspace.yaml, the
daily schedule of a 10-symbol 1m feed (derived 1h/4h/1d, enriched) set to fire at the next minute, the fake
Binance at 50 ms per request. Measured: from the schedule tick (the tick's own timestamp) to the end of
the last of the runs it requested, plus the whole tree's CPU and peak RSS while the daemon works.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from benchmarks.cli import REPO, PeakTreeRss, workspace
from benchmarks.common import row, served

SYMBOLS = [f"SYM{i}USDT" for i in range(10)]
TICK_DEADLINE = 150  # the schedule is set to the next whole minute; the daemon checks schedules often
RUNS_DEADLINE = 300


def _config(tmp: Path, url: str, symbols: list[str], fire_at: datetime) -> dict[str, str]:
    env = workspace(tmp, url, symbols=symbols, layers="all")
    cfg = yaml.safe_load((tmp / "data_puller.yaml").read_text())
    today = fire_at.date()
    feed = cfg["feeds"][0]
    feed["start_date"] = (today - timedelta(days=3)).isoformat()
    feed.pop("end_date")
    feed.pop("dataset_timeframe", None)
    cfg["dataset"] = {"enabled": False}
    cfg["runs"] = {"retry_max": 0}
    minute = fire_at.hour * 60 + fire_at.minute
    cfg["automation"] = {"schedule": {"enabled": True, "minutes_after_midnight": minute},
                         "gap_sensor": {"enabled": False}}  # fmt: skip
    (tmp / "data_puller.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (tmp / "workspace.yaml").write_text(yaml.safe_dump(
        {"load_from": [{"python_module": {"module_name": "data_puller_dagster.definitions",
                                          "working_directory": str(REPO)}}]}))  # fmt: skip
    return env


def daily_update(quick: bool) -> list[dict]:
    import dagster as dg

    symbols = SYMBOLS[:3] if quick else SYMBOLS
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    now = datetime.now(UTC)
    # fire at the next whole minute at least 40 s away (the daemon needs ~10 s to load the location)
    fire_at = (now + timedelta(seconds=100)).replace(second=0, microsecond=0)
    start = (fire_at.date() - timedelta(days=3)).isoformat()
    try:
        with served("rest", symbols, 4 * 1440 + 60, latency=0.05, start=start) as url:
            env = _config(tmp, url, symbols, fire_at)
            home = Path(env["DAGSTER_HOME"])
            yesterday = (fire_at.date() - timedelta(days=1)).isoformat()
            wanted = {f"{yesterday}|{s}" for s in symbols}

            def done(instance: dg.DagsterInstance) -> bool:
                """Every symbol's yesterday is materialized in the last layer (enriched 1d)."""
                key = dg.AssetKey(["crypto", "enriched_ohlcv_1d"])
                return wanted <= set(instance.get_materialized_partitions(key))

            log = (tmp / "daemon.log").open("w")
            with dg.DagsterInstance.from_config(str(home)) as instance:
                daemon = subprocess.Popen(
                    [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w",
                     str(tmp / "workspace.yaml")],
                    env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
                with PeakTreeRss(daemon.pid, interval=0.05) as rss:
                    try:
                        deadline = time.monotonic() + TICK_DEADLINE + RUNS_DEADLINE
                        runs: list = []
                        while time.monotonic() < deadline:
                            if daemon.poll() is not None:
                                raise RuntimeError(f"daemon exited:\n{(tmp / 'daemon.log').read_text()[-3000:]}")
                            runs = instance.get_runs(dg.RunsFilter(tags={"data_puller/trigger": "schedule"}))
                            if runs and all(r.is_finished for r in runs) and done(instance):
                                break
                            time.sleep(0.5)
                        else:
                            raise RuntimeError(f"runs not finished: {[(r.run_id, r.status) for r in runs]}\n"
                                               f"{(tmp / 'daemon.log').read_text()[-3000:]}")  # fmt: skip
                        failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
                        if failed:
                            raise RuntimeError(f"runs failed: {failed}\n{(tmp / 'daemon.log').read_text()[-3000:]}")
                        records = instance.get_run_records(dg.RunsFilter(run_ids=[r.run_id for r in runs]))
                        ticks = [t for state in instance.all_instigator_state() if state.name.endswith("_daily")
                                 for t in instance.get_ticks(state.instigator_origin_id, state.selector_id)]  # fmt: skip
                        tick_ts = min(t.timestamp for t in ticks if t.run_ids)
                        last_end = max(r.end_time for r in records)
                        first_start = min(r.start_time for r in records)
                    finally:
                        daemon.terminate()
                        try:
                            daemon.wait(30)
                        except subprocess.TimeoutExpired:
                            daemon.kill()
                        log.close()
        took = last_end - tick_ts
        return [row(f"daemon: daily update, {len(symbols)} symbols 1m (+1h/4h/1d, enriched), 50 ms latency",
                    len(symbols) * 1440, took, peak_rss_mb=rss.mib, target="< 30 s tick to last run end",
                    note=f"{len(runs)} runs; tick to first run start {first_start - tick_ts:.1f} s; "
                         f"tree RSS {rss.mib:.0f} MiB")]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CASES = {"daily_update": daily_update}
