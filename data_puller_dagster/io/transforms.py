"""Route transforms: named, registered reshapings of a table slice before a route writes it.

A route may name one (`transform: backtest_ohlcv`, or `transform: {type: columns, keep: [...]}`); the
name is looked up in the `data_puller_dagster.transforms` entry-point group, where these built-ins are
registered like any third-party transform. Config files stay declarative: a transform is code shipped
in a package, chosen and parameterised by name, never written in YAML.

Contract: `apply(df, table, options) -> DataFrame` returns a new frame with the same rows' `symbol` and
`ts` (the stores' partition columns); the router checks the result against the write contract again.
A route with a transform cannot be the route that feeds storage.primary (the next asset reads that).
"""

from __future__ import annotations

from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data_puller_dagster.io.tables import TableRef
from data_puller_dagster.symbols import check_name

PARTITION_COLUMNS = ("symbol", "ts")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnsOptions(_Options):
    keep: list[str] = Field(min_length=1, description="Columns to keep, in this order (symbol and ts always).")

    @field_validator("keep")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [check_name(c, "column name") for c in v]


def _project(df: pd.DataFrame, columns: list[str], name: str) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{name}: column(s) {missing} are not in the table (columns: {', '.join(map(str, df.columns))})"
        )
    order = list(PARTITION_COLUMNS) + [c for c in columns if c not in PARTITION_COLUMNS]
    return df.loc[:, order]


class Columns:
    """Keep only the listed columns (plus symbol and ts), e.g. a light mirror for a dashboard."""

    Options: ClassVar[type[_Options]] = ColumnsOptions

    @staticmethod
    def apply(df: pd.DataFrame, table: TableRef, options: ColumnsOptions) -> pd.DataFrame:
        return _project(df, options.keep, "columns")


class BacktestOHLCV:
    """The columns backtesting tools load (freqtrade, backtesting.py, vectorbt): ts, OHLCV and the
    symbol, only final candles (a still-open candle would leak the future into a backtest)."""

    Options: ClassVar[type[_Options]] = _Options
    COLUMNS: ClassVar[list[str]] = ["open", "high", "low", "close", "volume"]

    @staticmethod
    def apply(df: pd.DataFrame, table: TableRef, options: _Options) -> pd.DataFrame:
        out = _project(df, BacktestOHLCV.COLUMNS, "backtest_ohlcv")
        if "is_final" in df.columns:
            out = out[df["is_final"].fillna(False).astype(bool).to_numpy()]
        return out.reset_index(drop=True)
