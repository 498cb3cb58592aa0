"""`proven_valid` (validate_normalized's shortcut) never passes a frame pandera would fail, and
validate_normalized reports exactly what pandera reports, for valid and broken canonical frames alike."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.schemas import (
    NormalizedModel,
    _validate,
    proven_valid,
    ts_aligned,
    validate_normalized,
)
from data_puller_dagster_tests.transform import rawframes as R

NOW = pd.Timestamp("2026-01-01", tz="UTC")
SCHEMA = NormalizedModel.to_schema()


def canonical(symbols: tuple[str, ...] = ("BTCUSDT",)) -> pd.DataFrame:
    raw = R.btcusdt_1h()
    parts = [raw.assign(symbol=pd.Series(s, index=raw.index, dtype="string")) for s in symbols]
    return normalize(pd.concat(parts, ignore_index=True), asset_class="crypto", timeframe="1h", now=NOW).data


def _at(df: pd.DataFrame, col: str, value: object, row: int = 5) -> pd.DataFrame:
    out = df.copy()
    s = out[col].astype(object)
    s.iloc[row] = value
    out[col] = s.astype(df[col].dtype)
    return out


BREAKS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "nan price": lambda d: _at(d, "open", np.nan),
    "inf price": lambda d: _at(d, "high", np.inf),
    "zero price": lambda d: _at(d, "low", 0.0),
    "negative volume": lambda d: _at(d, "volume", -1.0),
    "nan volume (nullable)": lambda d: _at(d, "volume", np.nan),
    "negative trades": lambda d: _at(d, "trades", -1),
    "null trades (nullable)": lambda d: _at(d, "trades", pd.NA),
    "high below low": lambda d: _at(d, "high", 1.0),
    "null symbol": lambda d: _at(d, "symbol", pd.NA),
    "invalid symbol": lambda d: _at(d, "symbol", "bad sym"),
    "unknown timeframe": lambda d: _at(d, "timeframe", "7m"),
    "unknown asset class": lambda d: _at(d, "asset_class", "stock"),
    "null source": lambda d: _at(d, "source", pd.NA),
    "misaligned ts": lambda d: _at(d, "ts", d["ts"].iloc[5] + pd.Timedelta(minutes=1)),
    "NaT ts": lambda d: _at(d, "ts", pd.NaT),
    "NaT fetched_at": lambda d: _at(d, "fetched_at", pd.NaT),
    "duplicate key": lambda d: pd.concat([d, d.iloc[[3]]], ignore_index=True),
    "unsorted but unique": lambda d: d.iloc[::-1].reset_index(drop=True),
    "object strings": lambda d: d.astype({"source": object}),
    "arrow strings": lambda d: d.astype({"symbol": "string[pyarrow]"}),
    "float trades": lambda d: d.astype({"trades": "float64"}),
    "extra column": lambda d: d.assign(extra=1.0),
    "missing column": lambda d: d.drop(columns="quote_volume"),
    "reordered columns": lambda d: d[[*d.columns[1:], d.columns[0]]],
    "two symbols": lambda d: pd.concat([d, d.assign(symbol=pd.Series("ETHUSDT", index=d.index, dtype="string"))]),
    "empty": lambda d: d.iloc[:0],
    "one row": lambda d: d.iloc[:1],
}


@pytest.mark.parametrize("name", list(BREAKS))
def test_shortcut_agrees_with_pandera(name: str) -> None:
    df = BREAKS[name](canonical())
    pandera = _validate(NormalizedModel, df.copy(), 10)
    if proven_valid(SCHEMA, df):
        assert pandera.ok, f"{name}: proven valid, but pandera reports {pandera.failures}"
    got = validate_normalized(df)
    assert (got.ok, got.failures, got.rows) == (pandera.ok, pandera.failures, pandera.rows)


def test_normalize_output_is_proven_valid_for_one_and_several_symbols() -> None:
    assert proven_valid(SCHEMA, canonical())
    assert proven_valid(SCHEMA, canonical(("BTCUSDT", "ETHUSDT", "XRPETH")))


def test_random_corruptions_never_pass_the_shortcut_alone() -> None:
    rng = np.random.default_rng(11)
    base = canonical(("BTCUSDT", "ETHUSDT"))
    floats = ["open", "high", "low", "close", "volume", "quote_volume"]
    for _ in range(40):
        df = base.copy()
        for _ in range(int(rng.integers(1, 4))):
            col = str(rng.choice(floats))
            row = int(rng.integers(0, len(df)))
            df.loc[row, col] = float(rng.choice([np.nan, -1.0, 0.0, np.inf, 1e-9, 1e9]))
        if proven_valid(SCHEMA, df):
            assert _validate(NormalizedModel, df.copy(), 10).ok


def test_ts_aligned_per_distinct_value_matches_the_row_by_row_rule() -> None:
    df = pd.DataFrame({
        "ts": pd.to_datetime(["2024-01-01 09:30", "2024-01-01 10:00", "2024-01-01 10:07", "2024-01-01 11:00",
                              "2024-01-01 12:00", "2024-01-01 13:30"], utc=True).astype("datetime64[ns, UTC]"),
        "timeframe": pd.array(["1h", "1h", "1m", None, "9h", "4h"], dtype="string"),
        "asset_class": pd.array(["equity", "crypto", "crypto", "crypto", "index", None], dtype="string"),
    })  # fmt: skip
    tf_ns = {"1m": 60 * 10**9, "1h": 3600 * 10**9, "4h": 4 * 3600 * 10**9}
    step = df["timeframe"].map(tf_ns).astype("float64").fillna(0).to_numpy().astype("int64")
    exchange = df["asset_class"].isin(["equity", "index"]).to_numpy() & (step > 1800 * 10**9) & (step < 86400 * 10**9)
    step = np.where(exchange, 1800 * 10**9, step)
    values = df["ts"].to_numpy("datetime64[ns]").view("int64")
    want = (step > 0) & (values % np.where(step > 0, step, 1) == 0)
    assert ts_aligned(df).tolist() == want.tolist() == [True, True, True, False, False, False]
