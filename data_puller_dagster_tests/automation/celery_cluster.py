"""A throw-away scale-out deployment on this machine, used by test_celery_scale_out.py and benchmarks/:
a RabbitMQ vhost and a Postgres database of its own (created here, deleted afterwards), the shipped
deploy/dagster.celery.yaml instance, dagster-celery workers started with the documented command, and
backfill runs launched with `dagster job execute` (one per symbol, as Dagster splits a backfill).

Why real processes: what is proven (steps on several hosts' workers, one budget for all of them, a
worker killed mid-step) only exists across processes; nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = {
    "host": os.environ.get("DAGSTER_TEST_PG_HOST", "127.0.0.1"),
    "port": os.environ.get("DAGSTER_TEST_PG_PORT", "5432"),
    "user": os.environ.get("DAGSTER_TEST_PG_USER", "postgres"),
    "password": os.environ.get("DAGSTER_TEST_PG_PASSWORD", ""),
}
AMQP = os.environ.get("DATA_PULLER_TEST_AMQP", "127.0.0.1:5672")
REDIS_URL = os.environ.get("DATA_PULLER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Unavailable(Exception):
    """A service the deployment needs is not there (the test skips locally, fails under CI)."""


def _rabbitmqctl(*args: str) -> None:
    exe = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    try:
        subprocess.run([exe, "-q", *args], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise Unavailable(f"rabbitmqctl {args[0]} failed ({e}); is RabbitMQ running on {AMQP}?") from None


@contextmanager
def vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for guest: the broker URL of a deployment nobody else shares."""
    name = f"dp_celery_{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{AMQP}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)


@contextmanager
def database() -> Iterator[str]:
    """A fresh Postgres database (instance storage and the postgres destination); dropped afterwards."""
    import psycopg2
    from psycopg2 import sql

    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as e:
        raise Unavailable(f"PostgreSQL at {PG['host']}:{PG['port']} is unreachable ({e})") from None
    admin.autocommit = True
    name = f"dp_celery_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


def check_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as e:
        raise Unavailable(f"Redis at {REDIS_URL} is unreachable ({e})") from None


@dataclass
class Deployment:
    """Paths and environment of one deployment; workers and runs are started from it."""

    root: Path
    broker: str
    db: str
    config: dict[str, Any]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "dagster_home"

    @property
    def config_path(self) -> Path:
        return self.root / "data_puller.yaml"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "DATA_PULLER_CONFIG": str(self.config_path),
            "DATA_PULLER_HOME": str(self.root / "data"),
            "DATA_PULLER_CELERY_BROKER": self.broker,
            "DAGSTER_PG_HOST": PG["host"],
            "DAGSTER_PG_USER": PG["user"],
            "DAGSTER_PG_PASSWORD": PG["password"],
            "DAGSTER_PG_DB": self.db,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }

    def write(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / "deploy" / "dagster.celery.yaml", self.home / "dagster.yaml")
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def instance(self) -> Any:
        """The deployment's Dagster instance, opened from this process (its env set temporarily)."""
        import dagster as dg

        saved = {k: os.environ.get(k) for k in self.env if k.startswith("DAGSTER_PG_")}
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("DAGSTER_PG_")})
        try:
            return dg.DagsterInstance.from_config(str(self.home))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @staticmethod
    def set_pools(instance: Any, limits: dict[str, int] | None = None) -> None:
        """`dagster instance concurrency set binance 4`, before the first run: runs that start together
        on a fresh Postgres instance otherwise race to create the pool's row from `default_limit`, and
        the losers fail (dagster 1.13.27: the UPDATE after the unique violation runs in the aborted
        transaction)."""
        for pool, limit in (limits or {"binance": 4, "twelvedata": 2}).items():
            instance.event_log_storage.set_concurrency_slots(pool, limit)

    def start_worker(self, name: str, concurrency: int = 2, worker_yaml: Path | None = None) -> None:
        """The documented command, in a process group of its own (so it can be killed as a host dies)."""
        log = open(self.root / f"worker-{name}.log", "wb")  # noqa: SIM115 - closed with the process
        self.workers[name] = subprocess.Popen(
            [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
             "-y", str(worker_yaml or REPO / "deploy" / "celery_worker.yaml"), "-n", name, "-l", "INFO",
             "--", f"--concurrency={concurrency}", "--without-gossip", "--without-mingle"],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_workers_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.workers)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                if self.workers[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited: {self.worker_log(name)[-3000:]}")
                if " ready." in self.worker_log(name):
                    pending.discard(name)
            time.sleep(0.2)
        if pending:
            raise TimeoutError(f"workers {sorted(pending)} not ready after {timeout}s")

    def worker_log(self, name: str) -> str:
        return (self.root / f"worker-{name}.log").read_text(errors="replace")

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group (wrapper, celery main process, pool children)."""
        proc = self.workers[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_workers(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=20)
            else:  # the wrapper exited: its celery children may still live in the group
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def launch(self, job: str, start: str, end: str) -> subprocess.Popen[bytes]:
        """One ranged run (`dagster job execute`, the README's in-process command), orchestrated here."""
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}
        log = open(self.root / f"run-{start.replace('|', '_')}.log", "wb")  # noqa: SIM115
        return subprocess.Popen(
            [str(BIN / "dagster"), "job", "execute", "-m", "data_puller_dagster.definitions", "-j", job,
             "--tags", json.dumps(tags)],
            cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def step_workers(instance: Any) -> list[dict[str, Any]]:
    """Every step execution of every run: run, step, worker (celery hostname), pid, succeeded or not.

    The worker comes from dagster-celery's "Executing steps ... in celery worker" engine event, which
    each task writes before its step starts; the pid from the STEP_START that follows it (the worker's
    pool process), and `pid_ok` says the STEP_SUCCESS came from that same process."""
    import dagster as dg

    out: list[dict[str, Any]] = []
    for run in instance.get_runs():
        started: dict[str, list[dict[str, Any]]] = {}
        for e in instance.all_logs(run.run_id):
            ev = e.dagster_event
            if ev is None or ev.step_key is None:
                continue
            if ev.event_type == dg.DagsterEventType.ENGINE_EVENT and "celery worker" in (e.message or ""):
                md = ev.engine_event_data.metadata if ev.engine_event_data else {}
                worker = md.get("Celery worker")
                host = getattr(worker, "text", str(worker))
                started.setdefault(ev.step_key, []).append(
                    {"run": run.run_id, "step": ev.step_key, "worker": host.split("@")[0], "pid": None,
                     "succeeded": False, "pid_ok": False}
                )  # fmt: skip
            elif ev.event_type == dg.DagsterEventType.STEP_START and started.get(ev.step_key):
                started[ev.step_key][-1]["pid"] = ev.pid
            elif ev.event_type == dg.DagsterEventType.STEP_SUCCESS and started.get(ev.step_key):
                started[ev.step_key][-1]["succeeded"] = True
                started[ev.step_key][-1]["pid_ok"] = started[ev.step_key][-1]["pid"] == ev.pid
        out.extend(x for xs in started.values() for x in xs)
    return out


def backfill_config(
    data_dir: Path,
    fake_url: str,
    db: str,
    symbols: list[str],
    start: date,
    days: int,
    limit: int,
    window: float,
    *,
    shared: bool = True,
) -> dict[str, Any]:
    """data_puller.yaml of the scale-out backfill: one 1m Binance feed (raw + normalized), Parquet and
    Postgres routes (stores every worker reaches), the celery executor, and the weight limit of the
    stand-in (`limit` per `window` seconds) shared in Redis unless `shared` is False."""
    pg = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{db}"
    binance: dict[str, Any] = {
        "base_url": fake_url, "use_archive": False, "max_concurrency": 4, "max_retries": 3,
        "weight_budget_per_minute": limit, "weight_safety_fraction": 0.8, "budget_window_seconds": window,
    }  # fmt: skip
    if shared:
        binance["shared_budget"] = REDIS_URL
    return {
        "storage": {"data_dir": str(data_dir), "postgres_url": pg, "primary": "parquet"},
        "sources": {"binance": binance},
        "feeds": [
            {
                "name": "crypto",
                "source": "binance",
                "asset_class": "crypto",
                "timeframe": "1m",
                "symbols": list(symbols),
                "start_date": start.isoformat(),
                "end_date": (start + timedelta(days=days - 1)).isoformat(),
                "enrich_timeframes": [],
            }
        ],  # fmt: skip
        "dataset": {"enabled": False},
        "routes": [{"id": "lake", "destinations": ["parquet", "postgres"]}],
        "runs": {
            "executor": "celery",
            "max_partitions_per_run": days,
            "retry_max": 1,
            "retry_delay_seconds": 1,
        },
        "automation": {"schedule": {"enabled": False}, "gap_sensor": {"enabled": False}},
    }


def serve(fake: Any, symbols: list[str], start: date, days: int, limit: int, window: float) -> None:
    """The stand-in's candles (deterministic per symbol: seed = its index) and its enforced limit."""
    import pandas as pd

    from data_puller_dagster_tests.fakes.binance import generate_klines

    for i, s in enumerate(symbols):
        fake.add(s, "1m", generate_klines(pd.Timestamp(start), days * 1440, seed=i))
    fake.enforce_weight(limit, window, ban_after_429s=3, ban_seconds=30)


def delete_budget_keys(fake_url: str) -> None:
    """The Redis keys of the stand-in's scope (its port makes them unique to this deployment)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"data_puller:budget:*:{fake_url.split('//', 1)[1]}:*"))
    if keys:
        client.delete(*keys)


def run_backfill(
    dep: Deployment,
    instance: Any,
    symbols: list[str],
    start: date,
    days: int,
    *,
    kill: str | None = None,
    timeout: float = 240,
) -> dict[str, Any]:
    """Launch one ranged run per symbol (as Dagster splits a backfill) and wait for all of them; with
    `kill`, SIGKILL that worker once it has finished two steps and is fetching (a raw step). Returns
    the orchestrators' exit codes, the steps the killed worker was running, and the wall time."""
    end = start + timedelta(days=days - 1)
    started = time.monotonic()
    runs = {s: dep.launch("crypto_pipeline", f"{start}|{s}", f"{end:%Y-%m-%d}|{s}") for s in symbols}
    deadline = started + timeout
    killed_running: list[dict[str, Any]] = []
    while any(p.poll() is None for p in runs.values()):
        if time.monotonic() > deadline:
            for p in runs.values():
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise TimeoutError(f"backfill did not finish in {timeout}s")
        if kill is not None and not killed_running:
            steps = [x for x in step_workers(instance) if x["worker"] == kill]
            running = [x for x in steps if not x["succeeded"]]
            if any("raw" in x["step"] for x in running) and sum(x["succeeded"] for x in steps) >= 2:
                dep.kill_worker(kill)
                killed_running = running
        time.sleep(0.5)
    return {"codes": {s: p.returncode for s, p in runs.items()}, "killed_running": killed_running,
            "seconds": time.monotonic() - started}  # fmt: skip
