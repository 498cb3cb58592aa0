"""Property tests: whatever mess the provider sends, normalize's output passes the schema and every input
row is accounted for exactly once (output, quarantine, or counted duplicate).

Inputs are real candles (BTCUSDT 1h, EUR/USD 1h) resampled by hypothesis: rows picked with repetition
(duplicates, some refetched later with other values), shuffled, and corrupted field by field the ways
providers corrupt them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster.transform.normalize import QUARANTINE_DTYPES, RULES, normalize
from data_puller_dagster.transform.schemas import validate_normalized
from data_puller_dagster_tests.transform import rawframes as R

BTC = R.btcusdt_1h().iloc[:300].reset_index(drop=True)
EUR = R.eurusd_1h().iloc[:300].reset_index(drop=True)
NOW = pd.Timestamp("2024-01-01", tz="UTC")

BAD_NUMBERS = ["", "abc", "-1", "0", "nan", "inf", "1e400", " 5 ", "1,5", None]
MUTATIONS = ["none", "price", "swap_hl", "volume", "fetched_late", "fetched_early", "time", "symbol", "timeframe"]


def _mutate(raw: pd.DataFrame, picks: list[tuple[int, str, int, int]], layout: str) -> pd.DataFrame:
    rows = raw.iloc[[p[0] % len(raw) for p in picks]].reset_index(drop=True)
    rows = rows.astype({c: object for c in ("open", "high", "low", "close", "volume")})
    rows["symbol"] = rows["symbol"].astype(object)
    rows["timeframe"] = rows["timeframe"].astype(object)
    time_col = "open_time" if layout == "binance" else "datetime"
    rows[time_col] = rows[time_col].astype(object)
    fetched = rows["fetched_at"].copy()
    for i, (_, kind, a, b) in enumerate(picks):  # building test input, not transforming candles
        col = ["open", "high", "low", "close"][a % 4]
        if kind == "price":
            rows.at[i, col] = BAD_NUMBERS[b % len(BAD_NUMBERS)]
        elif kind == "swap_hl":
            rows.at[i, "high"], rows.at[i, "low"] = rows.at[i, "low"], rows.at[i, "high"]
        elif kind == "volume":
            rows.at[i, "volume"] = BAD_NUMBERS[b % len(BAD_NUMBERS)]
        elif kind == "fetched_late":
            fetched.iat[i] = fetched.iat[i] + pd.Timedelta(minutes=b)
            rows.at[i, "close"] = str(float(rows.at[i, "close"]) * (1 + (b % 3) * 1e-4))
        elif kind == "fetched_early":
            fetched.iat[i] = rows["ts"].iat[i] + pd.Timedelta(minutes=b % 60)
        elif kind == "time":
            if layout == "binance":
                rows.at[i, time_col] = [-1, 0, int(rows.at[i, time_col]) + 60_000 * (b % 5),
                                        int(rows.at[i, time_col]) * 1000, 99 * 10**18][b % 5]  # fmt: skip
            else:
                rows.at[i, time_col] = ["", "2017-13-01 00:00:00", "junk", None,
                                        str(rows.at[i, time_col])[:10] + " 10:30:00"][b % 5]  # fmt: skip
        elif kind == "symbol":
            rows.at[i, "symbol"] = ["", None, "lower", "A B"][b % 4]
        elif kind == "timeframe":
            rows.at[i, "timeframe"] = "1d"
    rows["fetched_at"] = fetched
    for c in ("open", "high", "low", "close", "volume", "symbol", "timeframe"):
        rows[c] = rows[c].astype("string")
    if layout == "binance":
        rows[time_col] = pd.to_numeric(rows[time_col]).astype("int64")
    else:
        rows[time_col] = rows[time_col].astype("string")
    return rows


picks_strategy = st.lists(
    st.tuples(
        st.integers(0, 299),
        st.sampled_from(MUTATIONS),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    min_size=0,
    max_size=80,
)


def _check(raw: pd.DataFrame, asset_class: str) -> None:
    res = normalize(raw, asset_class=asset_class, timeframe="1h", now=NOW)
    rep = res.report
    # every input row ends in exactly one place
    assert rep.accounted() == rep.rows_in == len(raw)
    assert len(res.data) == rep.rows_out and len(res.quarantine) == rep.quarantined
    assert rep.quarantined_by_rule == res.quarantine["rule"].value_counts().to_dict()
    assert set(res.quarantine["rule"]) <= set(RULES)
    # output always passes the normalized schema, dtypes exact even when empty
    summary = validate_normalized(res.data)
    assert summary.ok, summary.failures
    assert {c: str(t) for c, t in res.data.dtypes.items()} == CANONICAL_DTYPES
    assert {c: str(t) for c, t in res.quarantine.dtypes.items()} == QUARANTINE_DTYPES
    # one row per candle; a still-open candle is never final
    assert not res.data.duplicated(["symbol", "timeframe", "ts"]).any()
    open_ = res.data["fetched_at"] < res.data["ts"] + pd.Timedelta(hours=1)
    assert not (res.data["is_final"] & open_).any()
    # each distinct valid candle key survives: output keys == keys of non-quarantined input rows
    assert rep.duplicates_identical + rep.duplicate_conflicts + rep.superseded_open == (
        rep.rows_in - rep.quarantined - len(res.data)
    )
    assert np.isfinite(res.data[["open", "high", "low", "close"]].to_numpy()).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=picks_strategy)
def test_binance_invariants(picks: list[tuple[int, str, int, int]]) -> None:
    _check(_mutate(BTC, picks, "binance"), "crypto")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=picks_strategy)
def test_twelvedata_invariants(picks: list[tuple[int, str, int, int]]) -> None:
    _check(_mutate(EUR, picks, "twelvedata"), "forex")
