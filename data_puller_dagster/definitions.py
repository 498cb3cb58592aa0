"""The Dagster code location: everything assembled from data_puller.yaml in one place."""

from __future__ import annotations

import warnings

import dagster as dg

from data_puller_dagster.assets.feed import build_all_assets, routed_tables, tables_read_downstream
from data_puller_dagster.automation.jobs import build_jobs
from data_puller_dagster.config import AppConfig, load_config
from data_puller_dagster.io.io_manager import build_io_manager
from data_puller_dagster.io.router import Router

# Backfill policies, pools and multi-partition mappings are beta/preview APIs in Dagster 1.13; we rely
# on them deliberately, so their warnings would only bury real ones.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(cfg: AppConfig) -> dg.Definitions:
    """Assets (with their checks), jobs, schedules, sensors and the routed IO manager for a config."""
    from data_puller_dagster.automation.schedules import build_schedules
    from data_puller_dagster.automation.sensors import build_sensors

    Router(cfg).validate(routed_tables(cfg), read_downstream=tables_read_downstream(cfg))
    return dg.Definitions(
        assets=build_all_assets(cfg),
        jobs=build_jobs(cfg),
        schedules=build_schedules(cfg),
        sensors=build_sensors(cfg),
        resources={"io_manager": build_io_manager(cfg)},
    )


defs = build_definitions(load_config())
