"""`<feed>/ohlcv_<tf>`: larger timeframes resampled from the base candles of the same and neighbouring days.

Partition rule: a derived bar belongs to the UTC day of its label `ts` (the bar's open time on the epoch
grid or session grid; for forex daily bars the 00:00 UTC stamp of the New York trading day's date), the
day every store files the row under. Some bars draw on candles of other UTC days -- a forex daily bar
labelled Tuesday is Monday 17:00 -> Tuesday 17:00 New York, i.e. it opens Monday 21:00/22:00 UTC -- so
day D reads the base days `resample.partition_read_days` gives (D-1..D for forex 1d, D alone for crypto
and forex intraday), builds bars, and keeps the bars labelled in D. Each bar depends only on its own
candles, so day-by-day partitions equal the bars resampled from the whole stored history.
"""


import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.partition_metadata import add_partition_metadata, partition_groups
from data_puller_dagster.assets.partitions import (
    backfill_policy,
    context_window,
    feed_partitions,
    window_mapping,
)
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.transform.resample import partition_read_days, resample_days

CODE_VERSION = "derived-2"


def build_derived_asset(cfg: AppConfig, feed: FeedConfig, tf: str) -> dg.AssetsDefinition:
    base_key = asset_key(feed, "normalized", feed.timeframe)
    before, after = partition_read_days(feed.asset_class, feed.timeframe, tf)
    reads = "the same day" if before == after == 0 else f"{before} day(s) before and {after} after"

    @dg.asset(
        key=asset_key(feed, "derived", tf),
        ins={"base": dg.AssetIn(base_key, partition_mapping=window_mapping(before, after))},
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"pandas", *storage_kinds(cfg, feed, "derived", tf)},
        tags=catalog_tags(feed, "derived", tf),
        code_version=CODE_VERSION,
        description=(
            f"{tf} bars built from {feed.timeframe} candles, equal to the exchange's native {tf} bars; "
            f"a bar belongs to the UTC day of its ts, built from base candles of {reads}. "
            "`complete` is False where base candles were missing, `source_candles` counts them."
        ),
        metadata=catalog_metadata(cfg, feed, "derived", tf),
        backfill_policy=backfill_policy(cfg),
    )
    def derived(context: AssetExecutionContext, base: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        window = context_window(context, cfg, feed)
        bars = resample_days(base, tf, feed.asset_class, window.start, window.end)
        add_partition_metadata(
            context,
            context.assets_def.key,
            partition_groups(bars, window),
            lambda _k, rows: {"incomplete_bars": dg.MetadataValue.int(int((~rows["complete"].astype(bool)).sum()))},
        )
        context.log.info(
            f"derived {tf} {window.describe()}: {len(bars)} bar(s) from {len(base)} base row(s) read"
        )
        return dg.Output(bars, metadata={"base_rows_read": dg.MetadataValue.int(len(base))})

    return derived
