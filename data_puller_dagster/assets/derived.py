"""`<feed>/ohlcv_<tf>`: larger timeframes resampled from the base candles of the same days."""


import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.metadata import frame_metadata
from data_puller_dagster.assets.naming import asset_key, table_metadata
from data_puller_dagster.assets.partitions import backfill_policy, feed_partitions
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.transform.resample import resample

CODE_VERSION = "derived-1"


def build_derived_asset(cfg: AppConfig, feed: FeedConfig, tf: str) -> dg.AssetsDefinition:
    """Bars of `tf` never straddle a UTC day (tf divides a day), so each day partition is self-contained."""
    base_key = asset_key(feed, "normalized", feed.timeframe)

    @dg.asset(
        key=asset_key(feed, "derived", tf),
        ins={"base": dg.AssetIn(base_key)},
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"pandas"},
        code_version=CODE_VERSION,
        description=(
            f"{tf} bars built from {feed.timeframe} candles, equal to the exchange's native {tf} bars; "
            "`complete` is False where base candles were missing, `source_candles` counts them."
        ),
        metadata=table_metadata(feed, "derived", tf),
        backfill_policy=backfill_policy(cfg),
    )
    def derived(context: AssetExecutionContext, base: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        bars = resample(base, tf, feed.asset_class)
        incomplete = int((~bars["complete"]).sum()) if len(bars) else 0
        return dg.Output(
            bars, metadata={**frame_metadata(bars), "incomplete_bars": dg.MetadataValue.int(incomplete)}
        )

    return derived
