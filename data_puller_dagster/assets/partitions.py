"""Partitions: UTC day x symbol per feed, and the mappings of assets that read other days.

Why a StaticPartitionsDefinition for symbols: Dagster's database IO managers fail on dynamic partitions
(dagster issue #32631), and the symbol list is config anyway. Multi-partition keys sort dimensions by
name, so keys read `2024-01-05|BTCUSDT`.
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
from dagster import AssetExecutionContext

from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.io_manager import slice_from_keys
from data_puller_dagster.io.tables import PartitionSlice

# Plain arithmetic shared with the library's enrich(): transform/lookback.py (re-exported here).
from data_puller_dagster.transform.lookback import days_for_candles  # noqa: F401

DATE_DIM = "date"
SYMBOL_DIM = "symbol"



def feed_partitions(feed: FeedConfig) -> dg.MultiPartitionsDefinition:
    end = (feed.end_date + timedelta(days=1)).isoformat() if feed.end_date else None
    return dg.MultiPartitionsDefinition(
        {
            DATE_DIM: dg.DailyPartitionsDefinition(start_date=feed.start_date.isoformat(), end_date=end),
            SYMBOL_DIM: dg.StaticPartitionsDefinition(list(feed.symbol_keys)),
        }
    )


def backfill_policy(cfg: AppConfig) -> dg.BackfillPolicy:
    """Few runs with bounded memory by default; Dagster still splits multi-dimensional backfills per
    symbol whatever the policy."""
    if cfg.runs.backfill_policy == "single_run":
        return dg.BackfillPolicy.single_run()
    return dg.BackfillPolicy.multi_run(cfg.runs.max_partitions_per_run)


def window_mapping(days_before: int, days_after: int = 0) -> dg.MultiPartitionMapping:
    """Same symbol, dates [D - days_before, D + days_after]. Both dimensions are mapped explicitly:
    an unmapped symbol dimension would mean "all symbols"."""
    return dg.MultiPartitionMapping(
        {
            DATE_DIM: dg.DimensionPartitionMapping(
                DATE_DIM,
                dg.TimeWindowPartitionMapping(
                    start_offset=-days_before,
                    end_offset=days_after,
                    allow_nonexistent_upstream_partitions=True,
                ),
            ),
            SYMBOL_DIM: dg.DimensionPartitionMapping(SYMBOL_DIM, dg.IdentityPartitionMapping()),
        }
    )


def context_window(context: AssetExecutionContext, cfg: AppConfig, feed: FeedConfig) -> PartitionSlice:
    """The days and symbols a run materializes (one symbol per run in backfills), as the router's slice."""
    return slice_from_keys(cfg, feed.name, list(context.partition_keys), context.op_execution_context.op.name)
