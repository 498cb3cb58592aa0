"""Issue 13 item 4: the LLM dataset built day by day is byte-identical to the one built in one range run.

Real BTCUSDT 1h candles (fixtures/binance, 2021-01-01 .. 2021-03-02, with a real maintenance gap on
2021-02-11) are served by the local fake Binance over HTTP and pulled by the real adapter into Parquet.
Then, through real Dagster runs:

- day by day: `enriched_ohlcv_1h` one partition per run for each of the 61 days, then `llm_dataset_1h`
  one partition per run, then the JSONL files into one datasets_dir;
- in one range: the same two layers as one range run each (overwriting every partition), then the
  JSONL files into another datasets_dir.

The split dates are inside the range, so validation and test files are not empty. Both builds must
write the same bytes and the same manifest (config_hash included: the two configs differ only in a
storage path).
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import orjson
import pandas as pd
import pytest

from data_puller_dagster.assets.dataset import dataset_config_hash
from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.automation.jobs import (
    dataset_files_job_name,
    dataset_job_name,
    pipeline_job_name,
)
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.fakes.binance import FakeBinance
from data_puller_dagster_tests.transform.canonical_series import FIXTURES

START, END = date(2021, 1, 1), date(2021, 3, 2)  # 61 day partitions
SPLIT = {"validation_start": "2021-02-10", "test_start": "2021-02-24"}
HOUR_MS = 3_600_000


def btcusdt_1h_klines() -> pd.DataFrame:
    """The recorded CryptoDataDownload export of Binance BTCUSDT 1h in Binance's kline wire layout.

    The export has no taker-buy columns; they are not part of the canonical candle and are sent as 0.
    """
    raw = pd.read_csv(FIXTURES / "binance" / "Binance_BTCUSDT_1h_2020-12_2021-05.cdd.csv")
    raw = raw.sort_values("unix").reset_index(drop=True)
    ot = raw["unix"].astype("int64")
    return pd.DataFrame(
        {
            "open_time": ot,
            "open": raw["open"].astype(float),
            "high": raw["high"].astype(float),
            "low": raw["low"].astype(float),
            "close": raw["close"].astype(float),
            "volume": raw["Volume BTC"].astype(float),
            "close_time": ot + HOUR_MS - 1,
            "quote_volume": raw["Volume USDT"].astype(float),
            "trades": raw["tradecount"].astype("int64"),
            "taker_buy_base": 0.0,
            "taker_buy_quote": 0.0,
            "ignore": "0",
        }
    )


def config(root: Path, url: str, datasets_dir: str, **storage) -> AppConfig:
    return parse_config(
        {
            "storage": {"data_dir": str(root / "data"), "datasets_dir": str(root / datasets_dir), **storage},
            "sources": {"binance": {"base_url": url, "use_archive": False, "max_retries": 1}},
            "feeds": [
                {
                    "name": "crypto",
                    "source": "binance",
                    "asset_class": "crypto",
                    "timeframe": "1h",
                    "symbols": ["BTCUSDT"],
                    "start_date": START.isoformat(),
                    "end_date": END.isoformat(),
                }
            ],
            "dataset": {"context_window": 24, "split": SPLIT},
            "routes": [{"id": "lake", "destinations": ["parquet"]}],
            "runs": {"retry_max": 0},
        },
        env={},
    )


def _days() -> list[str]:
    return [(START + timedelta(days=i)).isoformat() for i in range((END - START).days + 1)]


def _range_tags(days: list[str]) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": f"{days[0]}|BTCUSDT",
        "dagster/asset_partition_range_end": f"{days[-1]}|BTCUSDT",
    }


def _materialized(result: dg.ExecuteInProcessResult, key: dg.AssetKey, what: str) -> list[str]:
    """The partitions of `key` the run materialized (after checking the run succeeded)."""
    assert result.success, f"{what} failed: " + "; ".join(
        str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"
    )
    events = result.get_asset_materialization_events()
    return sorted(e.partition for e in events if e.asset_key == key)


def build_day_by_day(cfg: AppConfig, instance: dg.DagsterInstance) -> Path:
    defs = build_definitions(cfg)
    feed = cfg.feed("crypto")
    days = _days()
    pipeline = defs.resolve_job_def(pipeline_job_name(feed))
    upstream = [asset_key(feed, layer, "1h") for layer in ("raw", "normalized", "quarantine")]
    raw = pipeline.execute_in_process(
        instance=instance, asset_selection=upstream, tags=_range_tags(days), raise_on_error=False
    )
    assert len(_materialized(raw, upstream[1], "raw/normalized")) == len(days)
    enriched = asset_key(feed, "enriched", "1h")
    for d in days:  # one enriched partition per run
        result = pipeline.execute_in_process(
            instance=instance, asset_selection=[enriched], partition_key=f"{d}|BTCUSDT", raise_on_error=False
        )
        assert _materialized(result, enriched, f"enriched {d}") == [f"{d}|BTCUSDT"]
    dataset_key = asset_key(feed, "dataset", "1h")
    dataset = defs.resolve_job_def(dataset_job_name(feed))
    for d in days:  # one dataset partition per run
        result = dataset.execute_in_process(
            instance=instance, partition_key=f"{d}|BTCUSDT", raise_on_error=False
        )
        assert _materialized(result, dataset_key, f"dataset {d}") == [f"{d}|BTCUSDT"]
    files = defs.resolve_job_def(dataset_files_job_name(feed)).execute_in_process(instance=instance)
    assert files.success
    return cfg.storage.datasets_location / "crypto" / "llm_1h"


def build_in_one_range(cfg: AppConfig, instance: dg.DagsterInstance) -> Path:
    defs = build_definitions(cfg)
    feed = cfg.feed("crypto")
    days = _days()
    enriched, dataset_key = asset_key(feed, "enriched", "1h"), asset_key(feed, "dataset", "1h")
    result = defs.resolve_job_def(pipeline_job_name(feed)).execute_in_process(
        instance=instance, asset_selection=[enriched], tags=_range_tags(days), raise_on_error=False
    )
    assert len(_materialized(result, enriched, "enriched range")) == len(days)
    result = defs.resolve_job_def(dataset_job_name(feed)).execute_in_process(
        instance=instance, tags=_range_tags(days), raise_on_error=False
    )
    assert len(_materialized(result, dataset_key, "dataset range")) == len(days)
    files = defs.resolve_job_def(dataset_files_job_name(feed)).execute_in_process(instance=instance)
    assert files.success
    return cfg.storage.datasets_location / "crypto" / "llm_1h"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    instance = dg.DagsterInstance.ephemeral()  # as in test_pipeline.py: ~0.3 s per run, 125 runs here
    with FakeBinance({("BTCUSDT", "1h"): btcusdt_1h_klines()}) as fake:
        daily = build_day_by_day(config(root, fake.url, "datasets_daily"), instance)
        ranged = build_in_one_range(config(root, fake.url, "datasets_range"), instance)
    return daily, ranged


def _first_difference(x: bytes, y: bytes) -> str:
    for i, (la, lb) in enumerate(zip(x.splitlines(), y.splitlines(), strict=False)):
        if la != lb:
            k = next(j for j in range(min(len(la), len(lb))) if la[j] != lb[j]) if la[:1] == lb[:1] else 0
            return f"line {i + 1}: ...{la[max(k - 60, 0) : k + 40]!r} vs ...{lb[max(k - 60, 0) : k + 40]!r}"
    return f"{len(x.splitlines())} vs {len(y.splitlines())} lines"


def test_day_by_day_files_are_byte_identical_to_one_range_run(built) -> None:
    daily, ranged = built
    for split in ("train", "validation", "test"):
        a, b = (daily / f"{split}.jsonl").read_bytes(), (ranged / f"{split}.jsonl").read_bytes()
        assert a.count(b"\n") > 100, f"{split} is too small to prove anything"
        assert a == b, f"{split}.jsonl differs: {_first_difference(a, b)}"
    lines = [orjson.loads(x) for x in (daily / "validation.jsonl").read_bytes().splitlines()]
    assert {ln["metadata"]["split"] for ln in lines} == {"validation"}
    # The values are real: ema_50 of the first validation example is the close-driven EMA, not null.
    ema = lines[0]["fields"].index("ema_50")
    assert np.isfinite(lines[0]["current"][ema])


def test_manifests_are_identical_and_hash_ignores_storage_paths(built) -> None:
    daily, ranged = built
    ma = orjson.loads((daily / "manifest.json").read_bytes())
    mb = orjson.loads((ranged / "manifest.json").read_bytes())
    assert ma["rows"]["validation"] > 0 and ma["rows"]["test"] > 0
    assert ma == mb  # no paths or wall-clock times in a manifest: all of it must agree
    assert (daily / "manifest.json").read_bytes() == (ranged / "manifest.json").read_bytes()


def test_config_hash_ignores_storage_paths_but_not_content(tmp_path) -> None:
    url = "http://127.0.0.1:1"
    base = config(tmp_path, url, "datasets")
    feed = base.feed("crypto")
    moved = config(
        tmp_path / "elsewhere", url, "other", parquet_root="s3://bucket/lake", duckdb_path=str(tmp_path / "w.db"),
        csv_dir=str(tmp_path / "csv"), jsonl_dir=str(tmp_path / "jsonl"), postgres_url="postgresql://u@h/db",
        postgres_schema_prefix="x", primary="duckdb",
    )  # fmt: skip
    assert moved.fingerprint() != base.fingerprint()  # the whole-config hash does see paths...
    assert dataset_config_hash(moved, moved.feed("crypto")) == dataset_config_hash(base, feed)  # ...this not
    for change in (
        {"dataset": {**base.dataset.model_dump(mode="json"), "context_window": 25}},
        {"indicators": {**base.indicators.model_dump(mode="json"), "ema_windows": [12, 26]}},
    ):
        other = AppConfig.model_validate({**base.model_dump(mode="json"), **change})
        assert dataset_config_hash(other, other.feed("crypto")) != dataset_config_hash(base, feed), change
