"""Offline demo: backfill the bundled sample market data through every layer, then say what was written.

`make demo` runs `python -m data_puller_dagster.demo`. It uses demo/data_puller.demo.yaml, writes under
./demo_data (override with DATA_PULLER_HOME) and keeps Dagster's own state in ./demo_data/dagster_home, so
`dagster dev` afterwards shows every run, materialization and check of the demo.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import duckdb

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "demo" / "data_puller.demo.yaml"
MARKET_DATA = REPO / "demo" / "market_data"


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


def run_demo(home: Path, out=sys.stdout) -> dict:
    """Materialize every layer of every demo feed; return a summary (also printed)."""
    _prepare_env(home)
    from data_puller_dagster.automation.jobs import dataset_job_name, pipeline_job_name
    from data_puller_dagster.config import load_config
    from data_puller_dagster.definitions import build_definitions

    cfg = load_config()
    defs = build_definitions(cfg)
    instance = dg.DagsterInstance.get()
    started = time.monotonic()
    runs = 0
    for stage in ("pipeline", "dataset"):
        for feed in cfg.feeds:
            if stage == "dataset" and not cfg.dataset.enabled:
                continue
            job = defs.resolve_job_def(pipeline_job_name(feed) if stage == "pipeline" else dataset_job_name(feed))
            for key in feed.symbol_keys:
                for a, b in _ranges(feed.start_date, feed.end_date, cfg.runs.max_partitions_per_run):
                    print(f"[{stage}] {feed.name} {key} {a}..{b}", file=out, flush=True)
                    result = job.execute_in_process(
                        instance=instance,
                        tags={
                            "dagster/asset_partition_range_start": f"{a.isoformat()}|{key}",
                            "dagster/asset_partition_range_end": f"{b.isoformat()}|{key}",
                            "data_puller/trigger": "demo",
                        },
                    )
                    runs += 1
                    if not result.success:
                        raise SystemExit(f"demo run failed: {feed.name} {key} {a}..{b}; see the logs above")
    if cfg.dataset.enabled:
        from data_puller_dagster.automation.jobs import dataset_files_job_name

        for feed in cfg.feeds:
            defs.resolve_job_def(dataset_files_job_name(feed)).execute_in_process(instance=instance)
            runs += 1
    summary = summarize(cfg, instance)
    summary["runs"] = runs
    summary["seconds"] = round(time.monotonic() - started, 1)
    print_summary(summary, cfg, out)
    return summary


def summarize(cfg, instance: dg.DagsterInstance) -> dict:
    """Rows per table in the DuckDB warehouse, gaps and quality from the normalized materializations."""
    from data_puller_dagster.assets.naming import asset_key, dataset_files_key

    tables: dict[str, int] = {}
    with duckdb.connect(str(cfg.storage.duckdb_file), read_only=True) as con:
        names = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables ORDER BY 1, 2"
        ).fetchall()
        for schema, table in names:
            ident = f'"{schema}"."{table}"'
            tables[f"{schema}.{table}"] = con.execute(f"SELECT count(*) FROM {ident}").fetchone()[0]  # noqa: S608
    feeds = {}
    for feed in cfg.feeds:
        records = instance.fetch_materializations(asset_key(feed, "normalized", feed.timeframe), limit=10_000).records
        per_run: dict[str, dict] = {}
        for r in records:
            md = r.asset_materialization.metadata if r.asset_materialization else {}
            per_run[r.run_id] = {k: getattr(v, "value", v) for k, v in md.items()}
        files = instance.fetch_materializations(dataset_files_key(feed), limit=1).records
        manifest = None
        if files and files[0].asset_materialization:
            m = files[0].asset_materialization.metadata
            manifest = {k: getattr(v, "value", v) for k, v in m.items()}
        feeds[feed.name] = {
            "missing_candles": sum(int(m.get("missing_candles", 0)) for m in per_run.values()),
            "gap_segments": sum(int(m.get("gap_segments", 0)) for m in per_run.values()),
            "quarantined_rows": sum(int(m.get("quarantined_rows", 0)) for m in per_run.values()),
            "quality_min": min((float(m.get("quality_score", 1.0)) for m in per_run.values()), default=None),
            "dataset": manifest,
        }
    return {"tables": tables, "feeds": feeds, "paths": {
        "parquet": cfg.storage.parquet_location,
        "duckdb": str(cfg.storage.duckdb_file),
        "jsonl": str(cfg.storage.jsonl_location),
        "datasets": str(cfg.storage.datasets_location),
    }}


def print_summary(summary: dict, cfg, out=sys.stdout) -> None:
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
            p(f"LLM dataset {name}: {f['dataset'].get('path')}")
    for k, v in summary["paths"].items():
        p(f"{k:<9} {v}")
    p("-" * 78)
    p("Open the UI on this demo:")
    p(f"  DAGSTER_HOME={os.environ['DAGSTER_HOME']} DATA_PULLER_CONFIG={DEMO_CONFIG} \\")
    p(f"  DATA_PULLER_HOME={os.environ['DATA_PULLER_HOME']} DATA_PULLER_DEMO_MARKET_DATA={MARKET_DATA} \\")
    p("  .venv/bin/dagster dev")
    p("=" * 78)


def main() -> None:
    home = Path(os.environ.get("DATA_PULLER_HOME") or "demo_data").absolute()
    run_demo(home)


if __name__ == "__main__":
    main()
