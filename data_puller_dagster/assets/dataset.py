"""LLM training data: `<feed>/llm_dataset_<tf>` (examples per day partition) and
`<feed>/llm_dataset_<tf>_files` (the JSONL split files with their manifest).

A day's examples need `context_window` earlier candles and the next candle (the target), so each
partition reads earlier days and the following day; the last candle of a day gets its example once the
next day exists. Every enriched day is computed from its own anchored window (assets/enriched.py), so
building day by day gives byte for byte the files of one range run; the manifest's config_hash covers
only what decides the content (`dataset_config_hash`), never where it is stored.
"""


import hashlib
import json
from collections.abc import Iterator
from datetime import date, timedelta

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.naming import asset_key, dataset_files_key, table_ref
from data_puller_dagster.assets.partition_metadata import add_partition_metadata, partition_groups
from data_puller_dagster.assets.partitions import (
    backfill_policy,
    context_window,
    days_for_candles,
    feed_partitions,
    window_mapping,
)
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartitionSlice
from data_puller_dagster.transform.calendars import expected_grid
from data_puller_dagster.transform.llm_dataset import (
    SCHEMA_VERSION,
    build_examples,
    empty_examples,
    write_dataset,
)

CODE_VERSION = "dataset-1"


def dataset_config_hash(cfg: AppConfig, feed: FeedConfig) -> str:
    """Hash of the configuration that decides a feed's dataset *content*, for the manifest and code versions.

    Why not `cfg.fingerprint()`: that hashes the whole config, storage paths (data_dir, parquet_root,
    datasets_dir, ...), routes and run settings included, so moving the data or changing a retry count
    would change the manifest of identical files. Included: the feed (symbols, dates, timeframes,
    decimals, split), the indicators, the effective dataset options, the validation threshold (it
    decides which days are trusted) and the JSONL schema version. Excluded: storage, sources (URLs,
    keys, archive use fetch the same candles), routes, runs, automation.
    """
    content = {
        "schema_version": SCHEMA_VERSION,
        "feed": feed.model_dump(mode="json"),
        "indicators": cfg.indicators.model_dump(mode="json"),
        "dataset": cfg.dataset_for(feed).model_dump(mode="json"),
        "validation": cfg.validation.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def quality_by_day(enriched: pd.DataFrame, feed: FeedConfig, tf: str) -> dict[date, float]:
    """Completeness of each UTC day's candles against the market calendar (1.0 when the market was shut).

    Used to drop examples from days below `dataset.min_quality`.
    """
    if enriched.empty:
        return {}
    start = enriched["ts"].min().floor("D")
    end = enriched["ts"].max().floor("D") + pd.Timedelta(days=1)
    grid = expected_grid(feed.asset_class, tf, start, end)
    expected = pd.Series(1, index=grid).groupby(grid.date).sum()
    present_ts = pd.DatetimeIndex(enriched["ts"]).intersection(grid)
    present = pd.Series(1, index=present_ts).groupby(present_ts.date).sum()
    ratio = (present.reindex(expected.index, fill_value=0) / expected).clip(upper=1.0)
    days = pd.Index(pd.DatetimeIndex(enriched["ts"]).date).unique()
    return {d: float(ratio.get(d, 1.0)) for d in days}


def build_dataset_asset(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.llm_timeframe
    days_before = days_for_candles(feed.asset_class, tf, cfg.dataset.context_window)

    @dg.asset(
        key=asset_key(feed, "dataset", tf),
        ins={
            "enriched": dg.AssetIn(
                asset_key(feed, "enriched", tf), partition_mapping=window_mapping(days_before, days_after=1)
            )
        },
        partitions_def=feed_partitions(feed),
        group_name=feed.name,
        kinds={"pandas", "json", *storage_kinds(cfg, feed, "dataset", tf)},
        tags=catalog_tags(feed, "dataset", tf),
        code_version=f"{CODE_VERSION}-{dataset_config_hash(cfg, feed)}",
        description=(
            f"One LLM training example per {tf} candle ({cfg.dataset.format} format, context of "
            f"{cfg.dataset.context_window} candles), as ready-serialized JSON lines with their split."
        ),
        metadata=catalog_metadata(cfg, feed, "dataset", tf),
        backfill_policy=backfill_policy(cfg),
    )
    def dataset(context: AssetExecutionContext, enriched: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        window = context_window(context, cfg, feed)
        frames = []
        excluded_quality = 0
        for _, rows in enriched.groupby("symbol", sort=True):
            rows = rows.sort_values("ts", kind="stable").reset_index(drop=True)
            batch = build_examples(
                rows,
                feed=feed,
                dataset=cfg.dataset_for(feed),
                indicators=cfg.indicators,
                start=pd.Timestamp(window.start_ts),
                end=pd.Timestamp(window.end_ts),
                quality_by_day=quality_by_day(rows, feed, tf),
                lookback_days=days_before,
                lookahead_days=1,
            )
            frames.append(batch.frame)
            excluded_quality += int(batch.excluded_low_quality)
        out = pd.concat(frames, ignore_index=True) if frames else empty_examples()
        add_partition_metadata(
            context,
            context.assets_def.key,
            partition_groups(out.drop(columns=["line"]), window),
            lambda _k, rows: {"examples_by_split": dg.MetadataValue.json(_splits(rows))},
        )
        context.log.info(
            f"dataset {tf} {window.describe()}: {len(out)} example(s) {_splits(out)}, "
            f"{excluded_quality} excluded for low quality"
        )
        return dg.Output(out, metadata={"excluded_low_quality": dg.MetadataValue.int(excluded_quality)})

    return dataset


def _splits(rows: pd.DataFrame) -> dict[str, int]:
    counts = rows["split"].value_counts().to_dict() if len(rows) else {}
    return {str(k): int(v) for k, v in counts.items()}


def build_dataset_files_asset(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.llm_timeframe
    src = table_ref(feed, "dataset", tf)

    @dg.asset(
        key=dataset_files_key(feed),
        deps=[asset_key(feed, "dataset", tf)],
        group_name=feed.name,
        kinds={"json"},
        tags=catalog_tags(feed, "dataset_files", tf),
        metadata={"dagster/uri": str(cfg.storage.datasets_location / feed.name / f"llm_{tf}")},
        code_version=f"{CODE_VERSION}-{dataset_config_hash(cfg, feed)}",
        description=(
            "The JSONL dataset files (train/validation/test) and manifest.json, assembled from every "
            "materialized day of the examples asset, streamed a month at a time."
        ),
    )
    def dataset_files(context: AssetExecutionContext) -> dg.MaterializeResult:
        router = Router(cfg)
        out_dir = cfg.storage.datasets_location / feed.name / f"llm_{tf}"
        manifest = write_dataset(
            _monthly_batches(router, src, feed),
            out_dir,
            name=f"{feed.name}_{tf}",
            config_hash=dataset_config_hash(cfg, feed),
            dataset_format=cfg.dataset.format,
        )
        context.log.info(f"dataset written to {out_dir}: {manifest.get('rows')}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(out_dir)),
                "manifest": dg.MetadataValue.json(manifest),
            }
        )

    return dataset_files


def _monthly_batches(router: Router, table, feed: FeedConfig) -> Iterator[pd.DataFrame]:
    """Symbol by symbol, month by month, in (symbol, ts) order: bounded memory, deterministic order."""
    last = feed.end_date or (pd.Timestamp.now(tz="UTC").date())
    for key, display in sorted(feed.symbol_keys.items()):
        start = feed.start_date
        while start <= last:
            nxt = (pd.Timestamp(start) + pd.offsets.MonthBegin(1)).date()
            end = min(nxt - timedelta(days=1), last)
            part = router.read(table, PartitionSlice(symbols={key: display}, start=start, end=end))
            if len(part):
                yield part.sort_values("ts", kind="stable").reset_index(drop=True)
            start = nxt
