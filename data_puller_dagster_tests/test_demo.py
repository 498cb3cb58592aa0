"""The offline demo (`make demo`) in a temporary directory: real Dagster runs over the bundled sample
data, and outputs that match that data."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pyarrow.dataset as ds

from data_puller_dagster.demo import MARKET_DATA, SNIPPETS_BEGIN, SNIPPETS_END, run_demo, summarize

FIX = Path(__file__).parent / "fixtures"


def test_demo_writes_every_layer_matching_the_bundled_data(tmp_path, monkeypatch):
    for var in ("DATA_PULLER_CONFIG", "DATA_PULLER_HOME", "DAGSTER_HOME", "DATA_PULLER_DEMO_MARKET_DATA"):
        monkeypatch.setenv(var, "")  # run_demo sets them; monkeypatch restores them afterwards
    monkeypatch.setenv("DATA_PULLER_DEMO_MARKET_DATA", str(MARKET_DATA))
    out = io.StringIO()
    summary = run_demo(tmp_path / "demo", out=out)
    text = out.getvalue()
    assert "demo finished" in text and "dagster dev" in text
    # One line per run plus the summary; Dagster's event log goes to a file whose path is printed.
    assert "DEBUG" not in text and "STEP_START" not in text
    assert len(text.splitlines()) < summary["runs"] + len(summary["tables"]) + 60
    log = Path(summary["log"])
    assert str(log) in text and "STEP_START" in log.read_text()

    tables = summary["tables"]
    for feed in ("crypto", "crypto_minute", "forex", "equity"):
        assert any(t.startswith(f"{feed}.normalized_ohlcv_") for t in tables)
        assert summary["feeds"][feed]["dataset"] is not None

    # BTCUSDT April 2021: 720 hours minus the two real maintenance gaps (2 + 3 hours).
    assert tables["crypto.normalized_ohlcv_1h"] == 715
    assert summary["feeds"]["crypto"]["missing_candles"] == 5
    assert summary["feeds"]["crypto"]["gap_segments"] == 2
    # Forex weekends are closures, not gaps; NYSE holidays are not gaps.
    assert summary["feeds"]["forex"]["missing_candles"] == 0
    assert summary["feeds"]["equity"]["missing_candles"] == 0

    # Parquet content equals the source series.
    home = tmp_path / "demo"
    btc = ds.dataset(home / "parquet" / "crypto" / "normalized_ohlcv_1h", format="parquet",
                     partitioning="hive").to_table().to_pandas().sort_values("ts")
    src = pd.read_csv(FIX / "binance" / "Binance_BTCUSDT_1h_2020-12_2021-05.cdd.csv")
    src["ts"] = pd.to_datetime(src["unix"], unit="ms", utc=True)
    src = src[(src["ts"] >= "2021-04-01") & (src["ts"] < "2021-05-01")].sort_values("ts")
    assert (btc["ts"].to_numpy() == src["ts"].to_numpy()).all()
    assert (btc["close"].to_numpy() == src["close"].to_numpy()).all()

    goog = pd.read_csv(FIX / "backtesting_py" / "GOOG.csv", index_col=0, parse_dates=True)
    goog = goog.loc["2012-01-01":"2012-06-30"]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        eq = con.execute('SELECT ts, close, volume FROM "equity"."normalized_ohlcv_1d" ORDER BY ts').df()
        eurusd = con.execute('SELECT count(*), count(volume) FROM "forex"."normalized_ohlcv_1h"').fetchone()
    assert len(eq) == len(goog) == 125
    assert (eq["close"].to_numpy() == goog["Close"].to_numpy()).all()
    assert eurusd[0] > 0 and eurusd[1] == 0  # forex has no volume: null, not 0

    # The LLM dataset: split files and a manifest whose hashes match the files.
    import hashlib

    man = json.loads((home / "datasets" / "crypto" / "llm_1h" / "manifest.json").read_text())
    assert man["total_rows"] == tables["crypto.llm_dataset_1h"] > 0
    for split, f in man["files"].items():
        data = (home / "datasets" / "crypto" / "llm_1h" / f"{split}.jsonl").read_bytes()
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
        assert data.count(b"\n") == f["rows"]
    first = json.loads((home / "datasets" / "crypto" / "llm_1h" / "train.jsonl").open().readline())
    assert first["symbol"] == "BTCUSDT" and first["timeframe"] == "1h"
    assert len(first["context"]) == 24 and "next_close" in first["target"]
    assert os.path.isdir(home / "dagster_home")

    # Every split of every demo dataset has examples (the embargo is shorter than each split).
    for feed in ("crypto", "forex", "equity"):
        man = json.loads((home / "datasets" / feed / f"llm_{'1d' if feed == 'equity' else '1h'}"
                          / "manifest.json").read_text())
        assert set(man["files"]) == {"train", "validation", "test"}, feed
        assert all(f["rows"] > 0 for f in man["files"].values()), (feed, man["files"])

    # The analyst snippets printed in the summary run as printed on the demo's output.
    snippet = text[text.index(SNIPPETS_BEGIN):text.index(SNIPPETS_END)]
    proc = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout.splitlines()
    assert "EUR/USD" in proc.stdout and '"symbol": "BTCUSDT"' in proc.stdout.replace('":"', '": "')
    assert int(printed[-4]) > 0 and int(printed[-3]) > 0

    # The UI on the demo launches nothing by itself: schedules and every sensor are stopped.
    from data_puller_dagster.config import load_config
    from data_puller_dagster.definitions import build_definitions

    cfg = load_config()
    defs = build_definitions(cfg)
    repo = defs.get_repository_def()
    assert repo.sensor_defs and all(
        s.default_status == dg.DefaultSensorStatus.STOPPED for s in repo.sensor_defs)
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in repo.schedule_defs)

    # The summary is the latest state: more materializations of the same days (what the gap filler
    # or a second `make demo` does) leave it unchanged.
    instance = dg.DagsterInstance.get()
    job = defs.resolve_job_def("crypto_pipeline")
    for a, b in (("2021-04-01", "2021-04-30"), ("2021-04-10", "2021-04-12")):
        assert job.execute_in_process(instance=instance, tags={
            "dagster/asset_partition_range_start": f"{a}|BTCUSDT",
            "dagster/asset_partition_range_end": f"{b}|BTCUSDT"}).success
    again = summarize(cfg, instance)
    assert again["tables"] == summary["tables"]
    assert again["feeds"] == summary["feeds"]
