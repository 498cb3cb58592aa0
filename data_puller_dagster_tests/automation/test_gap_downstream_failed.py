"""The gap sensor rebuilds days whose normalized partition is stored but whose derived/enriched layers
failed, on a real instance whose state comes from a real run of the real definitions (fake Binance).

The run: a 3-day range where the middle day's candles are broken (high < low in 23 of its 24 hourly rows), so the
blocking `schema_valid` check rejects that day. The good days are stored in normalized, the broken day
keeps nothing new (normalized reports it 24 candles short), and the derived/enriched steps are skipped,
which Dagster 1.13 records as FAILED for every partition of the run. Without `downstream_failed` the
sensor refetched only the broken day and the two good days never got their derived/enriched rows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import numpy as np
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG as RANGE_END
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_START_TAG as RANGE_START
from dagster._core.storage.tags import RUN_KEY_TAG

from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.automation.gap_sensor import downstream_keys
from data_puller_dagster.automation.jobs import pipeline_job_name
from data_puller_dagster.automation.sensors import REASON_TAG, evaluate_pipeline_gaps
from data_puller_dagster.definitions import build_definitions
from data_puller_dagster_tests.assets.test_pipeline import crypto_config, read, run
from data_puller_dagster_tests.fakes.binance import FakeBinance, generate_klines

DAYS = ["2024-01-01", "2024-01-02", "2024-01-03"]
KEYS = [f"{d}|BTCUSDT" for d in DAYS]
DAY2_MS = 1704153600000  # 2024-01-02 00:00 UTC
HOURLY = {"timeframe": "1h", "derived_timeframes": ["4h"], "enrich_timeframes": ["4h"], "dataset_timeframe": "4h"}
NOW = datetime(2024, 2, 1, 12, tzinfo=UTC)  # every day of the window long settled


def test_days_whose_downstream_failed_get_a_pipeline_run(tmp_path, instance) -> None:
    good = generate_klines("2024-01-01", 3 * 24, "1h", seed=21)
    broken = good.copy()
    day2 = (broken["open_time"] >= DAY2_MS) & (broken["open_time"] < DAY2_MS + 86_400_000)
    bad = day2 & (np.arange(len(broken)) % 24 != 0)  # 23 of the day's 24 candles
    broken.loc[bad, "high"] = broken.loc[bad, "low"] - 1.0

    with FakeBinance({("BTCUSDT", "1h"): broken}) as fake:
        cfg = crypto_config(tmp_path, fake.url, symbols=["BTCUSDT"], start_date=DAYS[0], end_date=DAYS[-1], **HOURLY)
        cfg = cfg.model_copy(
            update={"validation": cfg.validation.model_copy(update={"max_quarantined_fraction": 0.5})}
        )
        feed = cfg.feed("crypto")
        defs = build_definitions(cfg)
        job = pipeline_job_name(feed)
        assert not run(defs, job, instance, DAYS[0], DAYS[-1]).success

        # What Dagster recorded: normalized stored (the broken day reported 24 short), downstream FAILED.
        parts = feed_partitions(feed)
        norm = asset_key(feed, "normalized", "1h")
        assert instance.get_status_by_partition(norm, KEYS, parts) == dict.fromkeys(
            KEYS, dg.AssetPartitionStatus.MATERIALIZED
        )
        assert downstream_keys(feed) == [asset_key(feed, "derived", "4h"), asset_key(feed, "enriched", "4h")]
        for key in downstream_keys(feed):
            assert instance.get_status_by_partition(key, KEYS, parts) == dict.fromkeys(
                KEYS, dg.AssetPartitionStatus.FAILED
            ), key

        ev = evaluate_pipeline_gaps(instance, cfg, feed, None, NOW)
        assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in ev.run_requests] == [(KEYS[0], KEYS[-1])]
        (req,) = ev.run_requests
        assert req.tags[REASON_TAG] == "downstream_failed,incomplete"

        # The provider serves good candles again; the requested run rebuilds every layer of the 3 days.
        fake.add("BTCUSDT", "1h", good)
        result = defs.resolve_job_def(req.job_name).execute_in_process(
            instance=instance, tags={**req.tags, RUN_KEY_TAG: req.run_key}, raise_on_error=False
        )
        assert result.success

    for key in downstream_keys(feed):
        assert instance.get_status_by_partition(key, KEYS, parts) == dict.fromkeys(
            KEYS, dg.AssetPartitionStatus.MATERIALIZED
        ), key
    assert len(read(cfg, "enriched", "4h", DAYS[0], DAYS[-1])) == 18
    assert len(read(cfg, "normalized", "1h", DAYS[0], DAYS[-1])) == 72
    done = evaluate_pipeline_gaps(instance, cfg, feed, ev.cursor, NOW)
    assert done.run_requests == [], done.notes
