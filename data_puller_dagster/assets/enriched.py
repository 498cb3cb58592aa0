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

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.naming import asset_key, ohlcv_key
from data_puller_dagster.assets.partition_metadata import add_partition_metadata, partition_groups
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
        kinds={"pandas", *storage_kinds(cfg, feed, "enriched", tf)},
        tags=catalog_tags(feed, "enriched", tf),
        code_version=f"{CODE_VERSION}-{_hash(cfg)}",
        description=(
            f"{tf} candles with indicators (ta) and candlestick pattern flags (TA-Lib, `cdl_*`, when "
            f"`indicators.patterns` lists any). Reads {days_before} earlier day(s) ({warmup} candles) for "
            "warm-up; `indicators_ready` is False where the feed lacks that history (values are null)."
        ),
        metadata=catalog_metadata(cfg, feed, "enriched", tf),
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
        add_partition_metadata(
            context,
            context.assets_def.key,
            partition_groups(out, window),
            lambda _k, rows: {
                "rows_not_ready": dg.MetadataValue.int(int((~rows["indicators_ready"].astype(bool)).sum()))
            },
        )
        return dg.Output(
            out, metadata={"warmup_rows_read": dg.MetadataValue.int(len(candles) - len(out))}
        )

    return enriched


def _hash(cfg: AppConfig) -> str:
    import hashlib

    # `patterns` (issue 19) is left out while empty, so configs without patterns keep their code version.
    exclude = {"patterns"} if not cfg.indicators.patterns else None
    return hashlib.sha256(cfg.indicators.model_dump_json(exclude=exclude).encode()).hexdigest()[:8]
