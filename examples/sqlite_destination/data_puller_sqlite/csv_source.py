"""An example source plug-in: candles from local CSV files (`<dir>/<SYMBOLKEY>_<timeframe>.csv`, columns
`datetime,open,high,low,close,volume`, UTC), e.g. an export from another tool.

A source plug-in emits one of the raw layouts the normalizer reads; this one uses the generic
`twelvedata` text layout (prices kept as the file's text, as the raw layer's audit trail wants), so every
normalizer rule (quarantine, gaps, finality) applies unchanged.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from data_puller_dagster.config import AppConfig
from data_puller_dagster.sources.base import TWELVEDATA_RAW_DTYPES, add_provenance, check_range, raw_empty
from data_puller_dagster.sources.errors import LocalDataMissingError
from data_puller_dagster.symbols import partition_key


class CSVSourceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    dir: Path = Field(description="Folder holding <SYMBOLKEY>_<timeframe>.csv files")


class CSVFileSource:
    provider = "csv_files"
    Options = CSVSourceOptions
    asset_classes: ClassVar[tuple[str, ...]] = ("crypto", "forex", "equity", "commodity", "index")
    raw_layout: ClassVar[str] = "twelvedata"

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    @classmethod
    def from_options(cls, options: CSVSourceOptions, cfg: AppConfig) -> CSVFileSource:
        return cls(options.dir)

    def fetch(self, symbol: str, timeframe: str, start: datetime, end: datetime) -> pd.DataFrame:
        lo, hi = check_range(self.provider, symbol, timeframe, start, end)
        path = self.dir / f"{partition_key(symbol)}_{timeframe}.csv"
        if not path.exists():
            raise LocalDataMissingError(f"{self.provider}: {path} does not exist; export {symbol} {timeframe} there")
        text = pd.read_csv(path, dtype="string")
        ts = pd.to_datetime(text["datetime"], utc=True, errors="coerce")
        text = text[((ts >= lo) & (ts < hi)).fillna(False).to_numpy()].reset_index(drop=True)
        if text.empty:
            return raw_empty(self.raw_layout)
        out = pd.DataFrame({c: text[c] if c in text.columns else pd.NA for c in ("datetime", "open", "high", "low", "close", "volume")})
        out["interval"] = pd.array([pd.NA] * len(out), dtype="string")
        out = add_provenance(out, pd.to_datetime(out["datetime"], utc=True), symbol, timeframe, self.provider,
                             pd.Timestamp.now(tz="UTC"))  # fmt: skip
        return out.astype(TWELVEDATA_RAW_DTYPES)[list(TWELVEDATA_RAW_DTYPES)]

    def close(self) -> None:
        pass
