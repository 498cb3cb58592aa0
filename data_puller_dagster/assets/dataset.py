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
from datetime import timedelta

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext
from pydantic import BaseModel

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
from data_puller_dagster.transform.dataset_window import quality_by_day, window_examples  # noqa: F401
from data_puller_dagster.transform.llm_card import DatasetCard
from data_puller_dagster.transform.llm_dataset import SCHEMA_VERSION, features_for, write_dataset
from data_puller_dagster.transform.llm_features import history_candles

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
        "indicators": _without_new_defaults(cfg.indicators, _ADDED_INDICATORS),
        "dataset": _without_new_defaults(cfg.dataset_for(feed), _ADDED_DATASET),
        "validation": cfg.validation.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


# Options added after datasets existed (issue 19): left out of the hash while at their defaults, so a
# config that does not use them keeps its hash (and code version) and its datasets are not marked stale.
_ADDED_INDICATORS = ("patterns",)
_ADDED_DATASET = (
    "volume_profile_buckets", "volume_profile_lookback", "price_encoding", "context_layout", "max_tokens_per_example",
)  # fmt: skip


def _without_new_defaults(model: BaseModel, added: tuple[str, ...]) -> dict:
    data = model.model_dump(mode="json")
    fields = type(model).model_fields
    defaults = {k: fields[k].get_default(call_default_factory=True) for k in added}
    return {k: v for k, v in data.items() if not (k in defaults and v == defaults[k])}


def build_dataset_asset(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.llm_timeframe
    # Resolved at definitions load: a feature the feed or the indicators cannot serve fails here, naming it.
    features = features_for(feed, cfg.dataset_for(feed), cfg.indicators)
    days_before = days_for_candles(feed.asset_class, tf, history_candles(features, cfg.dataset_for(feed)))

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
        # Per symbol, each day gated on its own completeness: transform/dataset_window (also the library's).
        out, excluded = window_examples(
            enriched,
            feed=feed,
            dataset=cfg.dataset_for(feed),
            indicators=cfg.indicators,
            start=pd.Timestamp(window.start_ts),
            end=pd.Timestamp(window.end_ts),
            lookback_days=days_before,
            lookahead_days=1,
        )
        add_partition_metadata(
            context,
            context.assets_def.key,
            partition_groups(out.drop(columns=["line"]), window),
            lambda _k, rows: {"examples_by_split": dg.MetadataValue.json(_splits(rows))},
        )
        context.log.info(
            f"dataset {tf} {window.describe()}: {len(out)} example(s) {_splits(out)}, "
            f"{excluded['low_quality']} excluded for low quality, {excluded['token_budget']} over the token budget"
        )
        return dg.Output(
            out,
            metadata={
                "excluded_low_quality": dg.MetadataValue.int(excluded["low_quality"]),
                "excluded_token_budget": dg.MetadataValue.int(excluded["token_budget"]),
            },
        )

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
        ds = cfg.dataset_for(feed)
        manifest = write_dataset(
            _monthly_batches(router, src, feed),
            out_dir,
            name=f"{feed.name}_{tf}",
            config_hash=dataset_config_hash(cfg, feed),
            dataset_format=cfg.dataset.format,
            card=DatasetCard(feed, ds, features_for(feed, ds, cfg.indicators)),
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
