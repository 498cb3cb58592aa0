"""normalize on raw text in either pandas storage (Python objects or Arrow): the same output, bit for bit.

Raw Binance frames may hold their text Arrow-backed (`string[pyarrow]`, see sources.base) and come back
from a store as Python strings; normalize parses prices with Arrow's cast where it provably agrees with
Python's `float`, and with the original NumPy/pandas path everywhere else.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_puller_dagster import timeframes
from data_puller_dagster.transform.canonical import CANONICAL_DTYPES
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.raw_columns import to_float
from data_puller_dagster.transform.schemas import validate_raw
from data_puller_dagster_tests.transform import rawframes as R

NOW = pd.Timestamp("2026-01-01", tz="UTC")


def _storage(raw: pd.DataFrame, storage: str) -> pd.DataFrame:
    return raw.astype({c: pd.StringDtype(storage) for c in raw.columns if isinstance(raw[c].dtype, pd.StringDtype)})


def _reference_float(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The price parser before Arrow: NumPy's str->float, else pandas' to_numeric (Python strings)."""
    s = s.astype(pd.StringDtype("python"))
    try:
        return np.asarray(s.array, dtype=object).astype(np.float64), np.zeros(len(s), dtype=bool)
    except (ValueError, TypeError):
        vals = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        return vals, np.isnan(vals) & s.notna().to_numpy()


def _junk_raw() -> pd.DataFrame:
    """A real BTCUSDT 1h series with junk prices, nulls, bad symbols, other timeframes and duplicates."""
    raw = R.btcusdt_1h().copy()
    n = len(raw)
    rng = np.random.default_rng(3)

    def put(col: str, values: list[object], k: int) -> None:
        s = raw[col].astype(object)
        s.iloc[rng.choice(n, k, replace=False)] = rng.choice(np.array(values, dtype=object), k)
        raw[col] = s.astype("string")

    put("open", ["abc", " 5", "1_0", "nan", "inf", "-1", "0", "1e5", "nan(1)", "", None], 60)
    put("high", ["-inf", "1e400", "x", None], 20)
    put("volume", ["-3", "bad", "NaN", None], 20)
    put("quote_volume", ["q", "-1.5", None], 10)
    put("symbol", [None, "bad sym", "ETHUSDT"], 30)
    put("timeframe", ["5m", None], 10)
    put("source", ["binance_archive"], 40)
    return pd.concat([raw, raw.sample(50, random_state=1)], ignore_index=True)


@pytest.mark.parametrize(
    "values",
    [
        ["30001.89000000", "0.00000001", "1e5", "-0.0", "4.9e-324", "1.7976931348623157e308", ".5", "5.", "+5"],
        ["1", " 5", "5 "],  # whitespace: Python accepts, Arrow does not
        ["1", "1_0", "\u0661\u0662"],  # underscores, non-ASCII digits
        ["1", "nan(1)"],  # Arrow accepts, Python does not
        ["1", "inf", "-inf", "nan", "1e400", "1e-400"],  # non-finite and out of range
        ["1", "abc", ""],  # junk
        ["1", None, "2"],  # a null
        [None, None],  # all null (forex volume)
        [],
    ],
)
@pytest.mark.parametrize("storage", ["python", "pyarrow"])
def test_price_parsing_matches_the_numpy_pandas_path(values: list[str | None], storage: str) -> None:
    s = pd.Series(values, dtype=pd.StringDtype(storage))
    got, bad = to_float(s)
    want, want_bad = _reference_float(s)
    assert got.dtype == np.float64 and np.array_equal(got.view("i8"), want.view("i8"))
    assert np.array_equal(bad, want_bad)


@pytest.mark.parametrize("make", [R.btcusdt_1h, _junk_raw], ids=["clean", "junk"])
def test_normalize_output_is_identical_for_both_storages(make: object) -> None:
    raw = make()  # type: ignore[operator]
    a = normalize(_storage(raw, "python"), asset_class="crypto", timeframe="1h", now=NOW)
    b = normalize(_storage(raw, "pyarrow"), asset_class="crypto", timeframe="1h", now=NOW)
    assert {c: str(t) for c, t in b.data.dtypes.items()} == CANONICAL_DTYPES
    for name in ("data", "quarantine", "conflicts"):
        x, y = getattr(a, name), getattr(b, name)
        assert [t for t in x.dtypes] == [t for t in y.dtypes], name  # python storage in both outputs
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    for c in ("open", "high", "low", "close", "volume", "quote_volume"):
        assert np.array_equal(a.data[c].to_numpy().view("i8"), b.data[c].to_numpy().view("i8")), c
    assert a.report == b.report and np.array_equal(a.row_rule, b.row_rule)
    assert a.report.accounted() == a.report.rows_in


def test_normalize_output_does_not_share_memory_with_the_raw_frame() -> None:
    raw = R.btcusdt_1h().copy()
    raw["open"] = raw["open"].astype("float64")  # numeric raw columns could be handed through as views
    before = raw.copy()
    res = normalize(raw, asset_class="crypto", timeframe="1h", now=NOW)
    res.data.loc[:, "open"] = -1.0
    res.data.loc[:, "fetched_at"] = pd.Timestamp("2000-01-01", tz="UTC")
    pd.testing.assert_frame_equal(raw, before)


def test_raw_model_accepts_either_storage_and_reports_the_same_failures() -> None:
    raw = R.btcusdt_1h()
    assert validate_raw(_storage(raw, "python")).ok and validate_raw(_storage(raw, "pyarrow")).ok
    broken = raw.assign(timeframe=pd.Series("7m", index=raw.index, dtype="string"), open=raw["open"].astype(object))
    got = validate_raw(_storage(broken, "pyarrow")).failures
    assert got == validate_raw(broken).failures == {f"timeframe:isin({list(timeframes.TIMEFRAMES)})": len(raw)}
    wrong = raw.assign(open=raw["open"].str.len())  # integers where text belongs: judged as before
    assert validate_raw(wrong).failures == {"open:dtype('string[python]')": 1}


@pytest.mark.parametrize("storage", ["python", "pyarrow"])
def test_empty_results_follow_the_string_storage_and_are_fresh_copies(storage) -> None:
    """The zero-row quarantine and conflict frames are cached per string storage (issue 18's latency):
    each call returns its own frame with the dtypes the option gives "string" at that moment."""
    raw = R.btcusdt_1h().head(50)
    with pd.option_context("mode.string_storage", storage):
        first = normalize(raw, asset_class="crypto", timeframe="1h", now=NOW)
        assert len(first.quarantine) == len(first.conflicts) == 0
        for frame in (first.quarantine, first.conflicts):
            assert frame["symbol"].dtype == pd.StringDtype(storage)
        first.quarantine["extra"] = 1  # a caller changing its result
        first.conflicts.drop(columns=["ts"], inplace=True)
        again = normalize(raw, asset_class="crypto", timeframe="1h", now=NOW)
    assert "extra" not in again.quarantine.columns and "ts" in again.conflicts.columns
    assert again.conflicts.dtypes.astype(str).to_dict() == {
        c: str(pd.api.types.pandas_dtype(d)) if d != "string" else "string" for c, d in CANONICAL_DTYPES.items()}
