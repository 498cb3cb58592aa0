"""A tiny self-contained code location with the real asset keys, jobs and sensors of a config.

Why a stub: the sensors only care about asset keys, partitions, event metadata and run outcomes, not
about candles. This location keeps the real jobs (automation.jobs) and sensors (automation.sensors) and
replaces the layers by small assets whose "provider" is a JSON file of holes, so the sensor tests and
the daemon end-to-end test run while the real sources/io layers are still being written.

Holes file (STUB_HOLES env or holes= argument): {"YYYY-MM-DD|SYMBOL": missing candles} for days the
provider lacks candles, {"fail": ["YYYY-MM-DD|SYMBOL", ...]} for days whose fetch raises.
"""

import json
import os
from pathlib import Path

import dagster as dg
import yaml

from data_puller_dagster.assets.naming import asset_key, dataset_files_key
from data_puller_dagster.assets.partitions import feed_partitions, window_mapping
from data_puller_dagster.automation.jobs import build_jobs
from data_puller_dagster.automation.sensors import MISSING_BY_DAY, build_sensors
from data_puller_dagster.config import AppConfig, FeedConfig, parse_config


class Holes:
    """The fake provider's view of which candles do not exist (file re-read on every run, so a test
    can change what the provider has between runs, e.g. to fill a gap on refetch)."""

    def __init__(self, path: Path | None = None, data: dict | None = None):
        self.path = path
        self.data = data if data is not None else {}

    def current(self) -> dict:
        if self.path is not None:
            return json.loads(self.path.read_text()) if self.path.exists() else {}
        return self.data


def stub_assets(cfg: AppConfig, feed: FeedConfig, holes: Holes) -> list[dg.AssetsDefinition]:
    tf = feed.llm_timeframe
    parts = feed_partitions(feed)

    @dg.asset(key=asset_key(feed, "normalized", feed.timeframe), partitions_def=parts, group_name=feed.name)
    def normalized(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        h = holes.current()
        by_day: dict[str, dict[str, int]] = {}
        for pk in context.partition_keys:
            if pk in h.get("fail", []):
                raise RuntimeError(f"fake provider: {pk} unavailable")
            if h.get(pk):
                day, sym = pk.split("|")
                by_day.setdefault(day, {})[sym] = int(h[pk])
        return dg.MaterializeResult(metadata={MISSING_BY_DAY: dg.MetadataValue.json(by_day)})

    @dg.asset(
        key=asset_key(feed, "enriched", tf),
        deps=[normalized],
        partitions_def=parts,
        group_name=feed.name,
    )
    def enriched() -> None:
        return None

    out = [normalized, enriched]
    if cfg.dataset.enabled:

        @dg.asset(
            key=asset_key(feed, "dataset", tf),
            deps=[dg.AssetDep(enriched, partition_mapping=window_mapping(0, days_after=1))],
            partitions_def=parts,
            group_name=feed.name,
        )
        def dataset() -> None:
            return None

        @dg.asset(key=dataset_files_key(feed), deps=[dataset], group_name=feed.name)
        def files() -> None:
            return None

        out += [dataset, files]
    return out


def stub_definitions(cfg: AppConfig, holes: Holes) -> dg.Definitions:
    return dg.Definitions(
        assets=[a for feed in cfg.feeds for a in stub_assets(cfg, feed, holes)],
        jobs=build_jobs(cfg),
        sensors=build_sensors(cfg),
    )


def _from_env() -> dg.Definitions:
    cfg = parse_config(yaml.safe_load(Path(os.environ["STUB_CONFIG"]).read_text()), env={})
    return stub_definitions(cfg, Holes(Path(os.environ["STUB_HOLES"])))


defs = _from_env() if os.environ.get("STUB_CONFIG") else None
