"""The user's path: the commands users run, as subprocesses, on the shipped embedded instance.

Each case writes a `data_puller.yaml` (one crypto feed, Parquet + DuckDB routes, `runs.backfill_policy:
single_run`) and a DAGSTER_HOME holding the repository's own `dagster.yaml` (SQLite storage), starts the
fake Binance REST server in another process (`latency` seconds per request), runs the command and reports
wall time, CPU (user + sys of the whole process tree, from the kernel's accounting of waited-for children)
and peak RSS of the process tree (sum over the tree, sampled every 20 ms from /proc).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import START, row, served

REPO = Path(__file__).resolve().parent.parent
DAYS = 366  # 2024 is a leap year: 527,040 candles
LAYERS_3 = "crypto/raw_ohlcv_1m,crypto/normalized_ohlcv_1m,crypto/quarantine_ohlcv_1m"


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            continue
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakTreeRss:
    """Peak resident memory of a process and all its descendants (summed), sampled from /proc in a
    thread while the `with` block runs; `mib` after it."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval, self._peak_kib = pid, interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self._peak_kib = max(self._peak_kib, sum(_rss_kib(p) for p in _tree(self.pid)))
            self._done.wait(self.interval)

    def __enter__(self) -> PeakTreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return self._peak_kib / 1024


def measure(cmd: list[str], env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Run cmd; wall seconds, CPU seconds of the tree, peak summed RSS (MiB), exit code, output tail."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with PeakTreeRss(proc.pid) as rss:
        out, _ = proc.communicate()
        wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss_mb": rss.mib, "rc": proc.returncode, "out": out}


def workspace(tmp: Path, url: str, *, symbols: list[str], layers: str = "all") -> dict[str, str]:
    """data_puller.yaml + DAGSTER_HOME (the shipped dagster.yaml) under tmp; the environment to run in."""
    feed: dict[str, Any] = {
        "name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
        "symbols": symbols, "start_date": START, "end_date": "2024-12-31",
    }  # fmt: skip
    if layers == "all":
        feed.update(derived_timeframes=["1h", "4h", "1d"], enrich_timeframes=["1h", "4h", "1d"],
                    dataset_timeframe="1h")  # fmt: skip
    cfg = {
        "version": 1,
        "storage": {"data_dir": str(tmp / "data"), "primary": "parquet"},
        "sources": {"binance": {"base_url": url, "use_archive": False}},
        "feeds": [feed],
        "dataset": {"min_quality": 0.0},
        "routes": [{"id": "warehouse", "destinations": ["parquet", "duckdb"]}],
        "runs": {"backfill_policy": "single_run"},
    }
    (tmp / "data_puller.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    home = tmp / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DATA_PULLER_"))}
    env.update(DAGSTER_HOME=str(home), DATA_PULLER_CONFIG=str(tmp / "data_puller.yaml"), PYTHONUNBUFFERED="1")
    return env


def dagster_bin() -> str:
    return str(Path(sys.executable).with_name("dagster"))


QUERY = """
import statistics, sys, time, duckdb
times = []
for _ in range(3):
    t0 = time.perf_counter()
    df = duckdb.sql(\"\"\"
        SELECT symbol, ts, close, volume
        FROM read_parquet('{root}/crypto/normalized_ohlcv_1m/**/*.parquet', hive_partitioning=true)
        WHERE symbol_key = 'BTCUSDT' AND date >= DATE '2024-01-01' AND date <= DATE '2024-12-31'
        ORDER BY ts
    \"\"\").df()
    times.append(time.perf_counter() - t0)
print(len(df), statistics.median(times))
"""


def analyst_query(parquet_root: Path) -> tuple[int, float]:
    """The README's DuckDB query over a year of one symbol's 1m Parquet, in a fresh process (rows, median s)."""
    out = subprocess.run([sys.executable, "-c", QUERY.format(root=parquet_root)], check=True,
                         capture_output=True, text=True).stdout.split()  # fmt: skip
    return int(out[0]), float(out[1])


def _materialize(latency: float, days: int, label: str, query: bool = False) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        with served("rest", ["BTCUSDT"], DAYS * 1440, latency=latency) as url:
            env = workspace(tmp, url, symbols=["BTCUSDT"], layers="base")
            last = (date.fromisoformat(START) + timedelta(days=days - 1)).isoformat()
            cmd = [dagster_bin(), "asset", "materialize", "-m", "data_puller_dagster.definitions",
                   "--select", LAYERS_3, "--partition-range", f"{START}|BTCUSDT...{last}|BTCUSDT"]  # fmt: skip
            m = measure(cmd, env, tmp)
        if m["rc"] != 0:
            raise RuntimeError(f"{label} failed (exit {m['rc']}):\n{m['out'][-3000:]}")
        rows = _parquet_rows(tmp / "data" / "parquet")
        out = [row(label, rows, m["wall"], cpu_s=m["cpu"], peak_rss_mb=m["rss_mb"],
                   note=f"CPU {m['cpu']:.1f} s, tree RSS {m['rss_mb']:.0f} MiB")]  # fmt: skip
        if query:
            n, t = analyst_query(tmp / "data" / "parquet")
            out.append(row(f"analyst DuckDB query, {days} days of 1m Parquet (hive, symbol + date filter)", n, t,
                           target="< 0.3 s", note="median of 3, fresh process"))  # fmt: skip
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parquet_rows(root: Path) -> int:
    import duckdb

    files = [str(p) for p in root.rglob("*.parquet") if "normalized" in str(p)]
    if not files:
        return 0
    return duckdb.execute("select count(*) from read_parquet(?)", [files]).fetchall()[0][0]


def raw_normalized(quick: bool) -> list[dict]:
    days = 31 if quick else DAYS
    out = _materialize(0.05, days, f"CLI asset materialize raw+normalized, {days} days 1m, 50 ms latency")
    out[-1]["target"] = "wall <= freqtrade, CPU <= 2x, RSS < 600 MB"
    fast = _materialize(0.0, days, f"CLI asset materialize raw+normalized, {days} days 1m, 0 ms latency", query=True)
    fast[0]["target"] = "< 15 s"
    return out + fast


def raw_normalized_rss(quick: bool) -> list[dict]:
    """Peak RSS of the raw + normalized range run alone: the 0 ms case 3 times, median and range (RSS
    does not depend on latency or load; the 20 ms sampling catches DuckDB's short checkpoint peaks in
    some runs only, so single runs differ by +-15 MiB)."""
    days = 31 if quick else DAYS
    runs = [_materialize(0.0, days, "rss")[0] for _ in range(1 if quick else 3)]
    rss = sorted(r["peak_rss_mb"] for r in runs)
    mid = runs[[r["peak_rss_mb"] for r in runs].index(rss[len(rss) // 2])]
    return [row(f"CLI asset materialize raw+normalized, {days} days 1m: peak tree RSS, median of {len(runs)}",
                mid["rows"], mid["seconds"], cpu_s=mid["cpu_s"], peak_rss_mb=rss[len(rss) // 2],
                target="< 600 MB (572 MiB)", note=f"tree RSS {', '.join(f'{v:.0f}' for v in rss)} MiB")]  # fmt: skip


ALL_PARTITIONED = ",".join(f"crypto/{a}" for a in (
    "raw_ohlcv_1m", "normalized_ohlcv_1m", "quarantine_ohlcv_1m", "ohlcv_1h", "ohlcv_4h", "ohlcv_1d",
    "enriched_ohlcv_1h", "enriched_ohlcv_4h", "enriched_ohlcv_1d", "llm_dataset_1h"))  # fmt: skip


def all_layers(quick: bool) -> list[dict]:
    """Every layer of the year through the CLI: the partitioned assets as one range run, then the JSONL
    dataset files (an unpartitioned asset) - two `dagster asset materialize` commands, timed together."""
    days = 31 if quick else DAYS
    last = (date.fromisoformat(START) + timedelta(days=days - 1)).isoformat()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-all-"))
    try:
        with served("rest", ["BTCUSDT"], DAYS * 1440, latency=0.05) as url:
            env = workspace(tmp, url, symbols=["BTCUSDT"], layers="all")
            base = [dagster_bin(), "asset", "materialize", "-m", "data_puller_dagster.definitions", "--select"]
            first = measure([*base, ALL_PARTITIONED, "--partition-range", f"{START}|BTCUSDT...{last}|BTCUSDT"],
                            env, tmp)  # fmt: skip
            if first["rc"] != 0:
                raise RuntimeError(f"all layers failed (exit {first['rc']}):\n{first['out'][-3000:]}")
            second = measure([*base, "crypto/llm_dataset_1h_files"], env, tmp)
            if second["rc"] != 0:
                raise RuntimeError(f"dataset files failed (exit {second['rc']}):\n{second['out'][-3000:]}")
        manifest = next((tmp / "data" / "datasets").rglob("manifest.json"))
        examples = sum(json.loads(manifest.read_text()).get("rows", {}).values())
        wall, cpu = first["wall"] + second["wall"], first["cpu"] + second["cpu"]
        rss = max(first["rss_mb"], second["rss_mb"])
        return [row(f"CLI every layer (raw..enriched 1h/4h/1d, LLM dataset + files), {days} days 1m, 50 ms",
                    days * 1440, wall, cpu_s=cpu, peak_rss_mb=rss, target="< 60 s",
                    note=f"range run {first['wall']:.1f} s + files {second['wall']:.1f} s; CPU {cpu:.1f} s; "
                         f"{examples:,} examples")]  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


CASES = {"raw_normalized": raw_normalized, "raw_normalized_rss": raw_normalized_rss, "all_layers": all_layers}
