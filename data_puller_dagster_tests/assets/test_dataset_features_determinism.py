"""Issue 19: with every feature group on (OHLCV, indicators, volume profile, TA-Lib candlestick
patterns), the dataset built day by day is byte-identical to the one built in one range run, for the
default JSON layout and for the compact one (basis points, CSV context), card and manifest included.

Real BTCUSDT 1h candles (fixtures/binance, 2021-01-15 .. 2021-02-21, with the real maintenance gap on
2021-02-11 03:00) are served by the local fake Binance over HTTP and pulled by the real adapter into
Parquet. Then, through real Dagster runs: enriched one partition per run for 2021-01-28 .. 02-21 (its
warm-up comes from the earlier normalized days), the dataset of 2021-02-01 .. 02-21 one partition per
run for each of the two dataset configs, their files; then enriched and both datasets as one range run
each (overwriting every partition), their files into other directories. Split dates are inside the
range, so all three files of each dataset hold examples.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import orjson
import pytest

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.automation.jobs import dataset_files_job_name, dataset_job_name, pipeline_job_name
from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.assets.test_dataset_determinism import (
    _first_difference,
    _materialized,
    btcusdt_1h_klines,
)
from data_puller_dagster_tests.fakes.binance import FakeBinance

FEED_START, ENRICH_START, DATASET_START, END = date(2021, 1, 15), date(2021, 1, 28), date(2021, 2, 1), date(2021, 2, 21)
SPLIT = {"validation_start": "2021-02-10", "test_start": "2021-02-16"}
PATTERNS = ["engulfing", "doji", "hammer", "shootingstar", "harami", "morningstar", "eveningstar",
            "3whitesoldiers", "3blackcrows", "hikkake"]  # fmt: skip
EVERY = ["ohlcv", "technical_indicators", "volume_profile", "price_action_patterns"]
DATASETS = {
    "json": {"context_window": 24},
    "compact": {"context_window": 24, "price_encoding": "bps", "context_layout": "csv", "volume_profile_lookback": 48},
}


def config(root: Path, url: str, datasets_dir: str, dataset: dict) -> AppConfig:
    return parse_config(
        {
            "storage": {"data_dir": str(root / "data"), "datasets_dir": str(root / datasets_dir)},
            "sources": {"binance": {"base_url": url, "use_archive": False, "max_retries": 1}},
            "feeds": [
                {"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
                 "symbols": ["BTCUSDT"], "start_date": FEED_START.isoformat(), "end_date": END.isoformat()}
            ],
            "indicators": {"patterns": PATTERNS},
            "dataset": {"include_features": EVERY, "split": SPLIT, **dataset},
            "routes": [{"id": "lake", "destinations": ["parquet"]}],
            "runs": {"retry_max": 0},
        },
        env={},
    )  # fmt: skip


def _days(first: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((END - first).days + 1)]


def _range(days: list[str]) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": f"{days[0]}|BTCUSDT",
        "dagster/asset_partition_range_end": f"{days[-1]}|BTCUSDT",
    }


def _files(cfg: AppConfig, instance: dg.DagsterInstance) -> Path:
    defs = build_definitions(cfg)
    result = defs.resolve_job_def(dataset_files_job_name(cfg.feed("crypto"))).execute_in_process(instance=instance)
    assert result.success
    return cfg.storage.datasets_location / "crypto" / "llm_1h"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("features_determinism")
    instance = dg.DagsterInstance.ephemeral()
    out: dict[str, list[Path]] = {name: [] for name in DATASETS}
    with FakeBinance({("BTCUSDT", "1h"): btcusdt_1h_klines()}) as fake:
        cfgs = {name: config(root, fake.url, f"daily_{name}", ds) for name, ds in DATASETS.items()}
        first = cfgs["json"]
        feed = first.feed("crypto")
        pipeline = build_definitions(first).resolve_job_def(pipeline_job_name(feed))
        upstream = [asset_key(feed, layer, "1h") for layer in ("raw", "normalized", "quarantine")]
        result = pipeline.execute_in_process(
            instance=instance, asset_selection=upstream, tags=_range(_days(FEED_START)), raise_on_error=False
        )
        assert len(_materialized(result, upstream[1], "raw/normalized")) == len(_days(FEED_START))
        enriched, dataset_key = asset_key(feed, "enriched", "1h"), asset_key(feed, "dataset", "1h")
        for d in _days(ENRICH_START):  # one enriched partition per run
            result = pipeline.execute_in_process(
                instance=instance, asset_selection=[enriched], partition_key=f"{d}|BTCUSDT", raise_on_error=False
            )
            assert _materialized(result, enriched, f"enriched {d}") == [f"{d}|BTCUSDT"]
        for name, cfg in cfgs.items():  # one dataset partition per run, then the files
            job = build_definitions(cfg).resolve_job_def(dataset_job_name(feed))
            for d in _days(DATASET_START):
                result = job.execute_in_process(instance=instance, partition_key=f"{d}|BTCUSDT", raise_on_error=False)
                assert _materialized(result, dataset_key, f"dataset {name} {d}") == [f"{d}|BTCUSDT"]
            out[name].append(_files(cfg, instance))

        result = pipeline.execute_in_process(
            instance=instance, asset_selection=[enriched], tags=_range(_days(ENRICH_START)), raise_on_error=False
        )
        assert len(_materialized(result, enriched, "enriched range")) == len(_days(ENRICH_START))
        for name, ds in DATASETS.items():
            cfg = config(root, fake.url, f"range_{name}", ds)
            result = build_definitions(cfg).resolve_job_def(dataset_job_name(feed)).execute_in_process(
                instance=instance, tags=_range(_days(DATASET_START)), raise_on_error=False
            )
            assert len(_materialized(result, dataset_key, f"dataset {name} range")) == len(_days(DATASET_START))
            out[name].append(_files(cfg, instance))
    return {name: (a, b) for name, (a, b) in out.items()}


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_feature_group_day_by_day_is_byte_identical_to_one_range_run(built, name: str) -> None:
    daily, ranged = built[name]
    for split in ("train", "validation", "test"):
        a, b = (daily / f"{split}.jsonl").read_bytes(), (ranged / f"{split}.jsonl").read_bytes()
        assert a.count(b"\n") > 80, f"{split} is too small to prove anything"
        assert a == b, f"{name} {split}.jsonl differs: {_first_difference(a, b)}"
    for extra in ("manifest.json", "README.md"):
        assert (daily / extra).read_bytes() == (ranged / extra).read_bytes(), extra
    lines = [orjson.loads(x) for x in (daily / "train.jsonl").read_bytes().splitlines()]
    assert all(ln["volume_profile"]["va_low"] <= ln["volume_profile"]["poc"] for ln in lines)
    assert lines[0]["fields"][-1] == "patterns"
    patterns = [cell for ln in lines for cell in _pattern_cells(ln)]
    assert sum("engulfing" in c for c in patterns) > 10  # real flags reached the files
    manifest = orjson.loads((daily / "manifest.json").read_bytes())
    assert manifest["features"]["groups"] == EVERY
    assert all(manifest["files"][s]["estimated_tokens"] > manifest["files"][s]["rows"] * 100 for s in manifest["files"])


def _pattern_cells(line: dict) -> list[str]:
    ctx = line["context"]
    if isinstance(ctx, str):  # csv layout
        return [row.rsplit(",", 1)[-1] for row in ctx.split("\n")]
    return [row[-1] or "" for row in ctx]


def test_compact_layout_is_smaller_than_json(built) -> None:
    sizes = {name: orjson.loads((d / "manifest.json").read_bytes())["files"] for name, (d, _) in built.items()}
    json_tokens = sum(f["estimated_tokens"] for f in sizes["json"].values())
    compact_tokens = sum(f["estimated_tokens"] for f in sizes["compact"].values())
    assert compact_tokens < 0.8 * json_tokens
