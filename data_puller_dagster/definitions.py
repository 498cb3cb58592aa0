"""The Dagster code location: everything assembled from data_puller.yaml in one place."""

from __future__ import annotations

import dagster as dg

from data_puller_dagster.assets.feed import build_all_assets
from data_puller_dagster.automation.jobs import build_jobs
from data_puller_dagster.config import AppConfig, load_config
from data_puller_dagster.io.io_manager import build_io_manager


def build_definitions(cfg: AppConfig) -> dg.Definitions:
    """Assets (with their checks), jobs, schedules, sensors and the routed IO manager for a config."""
    from data_puller_dagster.automation.schedules import build_schedules
    from data_puller_dagster.automation.sensors import build_sensors

    return dg.Definitions(
        assets=build_all_assets(cfg),
        jobs=build_jobs(cfg),
        schedules=build_schedules(cfg),
        sensors=build_sensors(cfg),
        resources={"io_manager": build_io_manager(cfg)},
    )


defs = build_definitions(load_config())
