"""`<feed>/raw_ohlcv_<tf>`: exactly what the provider returned, for audit and replay."""


import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.metadata import frame_metadata
from data_puller_dagster.assets.naming import asset_key, table_metadata
from data_puller_dagster.assets.partitions import backfill_policy, context_window, feed_partitions
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.sources import build_adapter, raw_empty

CODE_VERSION = "raw-1"


def provider_of(feed: FeedConfig) -> str:
    """Pool and run-tag value that bounds concurrent calls to one provider."""
    return feed.source


def build_raw_asset(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.timeframe
    key = asset_key(feed, "raw", tf)

    @dg.asset(
        key=key,
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"python", "pandas", feed.source},
        code_version=CODE_VERSION,
        description=(
            f"{feed.asset_class} {tf} candles from {feed.source} for the partition's UTC day(s), exactly "
            "as the provider sent them plus provenance columns (ts, symbol, timeframe, source, fetched_at)."
        ),
        metadata=table_metadata(feed, "raw", tf),
        pool=provider_of(feed),
        retry_policy=dg.RetryPolicy(
            max_retries=cfg.runs.retry_max,
            delay=cfg.runs.retry_delay_seconds,
            backoff=dg.Backoff.EXPONENTIAL,
            jitter=dg.Jitter.PLUS_MINUS,
        ),
        backfill_policy=backfill_policy(cfg),
    )
    def raw(context: AssetExecutionContext) -> dg.Output[pd.DataFrame]:
        window = context_window(context, cfg, feed)
        symbols = feed.symbol_keys
        adapter = build_adapter(cfg, feed)
        frames = []
        try:
            for k in window.keys:
                context.log.info(
                    f"fetching {symbols[k]} {tf} {window.start_ts:%Y-%m-%d} .. {window.end:%Y-%m-%d} "
                    f"from {feed.source}"
                )
                frames.append(adapter.fetch(symbols[k], tf, window.start_ts, window.end_ts))
        finally:
            adapter.close()
        df = pd.concat(frames, ignore_index=True) if frames else raw_empty(feed.source)
        # A day partition can only hold its own candles. Rows the provider sent for other times are
        # counted and logged (they mean the response did not match the request), not stored here.
        inside = df["ts"].isna() | ((df["ts"] >= window.start_ts) & (df["ts"] < window.end_ts))
        outside = int((~inside).sum())
        if outside:
            context.log.warning(
                f"{feed.source} returned {outside} row(s) outside {window.start}..{window.end} for "
                f"{', '.join(window.keys)}; kept out of the raw partition"
            )
            df = df[inside].reset_index(drop=True)
        md = frame_metadata(df)
        md["rows_outside_window"] = dg.MetadataValue.int(outside)
        return dg.Output(df, metadata=md)

    return raw
