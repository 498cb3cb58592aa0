"""Gap-filling sensor (issue 8). Placeholder until the sensor lands: no sensors yet."""

from __future__ import annotations

import dagster as dg

from data_puller_dagster.config import AppConfig


def build_sensors(cfg: AppConfig) -> list[dg.SensorDefinition]:
    return []
