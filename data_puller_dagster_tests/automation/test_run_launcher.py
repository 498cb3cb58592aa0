"""LocalRunLauncher's health check on a real instance (the shipped dagster.yaml) with real runs: a run
whose process was SIGKILLed mid-op is FAILED, a live run is RUNNING, a run from another host or a pid
started after the run are told apart. Seconds: the daemon test (test_dead_run_daemon) covers the loop."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg

from data_puller_dagster.automation.run_launcher import HOST_TAG, LocalRunLauncher, process_gone

REPO = Path(__file__).resolve().parents[2]

DIE = textwrap.dedent(
    """
    import os, signal, sys
    import dagster as dg

    @dg.op
    def die():
        os.kill(os.getpid(), signal.SIGKILL)  # no RUN_FAILURE, no cleanup: like kill -9 or an OOM kill

    @dg.job
    def doomed():
        die()

    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        doomed.execute_in_process(instance=instance)
    """
)


def test_health_check_of_dead_live_and_foreign_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, LocalRunLauncher) and launcher.supports_check_run_worker_health

        proc = subprocess.run([sys.executable, "-c", DIE, str(home)], capture_output=True, timeout=120)
        assert proc.returncode == -9, proc.stderr.decode()[-2000:]
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.STARTED  # nobody reported its end
        health = launcher.check_run_worker_health(run)
        assert health.status.value == "FAILED"
        assert f"on {socket.gethostname()}) no longer exists" in (health.msg or "")

        # The same run as if launched on another machine: its pid means nothing here.
        instance.add_run_tags(run.run_id, {HOST_TAG: "elsewhere"})
        foreign = launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))
        assert foreign.status.value == "RUNNING" and "launched on host 'elsewhere'" in (foreign.msg or "")

        seen = {}

        @dg.op
        def look(context) -> None:  # (no annotation: a string under `from __future__ import annotations`)
            seen["health"] = context.instance.run_launcher.check_run_worker_health(context.dagster_run)

        @dg.job
        def alive():
            look()

        assert alive.execute_in_process(instance=instance).success
        assert seen["health"].status.value == "RUNNING"


def test_a_reused_pid_counts_as_dead() -> None:
    now = time.time()
    assert process_gone(os.getpid(), now) is None  # alive, started before "now"
    assert "started after the run" in (process_gone(os.getpid(), 0.0) or "")  # run older than the process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_gone(child.pid, now) == "no longer exists"
