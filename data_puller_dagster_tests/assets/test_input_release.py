"""The normalize step frees its raw input as it goes, and the result does not change.

`normalize(raw, consume_raw=True)` drops each raw column once read (the normalize asset passes it for an
input the IO manager handed it alone); every figure must be the one the non-consuming call gives, on
real frames exercising every rule, duplicates and both layouts. The last test runs the user's command,
`dagster asset materialize` over a range on the shipped instance, and checks that the raw frame was
handed to normalize in memory and that the stored normalized rows are those a re-read would give.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.config import parse_config
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.sources.binance_klines import klines_frame
from data_puller_dagster.transform.normalize import RAW_COLUMNS_KEPT, normalize
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines, wire_strings
from data_puller_dagster_tests.transform import rawframes as R
from data_puller_dagster_tests.transform.test_normalize import _broken_btc

REPO = Path(__file__).resolve().parents[2]
NOW = pd.Timestamp("2030-01-01", tz="UTC")


def _duplicates() -> pd.DataFrame:
    raw = R.btcusdt_1h().iloc[:10].reset_index(drop=True)
    later = raw.iloc[[0, 1, 2]].copy()
    later["fetched_at"] = raw["fetched_at"].iloc[0] + pd.Timedelta(hours=1)
    later["close"] = pd.array([str(float(v) + 0.01) for v in later["close"]], dtype="string")
    return pd.concat([raw, later], ignore_index=True)


def _arrow_text() -> pd.DataFrame:
    wire = wire_strings(generate_klines("2024-03-01", 3 * 1440, "1m", seed=3))
    return klines_frame(wire, "BTCUSDT", "1m", "binance", NOW, "test")  # string[pyarrow] text columns


FRAMES = {
    "every_rule": (_broken_btc, "crypto", "1h"),
    "duplicates": (_duplicates, "crypto", "1h"),
    "twelvedata": (lambda: R.eurusd_1h(keep_volume=True), "forex", "1h"),
    "arrow_text_1m": (_arrow_text, "crypto", "1m"),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_consuming_the_raw_frame_gives_the_same_result(name: str) -> None:
    make, asset_class, tf = FRAMES[name]
    kept, consumed = make(), make()
    n = len(consumed)
    a = normalize(kept, asset_class=asset_class, timeframe=tf, now=NOW)
    b = normalize(consumed, asset_class=asset_class, timeframe=tf, now=NOW, consume_raw=True)
    for field in ("data", "quarantine", "conflicts"):
        pd.testing.assert_frame_equal(getattr(a, field), getattr(b, field), check_exact=True)
    assert dataclasses.asdict(a.report) == dataclasses.asdict(b.report)
    assert a.row_rule.tolist() == b.row_rule.tolist()
    np.testing.assert_array_equal(a.row_interval_s, b.row_interval_s)
    # The consumed frame keeps its rows and only what the callers still count by (symbol, ts).
    assert set(consumed.columns) == RAW_COLUMNS_KEPT & set(kept.columns) and len(consumed) == n
    pd.testing.assert_frame_equal(consumed, kept[list(consumed.columns)])
    assert len(kept.columns) > len(consumed.columns)  # the non-consuming call left its input alone


def test_cli_range_run_hands_raw_over_and_stores_what_a_reread_gives(tmp_path: Path) -> None:
    """The user's path: `dagster asset materialize` of raw + normalized + quarantine over a range, on the
    shipped dagster.yaml (in-process executor). Its normalize step gets the raw frame in memory (the run's
    log says so) and consumes it; what it stored equals normalize() of the raw rows read back."""
    days = 3
    cfg_dict = {
        "version": 1,
        "storage": {"data_dir": str(tmp_path / "data"), "primary": "parquet"},
        "sources": {"binance": {"base_url": "", "use_archive": False, "max_retries": 0}},
        "feeds": [{"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
                   "symbols": ["BTCUSDT"], "start_date": "2024-01-01", "end_date": "2024-01-03"}],
        "routes": [{"id": "warehouse", "destinations": ["parquet", "duckdb"]}],
        "runs": {"backfill_policy": "single_run", "retry_max": 0},
    }  # fmt: skip
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    with FakeBinance({("BTCUSDT", "1m"): generate_klines("2024-01-01", days * 1440, "1m", seed=5)}) as fake:
        cfg_dict["sources"]["binance"]["base_url"] = fake.url
        (tmp_path / "data_puller.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DATA_PULLER_"))}
        env.update(DAGSTER_HOME=str(home), DATA_PULLER_CONFIG=str(tmp_path / "data_puller.yaml"))
        dagster = str(Path(sys.executable).with_name("dagster"))
        proc = subprocess.run(
            [dagster, "asset", "materialize", "-m", "data_puller_dagster.definitions", "--select",
             "crypto/raw_ohlcv_1m,crypto/normalized_ohlcv_1m,crypto/quarantine_ohlcv_1m",
             "--partition-range", "2024-01-01|BTCUSDT...2024-01-03|BTCUSDT"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "handed over in memory by the upstream step" in out, out[-3000:]

    cfg = parse_config(cfg_dict, env={})
    feed = cfg.feed("crypto")
    part = PartitionSlice({"BTCUSDT": "BTCUSDT"}, date(2024, 1, 1), date(2024, 1, 3))
    router = Router(cfg)
    raw = router.read(table_ref(feed, "raw", "1m"), part)
    stored = router.read(table_ref(feed, "normalized", "1m"), part)
    assert len(raw) == days * 1440 == len(stored)
    expected = normalize(raw, asset_class="crypto", timeframe="1m").data
    pd.testing.assert_frame_equal(stored, expected, check_exact=True)
