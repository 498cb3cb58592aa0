"""LocalRunLauncher: Dagster's DefaultRunLauncher plus a run-worker health check, so run monitoring marks
a run whose process died without a word (kill -9, OOM kill, reboot) FAILURE within a poll interval.

Why: the DefaultRunLauncher cannot health-check a run worker, so the monitoring daemon can fail a STARTED
run only by `max_runtime_seconds` (6 h here). Until then the run stays STARTED, its days are
"in progress", and the gap sensor skips them. A daemon-launched worker killed alone is failed by its code
server within a second; nobody watches a run executed by the CLI (`dagster job execute`, in-process) or a
run whose whole process tree died with its code server.

How: the process that executes a run records its pid on the run's RUN_START event (runs launched by the
daemon and CLI runs alike). The run is dead when no process has that pid any more, when the pid belongs
to a zombie, or when the process with that pid started after the run did (the pid was reused).

Limits (why this is the single-machine default, see dagster.yaml):
- A pid means something only on the machine (pid namespace) that ran the worker. A run launched
  through this launcher is tagged with the launching host (`data_puller/launcher_host`), and its worker
  is local only when the code server that spawned it is reached on a loopback address or a unix socket
  (Dagster's own `dagster/grpc_info` tag). Runs launched elsewhere are reported RUNNING ("cannot tell")
  and left to `max_runtime_seconds`.
- Runs that no launcher launched (`dagster job execute`, `execute_in_process`) carry neither tag; they
  are assumed to run on this machine (`assume_untagged_runs_local`, default true). That holds for the
  embedded SQLite instance (its files are on a local disk, shared by every process that uses it) but not
  for CLI runs executed in another container or host against a shared instance: set it false there.
- The start-time check needs Linux's /proc; elsewhere only the pid's existence is checked.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from typing import Any, Self

from dagster import DagsterEventType, DagsterRun, Field
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._serdes import ConfigurableClassData

HOST_TAG = "data_puller/launcher_host"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
# /proc start times have clock-tick resolution and btime whole seconds: slack before "started later".
START_SLACK_SECONDS = 2.0


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers the monitoring daemon can health-check on this machine."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, assume_untagged_runs_local: bool = True):
        self.assume_untagged_runs_local = assume_untagged_runs_local
        super().__init__(inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        return {
            "assume_untagged_runs_local": Field(
                bool,
                is_required=False,
                default_value=True,
                description="Health-check runs no launcher launched (CLI runs) as if they run on this machine.",
            )
        }

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        # Tagged before the worker starts, so no health check ever sees a started run without it.
        self._instance.add_run_tags(context.dagster_run.run_id, {HOST_TAG: socket.gethostname()})
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """FAILED when the run's worker process is gone from this machine; RUNNING when it is alive or
        when this launcher cannot tell (monitoring fails every other status, and max_runtime stays
        the backstop)."""
        remote = self._not_local(run)
        if remote:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"cannot check the run worker: {remote}")
        records = self._instance.get_records_for_run(
            run.run_id, of_type=DagsterEventType.RUN_START, limit=1, ascending=False
        ).records
        event = records[0].event_log_entry if records else None
        pid = event.dagster_event.pid if event and event.dagster_event else None
        if event is None or pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no RUN_START event with a pid yet")
        dead = process_gone(pid, event.timestamp)
        if dead:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"the run worker (pid {pid} on {socket.gethostname()}) {dead}; it died without "
                "reporting (killed, out of memory, or the machine restarted)",
                run_worker_id=str(pid),
            )
        return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))

    def _not_local(self, run: DagsterRun) -> str | None:
        """Why the run's worker pid cannot be checked from here (None: it can)."""
        host = run.tags.get(HOST_TAG)
        grpc = run.tags.get(GRPC_INFO_TAG)
        if host is None and grpc is None:
            return None if self.assume_untagged_runs_local else "untagged run (assume_untagged_runs_local: false)"
        if host is None:
            return "launched by another run launcher"
        if host != socket.gethostname():
            return f"launched on host {host!r}"
        try:
            info = json.loads(grpc) if grpc else {}
        except ValueError:
            return "unreadable dagster/grpc_info tag"
        if info.get("host") and not info.get("socket") and info["host"] not in LOOPBACK_HOSTS:
            return f"run worker spawned by the code server at {info['host']!r}"
        return None


def process_gone(pid: int, run_started_at: float) -> str | None:
    """How the process `pid`, which was running at `run_started_at` (epoch s), is gone; None if alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "no longer exists"
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return None
    state, started = stat
    if state in ("Z", "X"):
        return "has exited (zombie)"
    if started > run_started_at + START_SLACK_SECONDS:
        return "no longer exists (its pid now belongs to a process started after the run)"
    return None


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state, start time as epoch s) from /proc; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open("/proc/stat") as f:
            btime = next(float(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: the fields after it start after the last ')'.
    rest = stat[stat.rindex(")") + 2 :].split()
    return rest[0], btime + int(rest[19]) / os.sysconf("SC_CLK_TCK")
