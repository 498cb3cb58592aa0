"""Offline demo: backfill the bundled sample market data through every layer, then say what was written.

`make demo` runs `python -m data_puller_dagster.demo`. It uses demo/data_puller.demo.yaml, writes under
./demo_data (override with DATA_PULLER_HOME) and keeps Dagster's own state in ./demo_data/dagster_home, so
`dagster dev` afterwards shows every run, materialization and check of the demo.

The terminal gets one line per run and the summary; Dagster's full event log (thousands of DEBUG lines)
goes to demo_data/demo_dagster.log, because nobody reads it scrolling past and it hides the summary.
The summary reports the *current* state (rows stored, gaps in the stored candles, latest materialization
of each partition), so running the demo twice, or after the UI's sensors ran, prints the same numbers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

import dagster as dg
import duckdb
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "demo" / "data_puller.demo.yaml"
MARKET_DATA = REPO / "demo" / "market_data"
LOG_NAME = "demo_dagster.log"
SNIPPETS_BEGIN = "# --- analyst snippets (run as is) ---"
SNIPPETS_END = "# --- end of analyst snippets ---"


def _prepare_env(home: Path) -> Path:
    os.environ["DATA_PULLER_CONFIG"] = str(DEMO_CONFIG)
    os.environ["DATA_PULLER_HOME"] = str(home)
    os.environ.setdefault("DATA_PULLER_DEMO_MARKET_DATA", str(MARKET_DATA))
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    return dagster_home


def _ranges(start: date, end: date, size: int) -> list[tuple[date, date]]:
    out, d = [], start
    while d <= end:
        e = min(d + timedelta(days=size - 1), end)
        out.append((d, e))
        d = e + timedelta(days=1)
    return out


def _rows_written(result: dg.ExecuteInProcessResult) -> int:
    """Rows of the run's main output (normalized candles or LLM examples): what a reader cares about.

    Summed over the run's partitions: these layers record each day's own row count.
    """
    rows = 0
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        if mat.asset_key.path[-1].startswith(("normalized_", "llm_dataset_")):
            rows += int(getattr(mat.metadata.get("dagster/row_count"), "value", 0) or 0)
    return rows


def _execute(job: dg.JobDefinition, instance: dg.DagsterInstance, log: TextIO, label: str, out: TextIO,
             tags: dict[str, str] | None = None, days: int | None = None) -> None:
    """Run one job in-process with Dagster's console log sent to `log`; print one progress line."""
    t0 = time.monotonic()
    with contextlib.redirect_stderr(log):
        result = job.execute_in_process(instance=instance, tags=tags, raise_on_error=False)
    log.flush()
    span = f" ({days} days)" if days else ""
    print(f"{label}{span}: {time.monotonic() - t0:.1f} s, {_rows_written(result)} rows", file=out, flush=True)
    if not result.success:
        raise SystemExit(f"demo run failed: {label}; the Dagster log is {log.name}")


def run_demo(home: Path, out: TextIO = sys.stdout) -> dict:
    """Materialize every layer of every demo feed; return a summary (also printed)."""
    _prepare_env(home)
    from data_puller_dagster.automation.jobs import (
        dataset_files_job_name,
        dataset_job_name,
        pipeline_job_name,
    )
    from data_puller_dagster.config import load_config
    from data_puller_dagster.definitions import build_definitions

    cfg = load_config()
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.get()
    log_path = home / LOG_NAME
    print(f"Dagster's full log: {log_path}", file=out, flush=True)
    started = time.monotonic()
    runs = 0
    with log_path.open("w") as log:
        for stage in ("pipeline", "dataset"):
            if stage == "dataset" and not cfg.dataset.enabled:
                continue
            for feed in cfg.feeds:
                job = defs.resolve_job_def(pipeline_job_name(feed) if stage == "pipeline" else dataset_job_name(feed))
                for key in feed.symbol_keys:
                    for a, b in _ranges(feed.start_date, feed.end_date, cfg.runs.max_partitions_per_run):
                        tags = {
                            "dagster/asset_partition_range_start": f"{a.isoformat()}|{key}",
                            "dagster/asset_partition_range_end": f"{b.isoformat()}|{key}",
                            "data_puller/trigger": "demo",
                        }
                        _execute(job, instance, log, f"[{stage}] {feed.name} {key} {a}..{b}", out, tags,
                                 (b - a).days + 1)
                        runs += 1
        if cfg.dataset.enabled:
            for feed in cfg.feeds:
                _execute(defs.resolve_job_def(dataset_files_job_name(feed)), instance, log,
                         f"[files] {feed.name} dataset files", out)
                runs += 1
    summary = summarize(cfg, instance)
    summary["runs"] = runs
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["log"] = str(log_path)
    print_summary(summary, cfg, out)
    return summary


def _latest_per_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, dict]:
    """Metadata of the newest materialization of each partition (records come newest first)."""
    latest: dict[str, dict] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(key, limit=1000, cursor=cursor)
        for r in page.records:
            mat = r.asset_materialization
            if mat is not None and r.partition_key not in latest:
                latest[r.partition_key] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        if not page.has_more:
            return latest
        cursor = page.cursor


def _stored_gaps(con: duckdb.DuckDBPyConnection, feed) -> tuple[int, int]:
    """Missing candles and gap segments of the candles stored now, per symbol against the calendar.

    Computed from the warehouse rather than summed from materialization metadata, which holds one
    entry per run ever recorded (a refetch or a second demo would count the same gap again).
    """
    from data_puller_dagster.transform.gaps import find_gaps

    table = f'"{feed.name}"."normalized_ohlcv_{feed.timeframe}"'
    ts = con.execute(f"SELECT symbol, ts FROM {table} WHERE is_final").df()  # noqa: S608
    missing = segments = 0
    start, end = pd.Timestamp(feed.start_date), pd.Timestamp(feed.end_date) + pd.Timedelta(days=1)
    for display in feed.symbol_keys.values():
        report = find_gaps(ts.loc[ts["symbol"] == display, "ts"], feed.asset_class, feed.timeframe, start, end)
        missing += len(report.missing_index)
        segments += len(report.segments)
    return missing, segments


def summarize(cfg, instance: dg.DagsterInstance) -> dict:
    """Rows per table in the DuckDB warehouse, gaps in the stored candles, latest quality per partition."""
    from data_puller_dagster.assets.naming import asset_key, dataset_files_key

    tables: dict[str, int] = {}
    feeds = {}
    with duckdb.connect(str(cfg.storage.duckdb_file), read_only=True) as con:
        names = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
        ).fetchall()
        for schema, table in names:
            ident = f'"{schema}"."{table}"'
            tables[f"{schema}.{table}"] = con.execute(f"SELECT count(*) FROM {ident}").fetchone()[0]  # noqa: S608
        for feed in cfg.feeds:
            missing, segments = _stored_gaps(con, feed)
            latest = _latest_per_partition(instance, asset_key(feed, "normalized", feed.timeframe))
            files = instance.fetch_materializations(dataset_files_key(feed), limit=1).records
            manifest = None
            if files and files[0].asset_materialization:
                m = files[0].asset_materialization.metadata
                manifest = {k: getattr(v, "value", v) for k, v in m.items()}
            feeds[feed.name] = {
                "missing_candles": missing,
                "gap_segments": segments,
                "quarantined_rows": tables.get(f"{feed.name}.quarantine_ohlcv_{feed.timeframe}", 0),
                "quality_min": min((float(m.get("quality_score", 1.0)) for m in latest.values()), default=None),
                "dataset": manifest,
            }
    return {"tables": tables, "feeds": feeds, "paths": {
        "parquet": cfg.storage.parquet_location,
        "duckdb": str(cfg.storage.duckdb_file),
        "jsonl": str(cfg.storage.jsonl_location),
        "datasets": str(cfg.storage.datasets_location),
    }}


def analyst_snippets(cfg) -> str:
    """The README's analyst queries, on this demo's own paths, symbol and dates (runnable as printed)."""
    forex = next((f for f in cfg.feeds if f.asset_class == "forex"), cfg.feeds[0])
    key = next(iter(forex.symbol_keys))
    since = (forex.start_date + timedelta(days=(forex.end_date - forex.start_date).days // 2)).isoformat()
    tf = (forex.derived_timeframes or [forex.timeframe])[0]
    table = f"ohlcv_{tf}" if forex.derived_timeframes else f"normalized_ohlcv_{tf}"
    root = f"{cfg.storage.parquet_location}/{forex.name}/{table}"
    crypto = cfg.feeds[0]
    ds_dir = Path(cfg.storage.datasets_location) / crypto.name / f"llm_{crypto.llm_timeframe}"
    return "\n".join([
        SNIPPETS_BEGIN,
        "import duckdb, pandas as pd, pyarrow.dataset as ds",
        "print(duckdb.sql(f\"\"\"SELECT symbol, ts, close",
        f"    FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)",
        f"    WHERE symbol_key = '{key}' AND date >= DATE '{since}' ORDER BY ts\"\"\").df())",
        f"dataset = ds.dataset({root!r}, format='parquet', partitioning='hive')",
        f"print(dataset.to_table(filter=(ds.field('symbol_key') == {key!r}) & (ds.field('date') >= {since!r}))"
        ".num_rows)",
        f"print(len(pd.read_parquet({root!r}, filters=[('symbol_key', '==', {key!r})])))",
        f"con = duckdb.connect({str(cfg.storage.duckdb_file)!r}, read_only=True)",
        f"print(con.execute('SELECT count(*) FROM {forex.name}.{table}').fetchone()[0])",  # noqa: S608
        f"print(open({str(ds_dir / 'train.jsonl')!r}).readline()[:200])",
        SNIPPETS_END,
    ])


def print_summary(summary: dict, cfg, out: TextIO = sys.stdout) -> None:
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("")
    p("=" * 78)
    p(f"demo finished: {summary['runs']} Dagster runs in {summary['seconds']} s (SAMPLE data, offline)")
    p("-" * 78)
    p(f"{'table (DuckDB schema.table)':<50}{'rows':>10}")
    for name, rows in summary["tables"].items():
        p(f"{name:<50}{rows:>10}")
    p("-" * 78)
    p(f"{'feed':<16}{'missing candles':>16}{'gap segments':>14}{'quarantined':>13}{'min quality':>13}")
    for name, f in summary["feeds"].items():
        q = f"{f['quality_min']:.3f}" if f["quality_min"] is not None else "-"
        p(f"{name:<16}{f['missing_candles']:>16}{f['gap_segments']:>14}{f['quarantined_rows']:>13}{q:>13}")
    p("-" * 78)
    for name, f in summary["feeds"].items():
        if f["dataset"]:
            rows = {k: v for k, v in f["dataset"].items() if k.endswith("_rows")}
            p(f"LLM dataset {name}: {f['dataset'].get('path')} {rows or ''}".rstrip())
    for k, v in summary["paths"].items():
        p(f"{k:<9} {v}")
    p(f"{'log':<9} {summary.get('log', '')}")
    p("-" * 78)
    p("Query the demo's output (the README's 'For analysts' snippets on these paths; paste into python):")
    p(analyst_snippets(cfg))
    p("-" * 78)
    p("Open the UI on this demo (schedules and sensors are off in the demo config, so nothing rewrites it;")
    p("to try them, start them in the UI under Automation):")
    p(f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} DATA_PULLER_CONFIG={DEMO_CONFIG} \\")
    p(f"  DATA_PULLER_HOME={os.environ['DATA_PULLER_HOME']} DATA_PULLER_DEMO_MARKET_DATA={MARKET_DATA} \\")
    p("  .venv/bin/dagster dev")
    p("=" * 78)


def main() -> None:
    home = Path(os.environ.get("DATA_PULLER_HOME") or "demo_data").absolute()
    run_demo(home)


if __name__ == "__main__":
    main()
