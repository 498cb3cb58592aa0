"""`exempt_all_null_rows` is pandera's `ignore_na` for row-wise dataframe checks, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd

from data_puller_dagster.transform.schemas import exempt_all_null_rows, high_ge_low


def pandera_rule(df: pd.DataFrame, ok: pd.Series) -> pd.Series:
    return ok | df.isna().all(axis="columns")  # pandera's postprocess_table_with_field_output


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "high": [2.0, np.nan, 1.0, np.nan, 3.0],
            "low": [1.0, np.nan, 2.0, 1.0, 1.0],
            "symbol": pd.array(["A", None, "A", None, "A"], dtype="string"),
        }
    )


def test_matches_pandera_on_mixed_rows() -> None:
    df = frame()
    ok = high_ge_low(df)  # row 1 all-null (exempt), row 2 fails, row 3 partly null (fails)
    got = exempt_all_null_rows(df, ok)
    pd.testing.assert_series_equal(got, pandera_rule(df, ok))
    assert got.tolist() == [True, True, False, False, True]


def test_all_passing_and_no_null_rows_are_unchanged() -> None:
    df = frame().iloc[[0, 4]]
    ok = high_ge_low(df)
    assert exempt_all_null_rows(df, ok) is ok
    df2 = frame().assign(is_final=True)  # a column that is never null: nothing can be exempt
    pd.testing.assert_series_equal(exempt_all_null_rows(df2, high_ge_low(df2)), pandera_rule(df2, high_ge_low(df2)))


def test_random_frames_agree_with_pandera() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(0, 30))
        df = pd.DataFrame({
            "high": np.where(rng.random(n) < 0.4, np.nan, rng.random(n)),
            "low": np.where(rng.random(n) < 0.4, np.nan, rng.random(n)),
            "symbol": pd.array(np.where(rng.random(n) < 0.5, None, "X"), dtype="string"),
        })  # fmt: skip
        ok = high_ge_low(df)
        pd.testing.assert_series_equal(exempt_all_null_rows(df, ok), pandera_rule(df, ok))
