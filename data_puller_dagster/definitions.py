"""The Dagster code location: everything assembled from data_puller.yaml in one place."""

from __future__ import annotations

import dagster as dg

from data_puller_dagster.config import AppConfig, load_config


def build_definitions(cfg: AppConfig) -> dg.Definitions:
    """Assemble assets, checks, IO managers, schedules and sensors for a config."""
    return dg.Definitions(assets=[])


defs = build_definitions(load_config())
