"""The three sensors of a feed on the REAL definitions (not the stub location), in process: what each
requests is executed as a real run against FakeBinance and real stores, until the window (pipeline, LLM
dataset days and the JSONL files) is complete and the sensors have nothing left to request."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.sensors import (
    evaluate_dataset_files,
    evaluate_dataset_gaps,
    evaluate_pipeline_gaps,
    partition_key,
)
from data_puller_dagster.config import parse_config
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

TODAY = datetime.now(UTC).date()
NOW = datetime.combine(TODAY, time(12), tzinfo=UTC)
START = TODAY - timedelta(days=3)
END = TODAY - timedelta(days=1)


@pytest.mark.parametrize("dataset", [True, False])
def test_sensors_fill_the_real_pipeline(tmp_path: Path, dataset: bool) -> None:
    klines = generate_klines(pd.Timestamp(START), 3 * 24, "1h", seed=3)
    with FakeBinance({("BTCUSDT", "1h"): klines}) as fake, dg.instance_for_test() as instance:
        cfg = parse_config(
            {
                "storage": {"data_dir": str(tmp_path / "data")},
                "sources": {"binance": {"base_url": fake.url, "use_archive": False, "max_retries": 1}},
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
                "indicators": {"warmup_candles": 30},
                "dataset": {"enabled": dataset, "context_window": 5, "min_quality": 0.0},
                "runs": {"retry_max": 0},
                "automation": {"schedule": {"enabled": False}},
            },
            env={},
        )
        feed = cfg.feed("crypto")
        defs = build_definitions(cfg)
        dg.Definitions.validate_loadable(defs)
        sensors = [evaluate_pipeline_gaps]
        if dataset:
            sensors += [evaluate_dataset_gaps, evaluate_dataset_files]
        cursors: dict[str, str | None] = {}

        def tick(fn) -> list[dg.RunRequest]:
            ev = fn(instance, cfg, feed, cursors.get(fn.__name__), NOW)
            cursors[fn.__name__] = ev.cursor
            for req in ev.run_requests:
                result = defs.resolve_job_def(req.job_name).execute_in_process(
                    instance=instance, tags={**req.tags, RUN_KEY_TAG: req.run_key}, raise_on_error=False
                )
                assert result.success, req.job_name
            return ev.run_requests

        launched = {fn.__name__: len(tick(fn)) for fn in sensors}
        assert launched == {fn.__name__: 1 for fn in sensors}  # each: one run (one symbol, one range)
        assert all(tick(fn) == [] for fn in sensors)  # nothing left: the gaps are closed

        keys = [partition_key(START + timedelta(days=i), "BTCUSDT") for i in range(3)]
        layers = ["normalized", "enriched"] + (["dataset"] if dataset else [])
        for layer in layers:
            status = instance.get_status_by_partition(
                asset_key(feed, layer, "1h"), keys, feed_partitions(feed)
            )
            assert status == dict.fromkeys(keys, dg.AssetPartitionStatus.MATERIALIZED), layer
        files = instance.get_latest_materialization_event(dataset_files_key(feed)) if dataset else None
        assert (files is not None) == dataset
