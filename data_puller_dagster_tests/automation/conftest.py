"""Fixtures for the sensor tests: short-window configs, a real SQLite-backed instance, and a helper that
executes what a sensor requested as a real run of the stub code location."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG

from data_puller_dagster.config import AppConfig, parse_config
from data_puller_dagster_tests.automation.stub_location import Holes, stub_definitions

TODAY = datetime.now(UTC).date()
NOW = datetime.combine(TODAY, time(12), tzinfo=UTC)  # noon: yesterday is the sensors' to fill


def day(i: int) -> date:
    """Day i of the test window (day(0) = start_date = five days ago, day(4) = yesterday)."""
    return TODAY - timedelta(days=5) + timedelta(days=i)


def make_cfg(
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"),
    *,
    days: int = 5,
    max_per_run: int = 31,
    end_date: date | None = None,
    **gap: Any,
) -> AppConfig:
    feed: dict[str, Any] = {
        "name": "crypto",
        "source": "binance",
        "asset_class": "crypto",
        "timeframe": "1h",
        "symbols": list(symbols),
        "start_date": (TODAY - timedelta(days=days)).isoformat(),
    }
    if end_date:
        feed["end_date"] = end_date.isoformat()
    return parse_config(
        {
            "feeds": [feed],
            "runs": {"max_partitions_per_run": max_per_run},
            "automation": {
                "schedule": {"enabled": False},
                "gap_sensor": {"max_runs_in_flight": 10, "settle_hours": 36, "max_attempts": 2, **gap},
            },
        },
        env={},
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as inst:
        yield inst


class Runner:
    """Executes a RunRequest as a real in-process run of the stub location (what the daemon would do),
    with the request's tags and run key, against the fake provider's holes."""

    def __init__(self, cfg: AppConfig, instance: dg.DagsterInstance, holes: dict | None = None):
        self.holes = Holes(data=holes if holes is not None else {})
        self.defs = stub_definitions(cfg, self.holes)
        self.instance = instance

    def run(self, req: dg.RunRequest) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_job_def(req.job_name)
        return job.execute_in_process(
            instance=self.instance, tags={**req.tags, RUN_KEY_TAG: req.run_key}, raise_on_error=False
        )
