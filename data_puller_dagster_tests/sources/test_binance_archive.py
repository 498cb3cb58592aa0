"""Binance archive: verified zips (file:// and http), µs timestamps, headers, and archive -> REST fallback."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.config import BinanceSourceConfig
from data_puller_dagster.sources import BINANCE_RAW_DTYPES, ChecksumMismatchError
from data_puller_dagster.sources.base import KLINE_FIELDS
from data_puller_dagster.sources.binance import BinanceAdapter
from data_puller_dagster.sources.binance_archive import BinanceArchive
from data_puller_dagster.sources.ratelimit import MinuteBudget
from data_puller_dagster_tests.fakes.binance import FakeArchive, FakeBinance, generate_klines, write_archive
from data_puller_dagster_tests.sources.conftest import DEMO, FIXTURES, rest, utc

NOW = utc("2030-01-01")


def archive_from_fixture(root: Path, csv: Path, symbol: str, interval: str, day: str) -> None:
    """Zip a recorded archive CSV byte-for-byte with its CHECKSUM, in the data.binance.vision layout."""
    base = root / "data/spot/daily/klines" / symbol / interval
    base.mkdir(parents=True, exist_ok=True)
    name = f"{symbol}-{interval}-{day}"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{name}.csv", csv.read_bytes())
    (base / f"{name}.zip").write_bytes(buf.getvalue())
    (base / f"{name}.zip.CHECKSUM").write_text(f"{hashlib.sha256(buf.getvalue()).hexdigest()}  {name}.zip\n")


def test_adabtc_fixture_days_parse_exactly(tmp_path: Path) -> None:
    for day in ("2021-11-27", "2021-11-28"):
        archive_from_fixture(tmp_path, FIXTURES / "binance" / f"ADABTC-1m-{day}.csv", "ADABTC", "1m", day)
    arch = BinanceArchive(tmp_path.as_uri())
    _, found, _ = arch.fetch_days("ADABTC", "1m", utc("2021-11-27"), utc("2021-11-29"), NOW)
    assert sorted(found) == [utc("2021-11-27"), utc("2021-11-28")]
    df = pd.concat(found.values(), ignore_index=True)
    expected = pd.concat(
        [
            pd.read_csv(
                FIXTURES / "binance" / f"ADABTC-1m-{d}.csv", header=None, names=KLINE_FIELDS, dtype=str
            )
            for d in ("2021-11-27", "2021-11-28")
        ],
        ignore_index=True,
    )
    assert len(df) == 21
    assert df["open_time"].tolist() == expected["open_time"].astype("int64").tolist()
    for c in (
        "open",
        "high",
        "low",
        "close",
        "volume",
        "quote_volume",
        "taker_buy_base",
        "taker_buy_quote",
        "ignore",
    ):
        assert df[c].tolist() == expected[c].tolist(), c
    assert (df["source"] == "binance_archive").all()
    assert {c: str(t) for c, t in df.dtypes.items()} == {
        c: str(pd.Series(dtype=d).dtype) for c, d in BINANCE_RAW_DTYPES.items()
    }


def test_micros_sample_is_converted_to_ms(tmp_path: Path) -> None:
    archive_from_fixture(
        tmp_path, FIXTURES / "binance" / "DOGEUSDT-1s-2025-01-01.sample.csv", "DOGEUSDT", "1m", "2025-01-01"
    )
    arch = BinanceArchive(tmp_path.as_uri())
    df = arch.fetch_day("DOGEUSDT", "1m", utc("2025-01-01"))
    assert df is not None
    assert df["open_time"].tolist() == [1735689600000, 1735689601000, 1735689602000]
    assert df["close_time"].tolist() == [1735689600999, 1735689601999, 1735689602999]
    assert df["ts"].iloc[0] == utc("2025-01-01")
    assert df["trades"].tolist() == [1, 5, 0]


def test_demo_archive_via_file_url_with_empty_taker_columns() -> None:
    arch = BinanceArchive((DEMO / "binance").as_uri())
    _, found, _ = arch.fetch_days("BTCUSDT", "1h", utc("2020-12-21"), utc("2020-12-23"), NOW)
    df = pd.concat(found.values(), ignore_index=True)
    # 2020-12-21 has a real 3-hour maintenance gap (SOURCES.md): 48 - 3 rows; kept as a gap, not invented.
    assert len(df) == 45
    assert df["taker_buy_base"].isna().all() and df["quote_volume"].notna().all()


def test_header_row_is_tolerated_and_micros_writer_roundtrips(tmp_path: Path) -> None:
    candles = generate_klines("2025-02-01", 1440)
    write_archive(tmp_path, candles, "BTCUSDT", "1m", micros=True, header=True)
    df = BinanceArchive(tmp_path.as_uri()).fetch_day("BTCUSDT", "1m", utc("2025-02-01"))
    assert df is not None and len(df) == 1440
    assert df["open_time"].tolist() == candles["open_time"].tolist()


def test_wrong_checksum_day_is_never_accepted_and_reported_unverified(tmp_path: Path) -> None:
    write_archive(
        tmp_path, generate_klines("2024-03-01", 2880), "BTCUSDT", "1m", bad_checksum_days=("2024-03-02",)
    )
    arch = BinanceArchive(tmp_path.as_uri())
    with pytest.raises(
        ChecksumMismatchError, match=r"BTCUSDT 1m 2024-03-02.*does not match the published CHECKSUM"
    ):
        arch.fetch_day("BTCUSDT", "1m", utc("2024-03-02"))
    _, found, unverified = arch.fetch_days("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-03"), NOW)
    assert list(found) == [utc("2024-03-01")] and list(unverified) == [utc("2024-03-02")]
    msg = str(unverified[utc("2024-03-02")])
    assert "BTCUSDT-1m-2024-03-02.zip" in msg and "cached copy" not in msg


def test_bad_checksum_day_is_fetched_over_rest_and_counted(tmp_path: Path) -> None:
    """One corrupt archive day costs one day of REST requests, not the whole 5-day range."""
    candles = generate_klines("2024-03-01", 5 * 1440)
    write_archive(tmp_path, candles, "BTCUSDT", "1m", bad_checksum_days=("2024-03-03",))
    with FakeArchive(tmp_path) as fa, FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        adapter = BinanceAdapter(rest(fb.url, now=lambda: NOW), BinanceArchive(fa.url, backoff_base=0.001))
        df = adapter.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-06"))
        adapter.close()
        rest_days = {
            pd.Timestamp(int(r["params"]["startTime"]), unit="ms").strftime("%m-%d") for r in fb.received
        }
    assert df["open_time"].tolist() == candles["open_time"].tolist()
    by_day = df.groupby(df["ts"].dt.strftime("%m-%d"))["source"].unique().map(list).to_dict()
    assert by_day["03-03"] == ["binance"] and all(
        by_day[d] == ["binance_archive"] for d in ("03-01", "03-05")
    )
    assert rest_days == {"03-03"}
    assert adapter.checksum_fallback_days == 1
    assert adapter.checksum_fallbacks[0].day == "2024-03-03"


def test_bad_checksum_day_rest_cannot_replace_is_an_error(tmp_path: Path) -> None:
    candles = generate_klines("2024-03-01", 3 * 1440)
    write_archive(tmp_path, candles, "BTCUSDT", "1m", missing_checksum_days=("2024-03-02",))
    rest_has = candles[candles["open_time"] < utc("2024-03-02").value // 1_000_000]
    with FakeBinance({("BTCUSDT", "1m"): rest_has}) as fb:
        adapter = BinanceAdapter(rest(fb.url, now=lambda: NOW), BinanceArchive(tmp_path.as_uri()))
        with pytest.raises(ChecksumMismatchError, match=r"2024-03-02.*REST has no BTCUSDT 1m candles"):
            adapter.fetch("BTCUSDT", "1m", utc("2024-03-01"), utc("2024-03-04"))
        adapter.close()


def test_missing_checksum_is_an_error(tmp_path: Path) -> None:
    write_archive(
        tmp_path, generate_klines("2024-03-01", 1440), "BTCUSDT", "1m", missing_checksum_days=("2024-03-01",)
    )
    with pytest.raises(ChecksumMismatchError, match="CHECKSUM does not"):
        BinanceArchive(tmp_path.as_uri()).fetch_day("BTCUSDT", "1m", utc("2024-03-01"))


def test_archive_then_rest_without_a_hole_over_http(tmp_path: Path) -> None:
    """Archive has days 1-3 (over HTTP, day 2 missing = not published), REST serves everything."""
    candles = generate_klines("2024-03-01", 5 * 1440)
    arch_days = candles[candles["open_time"] < utc("2024-03-04").value // 1_000_000]
    write_archive(tmp_path, arch_days, "BTCUSDT", "1m")
    for p in (tmp_path / "data/spot/daily/klines/BTCUSDT/1m").glob("*2024-03-02.zip*"):
        p.unlink()
    with FakeArchive(tmp_path) as fa, FakeBinance({("BTCUSDT", "1m"): candles}) as fb:
        adapter = BinanceAdapter(rest(fb.url, now=lambda: NOW), BinanceArchive(fa.url, backoff_base=0.001))
        df = adapter.fetch("BTCUSDT", "1m", utc("2024-03-01 12:00"), utc("2024-03-06"))
        adapter.close()
        rest_starts = sorted(int(r["params"]["startTime"]) for r in fb.received)
    expected = candles[candles["open_time"] >= utc("2024-03-01 12:00").value // 1_000_000]
    assert df["open_time"].tolist() == expected["open_time"].tolist()  # every candle exactly once, in order
    by_day = df.groupby(df["ts"].dt.strftime("%m-%d"))["source"].unique().map(list).to_dict()
    assert by_day == {
        "03-01": ["binance_archive"],
        "03-02": ["binance"],
        "03-03": ["binance_archive"],
        "03-04": ["binance"],
        "03-05": ["binance"],
    }
    # REST was asked only for the unpublished day and the days after the archive ends
    assert rest_starts[0] == utc("2024-03-02").value // 1_000_000


def test_from_config_uses_demo_archive_and_rest_for_unpublished_days() -> None:
    with FakeBinance({("BTCUSDT", "1h"): generate_klines("2021-06-01", 48, "1h")}) as fb:
        cfg = BinanceSourceConfig(base_url=fb.url, archive_url=(DEMO / "binance").as_uri(), max_retries=1)
        adapter = BinanceAdapter.from_config(cfg, budget=MinuteBudget(6000, 0.8), backoff_base=0.001)
        df = adapter.fetch("BTCUSDT", "1h", utc("2021-05-31"), utc("2021-06-02"))
        adapter.close()
    assert df["source"].tolist() == ["binance_archive"] * 24 + ["binance"] * 24
    assert (df["ts"].diff().dropna() == pd.Timedelta(hours=1)).all()
