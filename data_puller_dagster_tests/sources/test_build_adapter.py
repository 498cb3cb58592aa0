"""`build_adapter(cfg, feed)` as the raw asset calls it: config -> adapter -> raw frame, on the offline demo data."""

from __future__ import annotations

import pandas as pd
import pytest

from data_puller_dagster.config import parse_config
from data_puller_dagster.sources import RAW_DTYPES, SourceAdapter, build_adapter, raw_empty
from data_puller_dagster_tests.fakes.binance import FakeBinance
from data_puller_dagster_tests.sources.conftest import DEMO, utc


def config(binance_url: str) -> dict:
    return {
        "sources": {
            "binance": {"base_url": binance_url, "archive_url": (DEMO / "binance").as_uri(), "max_retries": 0},
            "twelvedata": {"base_url": (DEMO / "twelvedata").as_uri()},
        },
        "feeds": [
            {"name": "crypto", "source": "binance", "asset_class": "crypto", "timeframe": "1m",
             "symbols": ["XRPETH"], "start_date": "2019-10-11"},
            {"name": "forex", "source": "twelvedata", "asset_class": "forex", "timeframe": "1h",
             "symbols": ["EUR/USD"], "start_date": "2017-04-19"},
        ],
    }  # fmt: skip


def test_demo_feeds_through_build_adapter() -> None:
    with FakeBinance() as fb:  # REST must not be needed: the demo archive has both days
        cfg = parse_config(config(fb.url))
        crypto = build_adapter(cfg, cfg.feed("crypto"))
        assert isinstance(crypto, SourceAdapter) and crypto.provider == "binance"
        df = crypto.fetch("XRPETH", "1m", utc("2019-10-11"), utc("2019-10-13"))
        crypto.close()
        assert fb.count() == 0
    assert len(df) == 2 * 1440 and df["open_time"].is_unique and (df["source"] == "binance_archive").all()
    forex = build_adapter(cfg, cfg.feed("forex"))
    assert forex.provider == "twelvedata"
    fx = forex.fetch("EUR/USD", "1h", utc("2017-04-20"), utc("2017-04-21"))
    forex.close()
    assert len(fx) == 24
    # Empty and non-empty frames share one schema (the raw asset concatenates per symbol).
    for provider, frame in (("binance", df), ("twelvedata", fx)):
        both = pd.concat([raw_empty(provider), frame], ignore_index=True)
        assert {c: str(t) for c, t in both.dtypes.items()} == {c: str(t) for c, t in frame.dtypes.items()}
        assert list(frame.columns) == list(RAW_DTYPES[provider])


def test_raw_empty_unknown_provider() -> None:
    with pytest.raises(ValueError, match="unknown raw layout 'kraken'"):
        raw_empty("kraken")
