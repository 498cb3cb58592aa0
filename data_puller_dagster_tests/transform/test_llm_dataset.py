"""LLM datasets on real enriched candles: day by day == whole, no leakage, deterministic files."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster.config import DatasetConfig, FeedConfig, IndicatorsConfig
from data_puller_dagster.transform.indicators import compute_indicators, indicator_columns
from data_puller_dagster.transform.llm_dataset import (
    SPLITS,
    DatasetInputError,
    ExampleBatch,
    build_examples,
    example_fields,
    split_codes,
    write_dataset,
)
from data_puller_dagster_tests.transform.canonical_series import btcusdt_1h, eurusd_1h

IND = IndicatorsConfig()
DAY = pd.Timedelta(days=1)
SPLIT = {"validation_start": date(2021, 3, 1), "test_start": date(2021, 4, 15)}
BTC_FEED = FeedConfig(
    name="crypto", source="binance", asset_class="crypto", timeframe="1h", symbols=["BTCUSDT"],
    start_date=date(2020, 12, 1),
)  # fmt: skip
FX_FEED = FeedConfig(
    name="forex", source="twelvedata", asset_class="forex", timeframe="1h", symbols=["EUR/USD"],
    start_date=date(2017, 4, 19),
)  # fmt: skip
LOOKBACK_DAYS = 9  # what the asset reads before a day for 100 1h candles (incl. a margin for closures)


@pytest.fixture(scope="module")
def btc() -> pd.DataFrame:
    return compute_indicators(btcusdt_1h(), IND)


@pytest.fixture(scope="module")
def fx() -> pd.DataFrame:
    return compute_indicators(eurusd_1h(), IND)


def quality(enriched: pd.DataFrame, per_day: int = 24) -> dict[date, float]:
    """Share of the day's 24 hourly candles present (BTC maintenance days score below 1)."""
    counts = enriched.groupby(enriched["ts"].dt.date).size()
    return {d: min(n / per_day, 1.0) for d, n in counts.items()}


def whole(enriched: pd.DataFrame, feed: FeedConfig, ds: DatasetConfig, **kw) -> ExampleBatch:
    start = enriched["ts"].min().floor("D")
    end = enriched["ts"].max().floor("D") + DAY
    return build_examples(enriched, feed=feed, dataset=ds, indicators=IND, start=start, end=end, **kw)


def day_by_day(
    enriched: pd.DataFrame, feed: FeedConfig, ds: DatasetConfig, by_candles: bool = False, **kw
) -> list[ExampleBatch]:
    """What the dataset asset does: each UTC day from the rows it reads around that day."""
    out = []
    days = enriched["ts"].dt.floor("D")
    for d in days.unique():
        if by_candles:  # exactly [start - context_window candles, end + 1 candle]
            rows = np.flatnonzero((days == d).to_numpy())
            window = enriched.iloc[max(rows[0] - ds.context_window, 0) : rows[-1] + 2]
        else:  # whole day partitions: LOOKBACK_DAYS before, the next day after
            ts = enriched["ts"]
            window = enriched[(ts >= d - LOOKBACK_DAYS * DAY) & (ts < d + 2 * DAY)]
        out.append(build_examples(window, feed=feed, dataset=ds, indicators=IND, start=d, end=d + DAY, **kw))
    return out


def concat(batches: list[ExampleBatch]) -> pd.DataFrame:
    return pd.concat([b.frame for b in batches], ignore_index=True)


@pytest.mark.parametrize("fmt", ["seed", "chat"])
@pytest.mark.parametrize("stride", [1, 3])
def test_day_by_day_equals_whole_history_byte_for_byte(btc: pd.DataFrame, fmt: str, stride: int) -> None:
    ds = DatasetConfig(format=fmt, stride=stride, split=SPLIT)
    q = quality(btc)
    assert min(q.values()) < ds.min_quality  # real maintenance days are filtered
    ref = whole(btc, BTC_FEED, ds, quality_by_day=q, lookback_days=LOOKBACK_DAYS)
    days = day_by_day(btc, BTC_FEED, ds, quality_by_day=q, lookback_days=LOOKBACK_DAYS)
    got = concat(days)
    assert len(ref.frame) > 1000 // stride
    pd.testing.assert_frame_equal(got, ref.frame)
    for field in ("candidates", "excluded_no_context", "excluded_no_successor", "excluded_stride",
                  "excluded_low_quality", "excluded_embargo"):  # fmt: skip
        assert sum(getattr(b, field) for b in days) == getattr(ref, field), field
    assert ref.excluded_low_quality > 0 and ref.excluded_embargo > 0
    if stride > 1:
        grid = got["ts"].astype("int64") // 3_600_000_000_000
        assert (grid % stride == 0).all() and ref.excluded_stride > 0


def test_reading_exactly_context_and_next_candle_is_enough(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(split=SPLIT)
    pd.testing.assert_frame_equal(
        concat(day_by_day(btc, BTC_FEED, ds, by_candles=True)), whole(btc, BTC_FEED, ds).frame
    )


def test_every_eligible_candle_yields_exactly_one_example(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(format="seed")  # no split, no quality filter, stride 1
    got = concat(day_by_day(btc, BTC_FEED, ds))
    w = ds.context_window
    assert got["ts"].tolist() == btc["ts"].iloc[w:-1].tolist()  # has w predecessors and a successor
    hours = got["ts"].dt.hour
    assert (hours == 0).sum() > 150 and (hours == 23).sum() > 150  # first and last candle of the days


def test_example_content_is_the_enriched_rows(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(split=SPLIT)
    batch = whole(btc, BTC_FEED, ds, quality_by_day=quality(btc))
    fields = example_fields(BTC_FEED, ds, IND)
    assert fields == ["open", "high", "low", "close", "volume", *indicator_columns(IND)]
    pos = {t: k for k, t in enumerate(btc["ts"])}
    for line in batch.frame["line"].iloc[::397]:
        ex = json.loads(line)
        i = pos[pd.Timestamp(ex["metadata"]["ts"])]
        assert ex["fields"] == ["ts", *fields] and len(ex["context"]) == ds.context_window
        rows = btc.iloc[i - ds.context_window : i + 1]
        for r, (_, row) in zip([*ex["context"], ex["current"]], rows.iterrows(), strict=True):
            assert pd.Timestamp(r[0]) == row["ts"]
            for f, v in zip(fields, r[1:], strict=True):
                want = row[f]
                d = 4 if f.startswith(("rsi", "stoch")) else 6 if f.startswith(("bb_pctb", "bb_width")) else 8
                assert (v is None) if np.isnan(want) else abs(v - want) <= 0.5 * 10**-d + 1e-12 * abs(want), f
        nxt, cur = btc["close"].iloc[i + 1], btc["close"].iloc[i]
        assert ex["target"]["next_close"] == nxt
        assert ex["target"]["next_return"] == pytest.approx(nxt / cur - 1, abs=1e-8)
        assert ex["target"]["direction"] == ("up" if nxt > cur else "down" if nxt < cur else "flat")
        meta = ex["metadata"]
        assert meta["asset_class"] == "crypto" and meta["source"] == "binance"
        assert meta["data_quality"] == round(quality(btc)[row["ts"].date()], 4)
        assert meta["context_gap_candles"] == (row["ts"] - rows["ts"].iloc[0]) // pd.Timedelta("1h") - 100


def test_numbers_are_rounded_not_17_digit_floats(btc: pd.DataFrame) -> None:
    lines = whole(btc, BTC_FEED, DatasetConfig()).frame["line"]
    text = "\n".join(lines.iloc[::50])
    decimals = {len(m) for m in re.findall(r"(?<=[\d])\.(\d+)", text)}
    assert max(decimals) <= 8  # crypto precision; ta/float noise would show 12-17 digits
    assert "NaN" not in text and "Infinity" not in text and ",-0.0," not in text
    fx_text = whole(compute_indicators(eurusd_1h(), IND), FX_FEED, DatasetConfig()).frame["line"].iloc[-1]
    rows, target = fx_text.split('"target"')
    assert max(len(m) for m in re.findall(r"(?<=\d)\.(\d+)", rows)) <= 6  # forex prices: 5, ratios: 6
    assert max(len(m) for m in re.findall(r"(?<=\d)\.(\d+)", target)) <= 8  # returns: 8


def test_no_context_or_target_crosses_a_split_boundary(btc: pd.DataFrame) -> None:
    ds = DatasetConfig(split=SPLIT)
    frame = concat(day_by_day(btc, BTC_FEED, ds))
    assert set(frame["split"]) == set(SPLITS)
    pos = {t: k for k, t in enumerate(btc["ts"])}
    codes = split_codes(btc["ts"].astype("int64").to_numpy(), ds.split)
    ts = frame["ts"].map(pos).to_numpy()
    for k, i in enumerate(ts):
        span = codes[i - ds.context_window : i + 2]  # context, current and the target candle
        assert (span == span[0]).all()
        assert SPLITS[span[0]] == frame["split"].iloc[k]
    for boundary in SPLIT.values():  # the embargo: context_window candles after each boundary, none before
        b = pd.Timestamp(boundary, tz="UTC")
        after = frame[frame["ts"] >= b]["ts"].iloc[0]
        assert (btc["ts"].between(b, after, inclusive="left")).sum() == ds.context_window
        assert frame[frame["ts"] < b]["ts"].iloc[-1] == btc[btc["ts"] < b]["ts"].iloc[-2]


def test_forex_weekends_no_volume_and_consistent_successors(fx: pd.DataFrame) -> None:
    ds = DatasetConfig(format="seed")
    ref = whole(fx, FX_FEED, ds, lookback_days=LOOKBACK_DAYS)
    pd.testing.assert_frame_equal(concat(day_by_day(fx, FX_FEED, ds, lookback_days=LOOKBACK_DAYS)), ref.frame)
    assert ref.excluded_no_successor > 30  # Friday's last candle: next one is beyond the next day
    first = json.loads(ref.frame["line"].iloc[0])
    assert (
        "volume" not in first["fields"]
        and "obv_20" not in first["fields"]
        and "vwap_14" not in first["fields"]
    )
    gaps = [json.loads(x)["metadata"]["context_gap_candles"] for x in ref.frame["line"].iloc[::24]]
    assert max(gaps) >= 48 and min(gaps) == 0  # weekend closures are recorded, not disqualifying


def test_write_dataset_is_deterministic_and_manifest_is_correct(btc: pd.DataFrame, tmp_path: Path) -> None:
    ds = DatasetConfig(split=SPLIT)
    q = quality(btc)
    batches = day_by_day(btc, BTC_FEED, ds, quality_by_day=q, lookback_days=LOOKBACK_DAYS)
    a = write_dataset((b.frame for b in batches), tmp_path / "a", name="crypto_1h", config_hash="abc123")
    b = write_dataset(
        [whole(btc, BTC_FEED, ds, quality_by_day=q, lookback_days=LOOKBACK_DAYS).frame],
        tmp_path / "b", name="crypto_1h", config_hash="abc123",
    )  # fmt: skip
    assert a == b
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest == a and manifest["config_hash"] == "abc123" and manifest["schema_version"] == 1
    total = 0
    for split in SPLITS:
        data = (tmp_path / "a" / f"{split}.jsonl").read_bytes()
        info = manifest["files"][split]
        assert info["sha256"] == hashlib.sha256(data).hexdigest() and info["bytes"] == len(data)
        lines = data.decode().splitlines()
        assert len(lines) == info["rows"] == manifest["rows"][split] > 0
        assert {json.loads(x)["metadata"]["split"] for x in lines[:: max(len(lines) // 5, 1)]} == {split}
        total += len(lines)
    assert total == manifest["total_rows"] == sum(len(b.frame) for b in batches)
    assert manifest["date_range"]["start"] >= "2020-12-05" and manifest["date_range"]["end"] < "2021-06-01"
    assert not list((tmp_path / "a").glob("*.tmp-*"))


def test_write_dataset_rejects_overlapping_batches_and_keeps_old_files(
    btc: pd.DataFrame, tmp_path: Path
) -> None:
    frame = whole(btc, BTC_FEED, DatasetConfig()).frame
    good = write_dataset([frame], tmp_path, name="x", config_hash="h")
    before = (tmp_path / "train.jsonl").read_bytes()
    with pytest.raises(DatasetInputError, match="out of order or overlap"):
        write_dataset([frame.iloc[:500], frame.iloc[400:]], tmp_path, name="x", config_hash="h")
    assert (tmp_path / "train.jsonl").read_bytes() == before  # a failed write leaves the old dataset
    assert json.loads((tmp_path / "manifest.json").read_text()) == good
    assert not list(tmp_path.glob("*.tmp-*"))


def test_bad_inputs_name_the_fix(btc: pd.DataFrame) -> None:
    start, end = pd.Timestamp("2021-01-01", tz="UTC"), pd.Timestamp("2021-01-02", tz="UTC")
    kw = dict(feed=BTC_FEED, indicators=IND, start=start, end=end)
    with pytest.raises(DatasetInputError, match=r"include_features names \['rsi_99'\]"):
        build_examples(btc, dataset=DatasetConfig(include_features=["rsi_99"]), **kw)
    two = pd.concat([btc, btc.assign(symbol="ETHUSDT")])
    with pytest.raises(DatasetInputError, match="one symbol at a time"):
        build_examples(two, dataset=DatasetConfig(), **kw)
    with pytest.raises(DatasetInputError, match="no timezone"):
        build_examples(btc, dataset=DatasetConfig(), **{**kw, "start": pd.Timestamp("2021-01-01")})
    with pytest.raises(DatasetInputError, match="indicators_ready"):
        build_examples(btc.drop(columns="indicators_ready"), dataset=DatasetConfig(), **kw)
    selected = build_examples(btc, dataset=DatasetConfig(include_features=["rsi_14", "atr_14"]), **kw)
    assert json.loads(selected.frame["line"].iloc[0])["fields"][-2:] == ["rsi_14", "atr_14"]
    assert len(selected.frame) == 24
