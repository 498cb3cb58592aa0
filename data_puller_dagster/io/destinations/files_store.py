"""CSV (backtesting export) and JSONL destinations: one plain file per symbol x UTC day.

Layout: `<root>/<feed>/<table>/<KEY>/<YYYY-MM-DD>.csv` (or `.jsonl`), plus `_dtypes.json` next to the
symbol folders so a read returns the dtypes that were written. Files are staged under dot-prefixed
temporary names and renamed into place only once every file of the write is complete (`os.replace`
is atomic), so readers never see a half-written day and a failed write leaves the old files intact.
The temp files a killed writer leaves are swept by the next write of that symbol's directory (and of the
dtypes file), with the same rule as the Parquet store: dead local writer at once, anyone after
STALE_TEMP_AFTER, never a live writer (see parquet_store's module docstring).

Dataset tables (layer `dataset`) carry a `line` column of ready-serialized JSON; the JSONL destination
writes those lines verbatim, one per row, because re-serializing could change number formatting the
dataset builder chose on purpose. Such files hold only the lines, so they cannot be read back as a
table: read datasets from the primary store.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Collection
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from pydantic import Field, field_validator

from data_puller_dagster.io.destinations.base import DestinationKind, DestinationOptions
from data_puller_dagster.io.destinations.staging import staging_token, sweep_local
from data_puller_dagster.io.errors import SchemaDriftError, StorageError
from data_puller_dagster.io.frames import (
    arrow_to_pandas,
    check_frame,
    drift_message,
    dtype_kind,
    dtype_map,
    empty_frame,
    partition_ranges,
    restore_dtypes,
    to_arrow,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef

if TYPE_CHECKING:
    from data_puller_dagster.config import StorageConfig

DTYPES_FILE = "_dtypes.json"
_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
_PATTERN_FIELDS = {  # placeholder -> regex of what it renders to
    "symbol": r"[A-Z0-9]{1,40}",
    "timeframe": r"[0-9]+[a-zA-Z]+",
    "date": r"\d{4}-\d{2}-\d{2}",
    "date_range": r"\d{8}-\d{8}",
}
_LITERAL = re.compile(r"^[A-Za-z0-9_.\-]*$")


def check_filename_pattern(pattern: str, suffix: str) -> str:
    """A day file name pattern: placeholders {symbol} (partition key), {timeframe}, {date}
    (YYYY-MM-DD) and {date_range} (YYYYMMDD-YYYYMMDD: the first and last day the file holds, i.e. its
    day), at least one of the two dates (a file is one partition), the destination's suffix, no path."""
    names = _PLACEHOLDER.findall(pattern)
    unknown = sorted(set(names) - set(_PATTERN_FIELDS))
    if unknown:
        raise ValueError(f"unknown placeholder(s) {unknown}; use {{{'}, {'.join(_PATTERN_FIELDS)}}}")
    if "date" not in names and "date_range" not in names:
        raise ValueError("needs {date} or {date_range}: every file holds one UTC day")
    if not _LITERAL.match(_PLACEHOLDER.sub("", pattern)) or pattern.startswith("."):
        raise ValueError("may hold letters, digits, '_', '-', '.' and placeholders only (no path, no leading dot)")
    if not pattern.endswith(suffix):
        raise ValueError(f"must end with {suffix!r}")
    return pattern


_ARROW_TYPE = {
    "tz": pa.timestamp("ns", tz="UTC"),
    "naive": pa.timestamp("ns"),
    "float": pa.float64(),
    "int": pa.int64(),
    "bool": pa.bool_(),
    "str": pa.string(),
}


class FilesOptions(DestinationOptions):
    dir: Path | None = Field(None, description="Root directory; default storage.csv_dir / storage.jsonl_dir")
    filename_pattern: str | None = Field(
        None,
        description="Day file name under <dir>/<feed>/<table>/<KEY>/, e.g. {symbol}_{timeframe}_{date_range}.csv; "
        "default {date}.csv / {date}.jsonl",
    )
    SUFFIX: ClassVar[str] = ""

    @field_validator("filename_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        return v if v is None else check_filename_pattern(v, cls.SUFFIX)


class CSVOptions(FilesOptions):
    SUFFIX: ClassVar[str] = ".csv"


class JSONLOptions(FilesOptions):
    SUFFIX: ClassVar[str] = ".jsonl"


class _FileDestination:
    """Shared staging, renaming and dtype bookkeeping of the per-day file destinations."""

    name = ""
    suffix = ""
    kind: ClassVar[DestinationKind] = "store"
    Options = FilesOptions

    @classmethod
    def _default_root(cls, storage: StorageConfig) -> Path:
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: FilesOptions, storage: StorageConfig) -> _FileDestination:
        root = options.dir.expanduser().absolute() if options.dir else cls._default_root(storage)
        return cls(root, options.filename_pattern)

    def __init__(self, root: str | Path, filename_pattern: str | None = None):
        self.root = Path(root)
        self.pattern = check_filename_pattern(filename_pattern or f"{{date}}{self.suffix}", self.suffix)
        parts = re.split(r"(\{[a-z_]+\})", self.pattern)
        self._day_name = re.compile(
            "^"
            + "".join(_PATTERN_FIELDS[p[1:-1]] if p.startswith("{") else re.escape(p) for p in parts)
            + "$"
        )

    def table_dir(self, table: TableRef) -> Path:
        return self.root / table.feed / table.name

    def partition_file(self, table: TableRef, key: str, day: date) -> Path:
        compact = day.strftime("%Y%m%d")
        name = self.pattern.format(
            symbol=key, timeframe=table.timeframe or "", date=day.isoformat(), date_range=f"{compact}-{compact}"
        )
        return self.table_dir(table) / key / name

    def _encoder(
        self, table: TableRef, df: pd.DataFrame, order: np.ndarray | None
    ) -> Callable[[int, int], bytes]:
        """A function encoding rows [start, stop) of `df` (reordered by `order`, when given, so that
        each partition's rows are contiguous) as the bytes of one day file."""
        raise NotImplementedError

    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        self._check_dtypes(table, df)
        order, ranges = partition_ranges(df, part)
        encode = self._encoder(table, df, order)
        token = staging_token()
        # One symbol directory holds all its days: sweep each directory of the slice once, not per day.
        swept = sum(sweep_local(self.table_dir(table) / key, self._is_day_stem) for key in part.keys)
        staged: list[tuple[Path, Path]] = []
        try:
            for key, day, start, stop in ranges:
                final = self.partition_file(table, key, day)
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(f".{final.name}.{token}.tmp")
                staged.append((tmp, final))  # before writing: a half-written temp file is removed too
                tmp.write_bytes(encode(start, stop))
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
        for tmp, final in staged:
            os.replace(tmp, final)
        emptied = 0  # listed after the moves (one listing per symbol), not checked day by day
        for f in self._files(table, part, skip={(key, day) for key, day, _, _ in ranges}):
            f.unlink(missing_ok=True)
            emptied += 1
        return {
            "rows": len(df),
            "files": len(staged),
            "emptied_partitions": emptied,
            "stale_temp_removed": swept,
            "location": str(self.table_dir(table)),
        }

    def _is_day_stem(self, stem: str) -> bool:
        """`2024-01-05.csv` (or the pattern's name): the final name of one of this destination's day files."""
        return self._day_name.match(stem) is not None

    def _check_dtypes(self, table: TableRef, df: pd.DataFrame) -> None:
        path = self.table_dir(table) / DTYPES_FILE
        new = dtype_map(df)
        if path.exists():
            old = json.loads(path.read_text())
            have = {c: dtype_kind(t) for c, t in old.items()}
            want = {c: dtype_kind(t) for c, t in new.items()}
            if have != want:
                raise SchemaDriftError(drift_message(f"{self.name} (at {self.root})", table, have, want))
            if old == new:
                return
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_local(path.parent, lambda stem: stem == DTYPES_FILE)
        tmp = path.with_name(f".{DTYPES_FILE}.{staging_token()}.tmp")
        tmp.write_text(json.dumps(new))
        os.replace(tmp, path)

    def _files(
        self, table: TableRef, part: PartitionSlice, skip: Collection[tuple[str, date]] = ()
    ) -> list[Path]:
        """The slice's existing day files (but those of `skip`) in (symbol key, day) order, from one
        listing per symbol directory rather than one existence check per day."""
        files: list[Path] = []
        for key in part.keys:
            try:
                with os.scandir(self.table_dir(table) / key) as entries:
                    names = {e.name for e in entries if e.is_file()}
            except FileNotFoundError:
                continue
            files.extend(
                f
                for day in part.dates
                if (key, day) not in skip and (f := self.partition_file(table, key, day)).name in names
            )
        return files

    def _dtypes(self, table: TableRef) -> dict[str, str] | None:
        path = self.table_dir(table) / DTYPES_FILE
        return json.loads(path.read_text()) if path.exists() else None

    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """The slice's day files decoded with the recorded dtypes (empty frame when there are none)."""
        dtypes = self._dtypes(table)
        if dtypes is None:
            return pd.DataFrame()
        files = self._files(table, part)
        if not files:
            return empty_frame(dtypes)
        return restore_dtypes(self._decode(files, dtypes), dtypes)

    def _decode(self, files: list[Path], dtypes: dict[str, str]) -> pd.DataFrame:
        raise NotImplementedError


class CSVDestination(_FileDestination):
    """Per-day CSV files with a header; ISO timestamps in UTC, strings quoted, empty field = missing."""

    name = "csv"
    suffix = ".csv"
    Options = CSVOptions

    @classmethod
    def _default_root(cls, storage: StorageConfig) -> Path:
        return storage.csv_location

    def _encoder(
        self, table: TableRef, df: pd.DataFrame, order: np.ndarray | None
    ) -> Callable[[int, int], bytes]:
        arrow = to_arrow(df)  # converted once (shared with the other destinations), sliced per day
        if order is not None:
            arrow = arrow.take(pa.array(order))

        def encode(start: int, stop: int) -> bytes:
            buf = io.BytesIO()
            pacsv.write_csv(arrow.slice(start, stop - start), buf)
            return buf.getvalue()

        return encode

    def _decode(self, files: list[Path], dtypes: dict[str, str]) -> pd.DataFrame:
        opts = pacsv.ConvertOptions(
            column_types={c: _ARROW_TYPE[dtype_kind(t)] for c, t in dtypes.items()},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
        )
        arrow = pa.concat_tables(pacsv.read_csv(f, convert_options=opts) for f in files)
        return arrow_to_pandas(arrow, dtypes)


class JSONLDestination(_FileDestination):
    """Per-day JSON Lines: one object per row, or the dataset's ready-serialized `line` verbatim."""

    name = "jsonl"
    suffix = ".jsonl"
    Options = JSONLOptions

    @classmethod
    def _default_root(cls, storage: StorageConfig) -> Path:
        return storage.jsonl_location

    def _encoder(
        self, table: TableRef, df: pd.DataFrame, order: np.ndarray | None
    ) -> Callable[[int, int], bytes]:
        rows = df if order is None else df.take(order)

        def encode(start: int, stop: int) -> bytes:
            chunk = rows.iloc[start:stop]
            if table.layer == "dataset":
                if "line" not in chunk.columns:
                    raise StorageError(
                        f"jsonl: dataset table {table.qualified} has no `line` column of serialized examples; "
                        "the dataset asset must return one"
                    )
                return ("\n".join(chunk["line"].astype(str).tolist()) + "\n").encode()
            return chunk.to_json(
                orient="records", lines=True, date_format="iso", date_unit="us", double_precision=15
            ).encode()

        return encode

    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        if table.layer == "dataset":
            raise StorageError(
                f"jsonl: dataset table {table.qualified} is stored as bare serialized lines and cannot be read "
                "back as a table; read it from storage.primary (parquet, duckdb or postgres)"
            )
        return super().read(table, part)

    def _decode(self, files: list[Path], dtypes: dict[str, str]) -> pd.DataFrame:
        text = b"".join(f.read_bytes() for f in files)
        dates = [c for c, t in dtypes.items() if dtype_kind(t) in ("tz", "naive")]
        return pd.read_json(io.BytesIO(text), lines=True, convert_dates=dates, dtype=False)
