"""Shared fixtures. Real market data lives in data_puller_dagster_tests/fixtures (copied from
../shared/market-data; see fixtures/SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"

# Real servers started on free ports by session fixtures (see servers/).
pytest_plugins = [
    "data_puller_dagster_tests.servers.influxdb",
    "data_puller_dagster_tests.servers.kafka",
    "data_puller_dagster_tests.servers.s3",
]


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
