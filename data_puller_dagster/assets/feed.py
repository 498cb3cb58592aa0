"""Every asset of one feed, in the order data flows: raw -> normalized (+quarantine) -> derived
timeframes -> enriched -> LLM dataset (examples, then files)."""

from __future__ import annotations

import dagster as dg

from data_puller_dagster.assets.dataset import build_dataset_asset, build_dataset_files_asset
from data_puller_dagster.assets.derived import build_derived_asset
from data_puller_dagster.assets.enriched import build_enriched_asset
from data_puller_dagster.assets.naming import table_ref
from data_puller_dagster.assets.normalized import build_normalized_assets
from data_puller_dagster.assets.raw import build_raw_asset
from data_puller_dagster.config import AppConfig, FeedConfig


def build_feed_assets(cfg: AppConfig, feed: FeedConfig) -> list[dg.AssetsDefinition]:
    assets = [build_raw_asset(cfg, feed), build_normalized_assets(cfg, feed)]
    assets += [build_derived_asset(cfg, feed, tf) for tf in feed.derived_timeframes]
    assets += [build_enriched_asset(cfg, feed, tf) for tf in feed.enriched_timeframes]
    if cfg.dataset.enabled:
        assets += [build_dataset_asset(cfg, feed), build_dataset_files_asset(cfg, feed)]
    return assets


def build_all_assets(cfg: AppConfig) -> list[dg.AssetsDefinition]:
    return [a for feed in cfg.feeds for a in build_feed_assets(cfg, feed)]


def routed_tables(cfg: AppConfig) -> list:
    """Every table an asset writes through the router (the `_files` asset writes its own files)."""
    out = []
    for feed in cfg.feeds:
        out += [table_ref(feed, layer, feed.timeframe) for layer in ("raw", "normalized", "quarantine")]
        out += [table_ref(feed, "derived", tf) for tf in feed.derived_timeframes]
        out += [table_ref(feed, "enriched", tf) for tf in feed.enriched_timeframes]
        if cfg.dataset.enabled:
            out.append(table_ref(feed, "dataset", feed.llm_timeframe))
    return out


def tables_read_downstream(cfg: AppConfig) -> list:
    """Tables some asset loads as an input: they must reach storage.primary unfiltered."""
    out = []
    for feed in cfg.feeds:
        out += [table_ref(feed, "raw", feed.timeframe), table_ref(feed, "normalized", feed.timeframe)]
        out += [table_ref(feed, "derived", tf) for tf in feed.derived_timeframes if tf in feed.enriched_timeframes]
        out += [table_ref(feed, "enriched", tf) for tf in feed.enriched_timeframes if tf == feed.llm_timeframe]
        if cfg.dataset.enabled:
            out.append(table_ref(feed, "dataset", feed.llm_timeframe))
    return out
