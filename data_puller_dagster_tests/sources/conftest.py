"""Shared helpers for adapter tests: adapters wired to fakes with millisecond backoff."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.sources.binance import BinanceAdapter, BinanceRest
from data_puller_dagster.sources.ratelimit import MinuteBudget

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DEMO = Path(__file__).resolve().parents[2] / "demo" / "market_data"


def utc(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def rest(url: str, **kw: object) -> BinanceRest:
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("max_retries", 3)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("budget", MinuteBudget(6000, 0.8, used_header="X-MBX-USED-WEIGHT-1M", provider="binance"))
    return BinanceRest(url, **kw)  # type: ignore[arg-type]


def binance(url: str, **kw: object) -> BinanceAdapter:
    return BinanceAdapter(rest(url, **kw))


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
