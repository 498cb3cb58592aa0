"""Feature groups, compact encodings, the token budget and the dataset card, on real enriched candles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.config import ConfigError, DatasetConfig, IndicatorsConfig, parse_config
from data_puller_dagster.transform.indicators import compute_indicators, indicator_columns
from data_puller_dagster.transform.llm_card import DatasetCard
from data_puller_dagster.transform.llm_dataset import (
    DatasetInputError,
    build_examples,
    example_fields,
    features_for,
    write_dataset,
)
from data_puller_dagster.transform.llm_tokens import estimate_lines
from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h, eurusd_1h
from data_puller_dagster_tests.transform.test_llm_dataset import (
    BTC_FEED,
    FX_FEED,
    LOOKBACK_DAYS,
    SPLIT,
    concat,
    quality,
)

PATTERNS = ["engulfing", "doji", "hammer", "shootingstar", "harami", "morningstar", "eveningstar",
            "3whitesoldiers", "3blackcrows"]  # fmt: skip
IND = IndicatorsConfig(patterns=PATTERNS)
EVERY = ["ohlcv", "technical_indicators", "volume_profile", "price_action_patterns"]
DAY = pd.Timedelta(days=1)
FEED_YAML = {"name": "c", "source": "binance", "asset_class": "crypto", "timeframe": "1h",
             "symbols": ["BTCUSDT"], "start_date": "2024-01-01"}  # fmt: skip


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return compute_indicators(btcusdt_1h(), IND)


def run(enriched: pd.DataFrame, ds: DatasetConfig, feed=BTC_FEED, day_by_day: bool = False, **kw):
    """The whole range at once, or what the asset does: each UTC day from the rows it reads."""
    lo, hi = enriched["ts"].min().floor("D"), enriched["ts"].max().floor("D") + DAY
    args = dict(feed=feed, dataset=ds, indicators=IND, lookback_days=LOOKBACK_DAYS, **kw)
    if not day_by_day:
        return build_examples(enriched, start=lo, end=hi, **args)
    out, ts = [], enriched["ts"]
    for d in pd.date_range(lo, hi - DAY, freq="D"):
        window = enriched[(ts >= d - LOOKBACK_DAYS * DAY) & (ts < d + 2 * DAY)]
        out.append(build_examples(window, start=d, end=d + DAY, **args))
    return out


def test_groups_resolve_to_columns_and_default_is_unchanged() -> None:
    default = example_fields(BTC_FEED, DatasetConfig(), IND)
    assert default == ["open", "high", "low", "close", "volume", *indicator_columns(IND)]
    assert example_fields(BTC_FEED, DatasetConfig(include_features=["ohlcv", "technical_indicators"]), IND) == default
    every = features_for(BTC_FEED, DatasetConfig(include_features=EVERY), IND)
    assert every.fields == [*default, "patterns"] and every.patterns == tuple(f"cdl_{p}" for p in PATTERNS)
    assert every.volume_profile and every.profile_null_reason is None
    picked = features_for(BTC_FEED, DatasetConfig(include_features=["close", "rsi_14", "cdl_doji"]), IND)
    assert picked.fields == ["close", "rsi_14", "patterns"] and picked.patterns == ("cdl_doji",)
    fx = features_for(FX_FEED, DatasetConfig(include_features=EVERY), IND)
    assert "volume" not in fx.fields and "obv_20" not in fx.fields
    assert "has no volume" in fx.profile_null_reason
    with pytest.raises(DatasetInputError, match="price_action_patterns but indicators.patterns is empty"):
        example_fields(BTC_FEED, DatasetConfig(include_features=EVERY), IndicatorsConfig())


def test_feature_names_are_validated_at_config_load() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"feeds": [FEED_YAML], "dataset": {"include_features": ["ohlcv", "volume_profiles"]}}, env={})
    assert "dataset.include_features: 'volume_profiles' (item 1) is not a feature group or column; use a " \
           "group (ohlcv, technical_indicators, volume_profile, price_action_patterns)" in str(err.value)  # fmt: skip
    with pytest.raises(ConfigError, match=r"dataset.include_features: \[\] selects nothing"):
        parse_config({"feeds": [FEED_YAML], "dataset": {"include_features": []}}, env={})
    with pytest.raises(ConfigError, match=r"dataset.price_encoding: 'pips' is invalid"):
        parse_config({"feeds": [FEED_YAML], "dataset": {"price_encoding": "pips"}}, env={})
    # Names that are well-formed but not produced by this indicators config: checked against it, at load.
    with pytest.raises(ConfigError) as err:
        parse_config({"feeds": [FEED_YAML], "dataset": {"include_features": ["rsi_99", "price_action_patterns"]}},
                     env={})  # fmt: skip
    assert err.value.problems == [
        f"dataset.include_features names ['rsi_99'], which the indicators config does not produce; use some of "
        f"{['open', 'high', 'low', 'close', 'volume', *indicator_columns(IndicatorsConfig())]} (or enable the "
        "indicator or pattern in `indicators`) (feeds[0] c)"
    ]


@pytest.mark.parametrize(
    "options",
    [
        {"format": "seed"},
        {"format": "seed", "price_encoding": "bps", "context_layout": "csv", "volume_profile_lookback": 150},
        {"format": "chat", "price_encoding": "bps"},
        {"format": "chat", "context_layout": "csv", "stride": 3},
    ],
    ids=["seed", "seed-bps-csv-vp150", "chat-bps", "chat-csv-stride3"],
)
def test_every_group_day_by_day_equals_whole_byte_for_byte(btc: pd.DataFrame, options: dict) -> None:
    ds = DatasetConfig(include_features=EVERY, split=SPLIT, context_window=48, **options)
    q = quality(btc)
    ref = run(btc, ds, quality_by_day=q)
    days = run(btc, ds, day_by_day=True, quality_by_day=q)
    assert len(ref.frame) > 2500 // ds.stride
    pd.testing.assert_frame_equal(concat(days), ref.frame)
    assert sum(b.excluded_embargo for b in days) == ref.excluded_embargo > 0
    assert any("engulfing" in x for x in ref.frame["line"].iloc[:50])


def test_bps_and_csv_values(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(include_features=["ohlcv", "ema_12", "atr_14", "volume_profile", "price_action_patterns"],
                       price_encoding="bps", context_layout="csv", context_window=5)  # fmt: skip
    day = pd.Timestamp("2021-01-10", tz="UTC")
    batch = build_examples(btc, feed=BTC_FEED, dataset=ds, indicators=IND, start=day, end=day + DAY)
    line = json.loads(batch.frame["line"].iloc[7])
    at = int(np.flatnonzero(btc["ts"] == batch.frame["ts"].iloc[7])[0])
    rows = btc.iloc[at - 5 : at + 1]
    fields = line["fields"]
    assert fields == ["open", "high", "low", "close", "volume", "ema_12", "atr_14", "patterns"]
    cells = [r.split(",") for r in line["context"].split("\n")] + [line["current"].split(",")]
    assert len(cells) == 6 and all(len(c) == len(fields) for c in cells)
    prev = btc["close"].to_numpy()[at - 6 : at]
    for k, (cell, (_, row)) in enumerate(zip(cells, rows.iterrows(), strict=True)):
        assert float(cell[3]) == round((row["close"] / prev[k] - 1) * 1e4, 1)  # a return in bps
        assert float(cell[1]) == round((row["high"] / prev[k] - 1) * 1e4, 1)
        assert float(cell[5]) == round((row["ema_12"] / row["close"] - 1) * 1e4, 1)  # level vs own close
        assert float(cell[6]) == round(row["atr_14"] / row["close"] * 1e4, 1)  # difference as bps of it
        assert float(cell[4]) == float(f"{row['volume']:.3g}")  # 3 significant digits
        fired = [f"{p}{'+' if row[f'cdl_{p}'] > 0 else '-'}" for p in PATTERNS if row[f"cdl_{p}"] != 0]
        assert cell[7].split() == fired
    assert line["reference_close"] == round(rows["close"].iloc[-1], 8)
    assert line["target"]["next_close"] == round(btc["close"].iloc[at + 1], 8)
    assert line["metadata"]["price_encoding"] == "bps"
    vp = line["volume_profile"]
    assert vp["va_low"] <= vp["poc"] <= vp["va_high"] and len(vp["volume_pct"]) == 24


def test_token_budget_drops_and_counts_long_examples(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(include_features=EVERY, split=SPLIT)
    every = run(btc, ds).frame
    est = estimate_lines(every["line"].tolist())
    assert (est > every["line"].str.len() / 4 * 1.5).all()  # numeric JSON is far denser than chars / 4
    budget = int(np.median(est))
    capped = run(btc, ds.model_copy(update={"max_tokens_per_example": budget}))
    assert capped.excluded_token_budget == int((est > budget).sum()) > 0
    assert capped.frame["ts"].tolist() == every["ts"][est <= budget].tolist()
    compact = run(btc, ds.model_copy(update={"price_encoding": "bps", "context_layout": "csv"})).frame
    assert estimate_lines(compact["line"].tolist()).mean() < 0.75 * est.mean()


def test_manifest_reports_tokens_and_the_card_describes_the_dataset(btc: pd.DataFrame, tmp_path: Path) -> None:
    fx = compute_indicators(eurusd_1h(), IND)
    ds = DatasetConfig(include_features=EVERY, split={"validation_start": "2017-10-01", "test_start": "2017-12-01"})
    batch = run(fx, ds, feed=FX_FEED).frame
    card = DatasetCard(FX_FEED, ds, features_for(FX_FEED, ds, IND))
    manifest = write_dataset([batch], tmp_path / "a", name="forex_1h", config_hash="h", dataset_format="seed",
                             card=card)  # fmt: skip
    again = write_dataset([batch], tmp_path / "b", name="forex_1h", config_hash="h", dataset_format="seed", card=card)
    assert manifest == again
    for name in ("README.md", "manifest.json", "train.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for split in ("train", "validation", "test"):
        info = manifest["files"][split]
        lines = batch["line"][batch["split"] == split].tolist()
        assert info["rows"] == len(lines) > 0 and info["bytes"] == sum(len(x) + 1 for x in lines)
        assert info["estimated_tokens"] == int(estimate_lines(lines).sum())
        assert info["max_estimated_tokens_per_example"] == int(estimate_lines(lines).max())
    vp = manifest["features"]["volume_profile"]
    assert vp["included"] and not vp["available"] and "has no volume" in vp["null_reason"]
    assert manifest["features"]["pattern_columns"] == [f"cdl_{p}" for p in PATTERNS]
    card_text = (tmp_path / "a" / "README.md").read_text()
    for expected in ("EUR/USD", "2017-10-01", "2017-12-01", "embargo", "Twelve Data", "has no volume",
                     "below 0.9", f"{manifest['files']['train']['rows']:,}", "engulfing"):  # fmt: skip
        assert expected in card_text, expected


def test_token_estimate_counts_the_documented_pieces(btc: pd.DataFrame) -> None:
    """The vectorized estimate equals the documented rule applied with a regex, line by line, on real
    lines (9 MB: more than one of the estimator's blocks) and on edge cases."""
    piece = re.compile(rb"[0-9]+|[A-Za-z_\x80-\xff]+|[ \t\n\r]+|[^0-9A-Za-z_\x80-\xff \t\n\r]+")
    per = {0: 3, 1: 4, 2: 0, 3: 2}

    def by_regex(line: str) -> int:
        total = 0
        for m in piece.finditer(line.encode()):
            t = m.group()
            kind = 0 if t[:1].isdigit() else 2 if t[:1] in b" \t\n\r" else 1 if piece.fullmatch(t) and (
                t[:1].isalpha() or t[:1] == b"_" or t[0] >= 0x80) else 3  # fmt: skip
            total += 0 if per[kind] == 0 else -(-len(t) // per[kind])
        return total

    lines = run(btc, DatasetConfig(include_features=EVERY, format="chat")).frame["line"].tolist()[:300]
    assert sum(map(len, lines)) > 9_000_000
    edge = ["", "a", "1234567", "[[", '{"x": "été"}', "12 ab,,", ""]
    assert estimate_lines(lines + edge).tolist() == [by_regex(x) for x in lines + edge]
    assert estimate_lines([]).tolist() == []
