"""Real candle frames for the storage tests, built from the backtesting.py EURUSD hourly fixture.

The fixture's 5000 hourly candles (2017-04-19 onwards) are the real values; tests shift them onto
whichever days and symbols they need, so partitions hold realistic prices, gaps and weekends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import psycopg2
import pytest
from psycopg2 import sql

from data_puller_dagster.transform.canonical import coerce_canonical

FIXTURE = Path(__file__).parents[1] / "fixtures" / "backtesting_py" / "EURUSD.csv"
PG_URL = os.environ.get("DATA_PULLER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def eurusd_hourly() -> pd.DataFrame:
    raw = pd.read_csv(FIXTURE, index_col=0, parse_dates=True)
    raw.index = raw.index.tz_localize("UTC")
    return raw


def candles(symbol: str, start: date, days: int, *, seed_offset: int = 0) -> pd.DataFrame:
    """Canonical 1h candles for `symbol` on `days` UTC days from `start`, real EURUSD values.

    `seed_offset` picks a different stretch of the fixture so two writes of the same slice differ.
    """
    raw = eurusd_hourly()
    # Re-base the real series onto the requested days, keeping its own gaps (weekends).
    shift = pd.Timestamp(start, tz="UTC") - raw.index[0].normalize() - pd.Timedelta(days=seed_offset)
    ts = raw.index + shift
    keep = (ts >= pd.Timestamp(start, tz="UTC")) & (
        ts < pd.Timestamp(start, tz="UTC") + pd.Timedelta(days=days)
    )
    sel = raw[keep]
    volume = sel["Volume"].to_numpy(dtype="float64")
    df = pd.DataFrame(
        {
            "ts": ts[keep],
            "symbol": symbol,
            "asset_class": "forex",
            "timeframe": "1h",
            "source": "twelvedata",
            "open": sel["Open"].to_numpy(),
            "high": sel["High"].to_numpy(),
            "low": sel["Low"].to_numpy(),
            "close": sel["Close"].to_numpy(),
            "volume": volume,
            "trades": pd.Series(volume.astype("int64"), dtype="Int64").mask(volume % 7 == 0).array,
            "quote_volume": pd.Series(volume * sel["Close"].to_numpy()).where(volume % 5 != 0).to_numpy(),
            "fetched_at": pd.Timestamp("2024-06-01 12:00:00.123456", tz="UTC"),
            "is_final": volume % 2 == 0,
        }
    )
    return coerce_canonical(df).reset_index(drop=True)


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["symbol", "ts"], kind="stable").reset_index(drop=True)


@pytest.fixture
def pg_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema prefix on the real Postgres server; every schema it names is dropped afterwards.

    Unreachable server: skip locally, FAIL under CI=true (the store must be tested for real).
    """
    try:
        conn = psycopg2.connect(PG_URL, connect_timeout=5)
    except psycopg2.OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres at {PG_URL} unreachable under CI: {e}")
        pytest.skip(f"Postgres at {PG_URL} unreachable: {e}")
    prefix = f"t{os.getpid()}_{os.urandom(3).hex()}_"
    conn.close()
    yield PG_URL, prefix
    conn = psycopg2.connect(PG_URL)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (prefix,))
        for (name,) in cur.fetchall():
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    conn.close()
