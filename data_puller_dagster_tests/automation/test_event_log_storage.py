"""The shipped instance's event log (BatchedSqliteEventLogStorage) stores exactly what Dagster's stock
SQLite event log stores, in batches.

The same range run of the real pipeline (raw -> normalized -> 1h -> enriched, 3 days of BTCUSDT, against
the fake Binance) runs on two real SQLite instances: one from the repository's dagster.yaml, one from
the same file without its `event_log_storage` section (Dagster's SqliteEventLogStorage). What the UI and
the sensors read must be the same on both: every partition's materializations with their metadata, the
planned events, materialized partitions, asset check executions and the run's event log. On the shipped
one the planned and materialization events must arrive as batches (one per run's plan, one per step
output), and connections use synchronous=NORMAL on the WAL-mode shards.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster import AssetKey, DagsterEventType, EventRecordsFilter

from data_puller_dagster.automation.event_log import BatchedSqliteEventLogStorage
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.assets.test_pipeline import crypto_config, run
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

REPO = Path(__file__).resolve().parents[2]
BATCH_LOG = "batch_sizes.log"


class CountingStorage(BatchedSqliteEventLogStorage):
    """The shipped storage, recording the size of every batch it is handed (in a file under base_dir)."""

    def store_event_batch(self, events):  # noqa: ANN001, D102
        with open(os.path.join(self._base_dir, BATCH_LOG), "a") as f:
            kinds = sorted({e.dagster_event_type.value for e in events if e.is_dagster_event})
            f.write(f"{len(events)} {','.join(kinds)}\n")
        super().store_event_batch(events)


def _home(tmp: Path, name: str, storage: dict | None) -> Path:
    home = tmp / name
    home.mkdir()
    cfg = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert cfg["event_log_storage"]["class"] == "BatchedSqliteEventLogStorage"  # what the product ships
    if storage is None:
        cfg.pop("event_log_storage")
    else:
        cfg["event_log_storage"] = storage
    (home / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    return home


def _materializations(instance: dg.DagsterInstance, key: AssetKey) -> dict[str, dict]:
    out = {}
    for rec in instance.fetch_materializations(key, limit=10_000).records:
        m = rec.asset_materialization
        assert m.partition not in out
        out[m.partition] = {k: v.value for k, v in m.metadata.items()}
    return out


def _figures(instance: dg.DagsterInstance, run_id: str, keys: list[AssetKey]) -> dict:
    planned = {
        k.to_user_string(): sorted(
            r.event_log_entry.dagster_event.partition
            for r in instance.get_event_records(
                EventRecordsFilter(DagsterEventType.ASSET_MATERIALIZATION_PLANNED, asset_key=k), limit=10_000
            )
        )
        for k in keys
    }
    mats = {k.to_user_string(): _materializations(instance, k) for k in keys}
    parts = {k.to_user_string(): sorted(instance.get_materialized_partitions(k)) for k in keys}
    run_events = Counter(e.dagster_event_type for e in instance.all_logs(run_id) if e.is_dagster_event)
    checks = {}
    for k in keys:
        checks[k.to_user_string()] = sorted(
            (r.partition, r.status.value)
            for ck in _check_keys(instance, k)
            for r in instance.event_log_storage.get_asset_check_execution_history(ck, limit=1000)
        )
    # The asset's own row (asset_keys): what the UI's asset list and "latest materialization" read. Its
    # last materialization must be the newest stored record, with its real storage id and partition.
    latest = {}
    for k in keys:
        entry = instance.get_asset_records([k])[0].asset_entry
        newest = instance.fetch_materializations(k, limit=1).records[0]
        assert entry.last_materialization_record.storage_id == newest.storage_id, k
        latest[k.to_user_string()] = (entry.last_materialization.asset_materialization.partition,
                                      entry.last_run_id == run_id, entry.last_materialization_storage_id is not None)  # fmt: skip
    return {"planned": planned, "mats": mats, "parts": parts, "run_events": run_events, "checks": checks,
            "latest": latest}  # fmt: skip


def _same_place(v: object) -> object:
    """Metadata with the two homes' data directories made equal (locations name the run's own tmp dir)."""
    return v.replace("/shipped/", "/home/").replace("/stock/", "/home/") if isinstance(v, str) else v


def _check_keys(instance: dg.DagsterInstance, key: AssetKey) -> list[dg.AssetCheckKey]:
    names = ("schema_valid", "no_duplicate_conflicts", "no_ohlc_violations", "complete_against_calendar", "fresh")
    return [dg.AssetCheckKey(key, n) for n in names]


@pytest.fixture
def binance():
    series = {(s, "1m"): generate_klines("2024-01-01", 4 * 1440, "1m", seed=i) for i, s in enumerate(["BTCUSDT"])}
    with FakeBinance(series) as fake:
        yield fake


def _run_on(home: Path, tmp: Path, url: str, monkeypatch) -> tuple[dict, Path]:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    cfg = crypto_config(tmp / home.name, url)
    defs = build_definitions(cfg)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        res = run(defs, pipeline_job_name(cfg.feed("crypto")), instance, "2024-01-01", "2024-01-03")
        assert res.success
        keys = [AssetKey(["crypto", n]) for n in ("raw_ohlcv_1m", "normalized_ohlcv_1m", "quarantine_ohlcv_1m",
                                                  "ohlcv_1h", "enriched_ohlcv_1h")]  # fmt: skip
        for k in keys:
            assert instance.get_latest_materialization_event(k) is not None, k
        figures = _figures(instance, res.run_id, keys)
        return figures, Path(instance.event_log_storage._base_dir)


def test_batched_storage_stores_what_the_stock_storage_stores(tmp_path, binance, monkeypatch):
    stock_home = _home(tmp_path, "stock", None)
    shipped_home = _home(
        tmp_path, "shipped",
        {"module": "data_puller_dagster_tests.automation.test_event_log_storage", "class": "CountingStorage"},
    )  # fmt: skip
    stock, stock_dir = _run_on(stock_home, tmp_path, binance.url, monkeypatch)
    shipped, shipped_dir = _run_on(shipped_home, tmp_path, binance.url, monkeypatch)

    assert shipped_dir == shipped_home / "history" / "runs"  # Dagster's default layout, no config needed
    assert stock_dir == stock_home / "history" / "runs"
    # 3 day partitions per asset: planned, materialized, with each partition's own metadata
    for asset, parts in shipped["parts"].items():
        assert len(parts) == 3, asset
        assert len(shipped["planned"][asset]) == 3, asset
        assert set(shipped["mats"][asset]) == set(parts)
    for what in ("planned", "parts", "run_events", "checks", "latest"):
        assert shipped[what] == stock[what], what
    for asset in stock["mats"]:
        for part, md in stock["mats"][asset].items():
            got = shipped["mats"][asset][part]
            assert got.keys() == md.keys(), (asset, part)
            # the preview and the fetch time differ between two runs; every figure must match
            for k in md:
                if k not in ("preview", "fetched_at", "first_fetched_at", "last_fetched_at"):
                    assert _same_place(got[k]) == _same_place(md[k]), (asset, part, k)
    rows = shipped["mats"]["crypto/normalized_ohlcv_1m"]
    assert {p: md["dagster/row_count"] for p, md in rows.items()} == dict.fromkeys(rows, 1440)

    batches = (shipped_dir / BATCH_LOG).read_text().splitlines()
    sizes = Counter(batches)
    # the plan: 5 assets x 3 partitions planned, plus the check-planned events, in one batch
    assert any(int(b.split()[0]) >= 15 and "ASSET_MATERIALIZATION_PLANNED" in b for b in batches), batches
    # each step output's 3 materializations in one batch
    assert sum(n for b, n in sizes.items() if b == "3 ASSET_MATERIALIZATION") >= 5, batches
    assert not (stock_dir / BATCH_LOG).exists()


def test_connections_use_wal_and_synchronous_normal(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # the instance's own directory decides, as for the stock one
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, BatchedSqliteEventLogStorage)
        assert Path(storage._base_dir) == home / "history" / "runs"
        assert (home / "history" / "runs" / "index.db").exists()
        assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "1000"
        with storage.index_connection() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_an_explicit_batch_size_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_EVENT_BATCH_SIZE", "0")  # 0 turns Dagster's batching off
    BatchedSqliteEventLogStorage(str(tmp_path / "runs"))
    assert os.environ["DAGSTER_EVENT_BATCH_SIZE"] == "0"
