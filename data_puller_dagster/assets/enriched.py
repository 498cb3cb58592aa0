"""`<feed>/enriched_ohlcv_<tf>`: candles plus technical indicators.

Partition boundaries must not change the numbers, not even in the last bit: each partition reads enough
earlier days for the indicators to warm up (a lookback in candles, turned into a day offset per market and
timeframe), and each UTC day is computed from its own anchored window (`compute_indicators_by_day`: the
warm-up candles before that day, never older than the days a single-day run reads). A day built alone and
the same day inside a range run therefore hold identical values, and so do the datasets built from them.
"""


import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.metadata import frame_metadata
from data_puller_dagster.assets.naming import asset_key, ohlcv_key, table_metadata
from data_puller_dagster.assets.partitions import (
    backfill_policy,
    context_window,
    days_for_candles,
    feed_partitions,
    window_mapping,
)
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.transform.indicators import compute_indicators_by_day, warmup_candles

CODE_VERSION = "enriched-2"  # 2: each day from its own anchored window


def build_enriched_asset(cfg: AppConfig, feed: FeedConfig, tf: str) -> dg.AssetsDefinition:
    warmup = warmup_candles(cfg.indicators)
    days_before = days_for_candles(feed.asset_class, tf, warmup)

    @dg.asset(
        key=asset_key(feed, "enriched", tf),
        ins={"candles": dg.AssetIn(ohlcv_key(feed, tf), partition_mapping=window_mapping(days_before))},
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"pandas"},
        code_version=f"{CODE_VERSION}-{_hash(cfg)}",
        description=(
            f"{tf} candles with indicators (ta). Reads {days_before} earlier day(s) ({warmup} candles) for "
            "warm-up; `indicators_ready` is False where the feed lacks that history (values are null)."
        ),
        metadata=table_metadata(feed, "enriched", tf),
        backfill_policy=backfill_policy(cfg),
    )
    def enriched(context: AssetExecutionContext, candles: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        window = context_window(context, cfg, feed)
        out = compute_indicators_by_day(
            candles,
            cfg.indicators,
            start=pd.Timestamp(window.start_ts),
            end=pd.Timestamp(window.end_ts),
            lookback_days=days_before,
            warmup=warmup,
        )
        not_ready = int((~out["indicators_ready"]).sum()) if len(out) else 0
        return dg.Output(
            out,
            metadata={
                **frame_metadata(out),
                "warmup_rows_read": dg.MetadataValue.int(len(candles) - len(out)),
                "rows_not_ready": dg.MetadataValue.int(not_ready),
            },
        )

    return enriched


def _hash(cfg: AppConfig) -> str:
    import hashlib

    return hashlib.sha256(cfg.indicators.model_dump_json().encode()).hexdigest()[:8]
