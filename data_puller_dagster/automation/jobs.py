"""Jobs per feed: what the schedule and the gap-filling sensor launch.

Multi-partition runs hold one symbol and a date range, so a daily update is one run per symbol (Dagster
cannot put several symbols' date ranges in one run). Runs carry the provider tag that dagster.yaml's run
queue limits, so scheduled, sensor and backfill runs together stay within provider rate limits.
"""

from __future__ import annotations

import dagster as dg

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.assets.partitions import feed_partitions
from data_puller_dagster.config import AppConfig, FeedConfig

PROVIDER_TAG = "data_puller/provider"
FEED_TAG = "data_puller/feed"


def pipeline_job_name(feed: FeedConfig) -> str:
    return f"{feed.name}_pipeline"


def dataset_job_name(feed: FeedConfig) -> str:
    return f"{feed.name}_llm_dataset"


def pipeline_job(cfg: AppConfig, feed: FeedConfig) -> dg.UnresolvedAssetJobDefinition:
    """raw -> normalized -> derived -> enriched for a partition (the dataset needs the next day too)."""
    selection = dg.AssetSelection.groups(feed.name)
    if cfg.dataset.enabled:  # without the dataset those assets do not exist, and naming them is an error
        selection -= dg.AssetSelection.assets(
            asset_key(feed, "dataset", feed.llm_timeframe), dataset_files_key(feed)
        )
    return dg.define_asset_job(
        pipeline_job_name(feed),
        selection=selection,
        partitions_def=feed_partitions(feed),
        tags={PROVIDER_TAG: feed.source, FEED_TAG: feed.name},
        description=f"Pull, normalize, derive and enrich {feed.name} candles for a day range of one symbol.",
    )


def dataset_job(cfg: AppConfig, feed: FeedConfig) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        dataset_job_name(feed),
        selection=dg.AssetSelection.assets(asset_key(feed, "dataset", feed.llm_timeframe)),
        partitions_def=feed_partitions(feed),
        tags={FEED_TAG: feed.name},
        description=f"LLM training examples of {feed.name} for a day range of one symbol.",
    )


def build_jobs(cfg: AppConfig) -> list[dg.UnresolvedAssetJobDefinition]:
    jobs = []
    for feed in cfg.feeds:
        jobs.append(pipeline_job(cfg, feed))
        if cfg.dataset.enabled:
            jobs.append(dataset_job(cfg, feed))
            jobs.append(dataset_files_job(cfg, feed))
    return jobs


def dataset_files_job_name(feed: FeedConfig) -> str:
    return f"{feed.name}_llm_dataset_files"


def dataset_files_job(cfg: AppConfig, feed: FeedConfig) -> dg.UnresolvedAssetJobDefinition:
    """The JSONL files of a feed (unpartitioned): launched by the `<feed>_dataset_files` sensor."""
    return dg.define_asset_job(
        dataset_files_job_name(feed),
        selection=dg.AssetSelection.assets(dataset_files_key(feed)),
        tags={FEED_TAG: feed.name},
        description=f"Write the {feed.name} LLM dataset JSONL files and manifest from every built day.",
    )
