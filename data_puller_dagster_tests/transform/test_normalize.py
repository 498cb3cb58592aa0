"""normalize + schemas on real recorded responses and series, with every rule exercised."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.transform.canonical import CANONICAL_DTYPES, SCHEMA_VERSION
from data_puller_dagster.transform.normalize import QUARANTINE_DTYPES, RULES, RawFrameError, normalize
from data_puller_dagster.transform.quality import data_quality_score, quality_metadata
from data_puller_dagster.transform.schemas import validate_enriched, validate_normalized, validate_raw
from data_puller_dagster_tests.transform import rawframes as R

TD = R.FIXTURES / "twelvedata"


def _dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


def _accounted(res) -> None:  # noqa: ANN001
    rep = res.report
    assert rep.accounted() == rep.rows_in
    assert rep.rows_out == len(res.data) and rep.quarantined == len(res.quarantine)
    assert sum(rep.quarantined_by_rule.values()) == rep.quarantined


def test_binance_rest_klines_with_zero_trade_candles() -> None:
    raw = R.binance_klines_json(TD.parent / "binance" / "klines_ETHBTC_1m_2025-06-21_chainslake.json", "ETHBTC", "1m")
    assert validate_raw(raw).ok
    res = normalize(raw, asset_class="crypto", timeframe="1m")
    d = res.data
    assert _dtypes(d) == CANONICAL_DTYPES and validate_normalized(d).ok
    assert d["ts"].iloc[0] == pd.Timestamp("2025-06-21 03:49", tz="UTC") and d["ts"].is_monotonic_increasing
    body = json.loads((TD.parent / "binance" / "klines_ETHBTC_1m_2025-06-21_chainslake.json").read_text())
    assert d["close"].tolist() == [float(r[4]) for r in body]
    assert d["trades"].tolist() == [r[8] for r in body]
    zero = d[d["trades"] == 0]
    assert len(zero) == 5 == res.report.zero_trade_candles  # kept, not treated as missing
    assert (zero["volume"] == 0).all() and (zero[["open", "high", "low"]].to_numpy() == zero[["close"]].to_numpy()).all()


def test_archive_microsecond_open_times() -> None:
    raw = R.binance_archive_csv(R.FIXTURES / "binance" / "DOGEUSDT-1s-2025-01-01.sample.csv", "DOGEUSDT", "1m")
    res = normalize(raw, asset_class="crypto", timeframe="1m")
    # 16-digit µs: 1735689600000000 is 2025-01-01 00:00:00; the next two (1 s apart) are off the 1m grid.
    # The first is on the grid, but its own close_time says it spans 1 s: a 1s kline, not a 1m candle.
    assert res.data.empty
    assert res.quarantine["ts"].tolist() == [pd.Timestamp(f"2025-01-01 00:00:0{i}", tz="UTC") for i in range(3)]
    assert res.quarantine["rule"].tolist() == ["interval_mismatch", "misaligned_ts", "misaligned_ts"]
    assert res.quarantine["raw_ts"].tolist() == ["1735689600000000", "1735689601000000", "1735689602000000"]
    assert res.row_interval_s.tolist() == [1.0, 1.0, 1.0]
    _accounted(res)


def test_twelvedata_exchange_local_strings_to_utc() -> None:
    body = json.loads((TD / "time_series_AAPL_1min_2023-08-24_go-twelvedata.json").read_text())
    v = pd.DataFrame(body["values"]).astype("string")
    raw = v.assign(
        ts=pd.Series(pd.NaT, index=v.index, dtype="datetime64[ns, UTC]"), symbol="AAPL", timeframe="1m", source="twelvedata",
        fetched_at=pd.Timestamp("2023-08-24 16:00", tz="UTC"),
    ).astype({"fetched_at": "datetime64[ns, UTC]", "symbol": "string", "timeframe": "string", "source": "string"})  # fmt: skip
    assert validate_raw(raw).ok
    res = normalize(raw, asset_class="equity", timeframe="1m", raw_tz="America/New_York",
                    now=pd.Timestamp("2023-08-24 16:00", tz="UTC"))  # fmt: skip
    d = res.data
    assert len(d) == 30 and validate_normalized(d).ok and d["ts"].is_monotonic_increasing
    assert d["ts"].iloc[0] == pd.Timestamp("2023-08-24 14:40", tz="UTC")  # 10:40 EDT
    assert d["ts"].iloc[-1] == pd.Timestamp("2023-08-24 15:09", tz="UTC")
    assert d["volume"].iloc[-1] == 293189.0 and d["trades"].isna().all()
    # fetched 16:00 UTC: every candle up to 15:09 has closed
    assert d["is_final"].all()


def test_twelvedata_forex_daily_without_volume() -> None:
    body = json.loads((TD / "batch_time_series_forex_1day_2023-08-04.json").read_text())
    frames = []
    for sym, part in body.items():
        v = pd.DataFrame(part["values"]).astype("string")
        v["volume"] = pd.Series(pd.NA, index=v.index, dtype="string")
        frames.append(v.assign(symbol=sym, timeframe="1d", source="twelvedata",
                               fetched_at=pd.Timestamp("2023-08-05", tz="UTC")))  # fmt: skip
    raw = pd.concat(frames, ignore_index=True)
    res = normalize(raw, asset_class="forex", timeframe="1d", now=pd.Timestamp("2023-08-05", tz="UTC"))
    d = res.data
    assert len(d) == 16 and d["volume"].isna().all() and validate_normalized(d).ok
    assert sorted(d["symbol"].unique()) == sorted(body)
    assert d.groupby("symbol")["ts"].apply(lambda s: s.is_monotonic_increasing).all()
    assert set(d["ts"].dt.strftime("%Y-%m-%d")) == {"2023-08-01", "2023-08-02", "2023-08-03", "2023-08-04"}


def _broken_btc() -> pd.DataFrame:
    """The real BTCUSDT frame, with one row per rule broken the way providers break them."""
    raw = R.btcusdt_1h().iloc[:40].copy().reset_index(drop=True)
    raw["open"] = raw["open"].astype(object)
    raw.loc[0, "open_time"] = -5  # unparseable
    raw.loc[1, "fetched_at"] = pd.NaT
    raw.loc[2, "open_time"] += 60_000  # 1 minute off the 1h grid
    raw.loc[3, "open_time"] = 4_102_444_800_000  # 2100-01-01
    raw.loc[4, "timeframe"] = "4h"
    raw.loc[12, "close_time"] = raw.loc[12, "open_time"] + 300_000 - 1  # a 5m kline answered for 1h
    raw.loc[5, "symbol"] = "btc usdt"
    raw.loc[6, "close"] = "n/a"
    raw.loc[7, "low"] = "0"
    raw.loc[8, ["high", "low"]] = ["1.0", "2.0"]
    raw.loc[9, "high"] = str(float(raw.loc[9, "open"]) - 1000)  # below the open, above the low
    raw.loc[9, "low"] = str(float(raw.loc[9, "high"]) - 5000)
    raw.loc[10, "low"] = str(max(float(raw.loc[10, "open"]), float(raw.loc[10, "close"])) + 1)
    raw.loc[10, "high"] = str(float(raw.loc[10, "low"]) + 1)
    raw.loc[11, "volume"] = "-3"
    raw["open"] = raw["open"].astype("string")
    return raw


def test_every_rule_quarantines_with_reason() -> None:
    raw = _broken_btc()
    res = normalize(raw, asset_class="crypto", timeframe="1h", now=pd.Timestamp("2030-01-01", tz="UTC"))
    q = res.quarantine
    assert _dtypes(q) == QUARANTINE_DTYPES
    expected_rules = list(RULES)
    assert q.sort_values("rule", key=lambda s: s.map(expected_rules.index))["rule"].tolist() == expected_rules
    assert res.report.quarantined_by_rule == {r: 1 for r in RULES}
    assert len(res.data) == 40 - 13 and validate_normalized(res.data).ok
    row = q[q["rule"] == "high_below_low"].iloc[0]
    assert row["high"] == 1.0 and row["low"] == 2.0 and "high < low" in row["detail"]
    assert "high < max(open, close)" in row["detail"]  # every broken rule is listed
    assert q.loc[q["rule"] == "unparseable_ts", "ts"].isna().all()
    assert q.loc[q["rule"] == "unparseable_ts", "raw_ts"].tolist() == ["-5"]
    _accounted(res)
    md = quality_metadata(res.report)
    assert md["quarantined/high_below_low"] == 1 and md["data_quality_score"] == pytest.approx(27 / 40)


def test_duplicates_identical_conflicting_and_superseded_open() -> None:
    raw = R.btcusdt_1h().iloc[:10].reset_index(drop=True)
    t_late = raw["fetched_at"].iloc[0]
    ident = raw.iloc[[0, 1]].copy()  # same values, fetched later
    ident["fetched_at"] = t_late + pd.Timedelta(hours=1)
    conflict = raw.iloc[[2]].copy()  # a final candle whose later fetch differs: later wins, conflict recorded
    conflict["close"] = pd.array([str(float(conflict["close"].iloc[0]) + 0.01)], dtype="string")
    conflict["fetched_at"] = t_late + pd.Timedelta(hours=2)
    early = raw.iloc[[3]].copy()  # a fetch while the candle was still open, superseded by the final one
    early["fetched_at"] = early["ts"] + pd.Timedelta(minutes=30)
    early["volume"] = pd.array(["1.0"], dtype="string")
    both = pd.concat([raw, ident, conflict, early], ignore_index=True)
    res = normalize(both, asset_class="crypto", timeframe="1h")
    rep = res.report
    assert (rep.duplicates_identical, rep.duplicate_conflicts, rep.superseded_open, rep.conflict_keys) == (2, 1, 1, 1)
    assert len(res.data) == 10 and res.data["is_final"].all()
    won = res.data.loc[res.data["ts"] == conflict["ts"].iloc[0]].iloc[0]
    assert won["close"] == float(conflict["close"].iloc[0]) and won["fetched_at"] == conflict["fetched_at"].iloc[0]
    assert len(res.conflicts) == 1 and res.conflicts["close"].iloc[0] == float(raw["close"].iloc[2])
    _accounted(res)


def test_still_open_candle_is_flagged_not_final() -> None:
    raw = R.btcusdt_1h().iloc[:5].reset_index(drop=True)  # descending: row 0 is the newest candle
    raw["fetched_at"] = raw["ts"].iloc[0] + pd.Timedelta(minutes=59, seconds=59)
    res = normalize(raw, asset_class="crypto", timeframe="1h", now=raw["fetched_at"].iloc[0])
    assert res.data["is_final"].tolist() == [True, True, True, True, False]
    assert res.report.still_open == 1 and validate_normalized(res.data).ok


def test_empty_and_bad_layouts() -> None:
    raw = R.btcusdt_1h().iloc[:0]
    res = normalize(raw, asset_class="crypto", timeframe="1h")
    assert _dtypes(res.data) == CANONICAL_DTYPES and _dtypes(res.quarantine) == QUARANTINE_DTYPES
    assert validate_normalized(res.data).ok and res.report.rows_in == 0
    res0 = normalize(pd.DataFrame(), asset_class="forex", timeframe="1h")
    assert _dtypes(res0.data) == CANONICAL_DTYPES
    with pytest.raises(RawFrameError, match="neither `open_time`"):
        normalize(pd.DataFrame({"x": [1]}), asset_class="crypto", timeframe="1h")
    with pytest.raises(RawFrameError, match=r"lacks columns \['fetched_at'\]"):
        normalize(R.btcusdt_1h().drop(columns="fetched_at"), asset_class="crypto", timeframe="1h")
    with pytest.raises(ValueError, match="not a supported timeframe"):
        normalize(raw, asset_class="crypto", timeframe="2h")


def test_schema_reports_every_failing_rule_lazily() -> None:
    d = normalize(R.btcusdt_1h(), asset_class="crypto", timeframe="1h").data
    assert SCHEMA_VERSION == 1 and validate_normalized(d).ok
    bad = d.copy()
    bad.loc[0:2, "high"] = bad.loc[0:2, "low"] - 1  # 3 rows break high>=low and high>=max(o,c)
    bad.loc[5, "volume"] = -1.0
    bad.loc[6, "ts"] = bad.loc[6, "ts"] + pd.Timedelta(minutes=1)
    bad = pd.concat([bad, bad.iloc[[10]]], ignore_index=True)  # duplicate candle
    s = validate_normalized(bad)
    assert not s.ok
    f = {k.split(":")[-1]: v for k, v in s.failures.items()}
    assert f["high_ge_low"] == 3 and f["high_ge_open_close"] == 3 and f["ts_aligned"] == 1
    assert any(k.startswith("volume:greater_than_or_equal_to") for k in s.failures)
    assert any("unique" in k for k in s.failures)
    assert 0 < len(s.sample) <= 10
    wrong_dtype = d.astype({"trades": "float64"})
    assert not validate_normalized(wrong_dtype).ok


def test_enriched_schema() -> None:
    d = normalize(R.btcusdt_1h(), asset_class="crypto", timeframe="1h").data
    e = d.assign(rsi_14=np.linspace(0, 100, len(d)), indicators_ready=True)
    assert validate_enriched(e).ok
    assert not validate_enriched(e.assign(label=pd.Series("x", index=e.index, dtype="string"))).ok
    assert not validate_enriched(e.drop(columns="indicators_ready")).ok


def test_quality_score() -> None:
    assert data_quality_score(completeness=1.0, rows_in=0, quarantined=0) == 1.0
    assert data_quality_score(completeness=0.5, rows_in=100, quarantined=10) == pytest.approx(0.45)
    assert data_quality_score(completeness=1.0, rows_in=10, quarantined=1, duplicate_conflicts=1) == 0.8
    with pytest.raises(ValueError, match="completeness must be in"):
        data_quality_score(completeness=1.5, rows_in=1, quarantined=0)
    with pytest.raises(ValueError, match="cannot exceed"):
        data_quality_score(completeness=1.0, rows_in=1, quarantined=2)
