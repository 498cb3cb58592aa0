"""Parquet destination: a Hive-partitioned lake on a local path or any fsspec URL.

Layout: `<root>/<feed>/<table>/symbol_key=<KEY>/date=<YYYY-MM-DD>/part-0.parquet`, plus
`<root>/<feed>/<table>/_common_metadata` holding the table's schema.

Why `symbol_key=` and not `symbol=`: the files carry a `symbol` column in display form (`EUR/USD`).
With a `symbol=EURUSD` directory, DuckDB (`hive_partitioning=true`) and `pyarrow.dataset` silently
replace the column with the key, and pandas refuses to read the dataset (string vs dictionary merge
error). A distinct directory name keeps the display symbol intact in all three readers.

Atomicity (local disk and fsspec URLs other than s3://): every partition file of a write is first
written to a dot-prefixed temporary name (ignored by pyarrow, pandas and DuckDB's `*.parquet` glob);
only when all of them are written are they renamed into place and the slice's partitions without rows
deleted. A write that fails while serializing leaves every old partition untouched; on a local disk
each rename is atomic.

Atomicity on S3 (`s3://`): nothing is staged (a rename there is copy + delete). Each day file is
encoded completely in memory, then sent to its one fixed key in a single PUT, which S3 applies whole or
not at all: each partition holds its previous or its new file at every moment, and a listing never
shows two files of one day. A write that fails midway leaves each partition old or new, not the slice
as a whole. parquet_s3.py says exactly what writers and readers can see, and why.

Crash debris: each write first sweeps the directories it writes (every partition directory of its
slice; the table directory when it writes the schema) of stale temp files; see staging.py for the rule.
On S3 a killed writer leaves nothing (see parquet_s3.py).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, SecretStr, model_validator

from data_puller_dagster.io.destinations.base import DestinationKind, DestinationOptions
from data_puller_dagster.io.destinations.parquet_s3 import S3Lake
from data_puller_dagster.io.destinations.s3_objects import S3Objects, is_s3, s3_storage_options, with_defaults
from data_puller_dagster.io.destinations.staging import is_stale_temp, staging_token, sweep_local
from data_puller_dagster.io.errors import SchemaDriftError
from data_puller_dagster.io.frames import (
    arrow_to_pandas,
    check_frame,
    drift_message,
    dtype_map,
    empty_frame,
    partition_ranges,
    redact_url,
    restore_dtypes,
    to_arrow,
)
from data_puller_dagster.io.tables import PartitionSlice, TableRef

if TYPE_CHECKING:
    from data_puller_dagster.config import StorageConfig

SYMBOL_DIR = "symbol_key"
DATE_DIR = "date"
FILE_NAME = "part-0.parquet"
SCHEMA_FILE = "_common_metadata"
DTYPES_KEY = b"data_puller/dtypes"
COMPRESSION = "zstd"
# No dictionary pages. Why: a day file holds ~1,440 rows, so nearly every column (prices, volumes,
# timestamps) is high-cardinality within it, and a dictionary per column chunk only adds work: without
# it a year of 1m day files is ~20% smaller, ~25-30% cheaper to write and ~10-20% cheaper to read
# (measured on raw and normalized frames), and zstd squeezes the few constant columns (symbol, source,
# timeframe) just as well. Readers see the same values; files written before keep their dictionaries.
USE_DICTIONARY = False
WRITE_THREADS = 4  # day files encoded and written concurrently by one write


def _is_partition_stem(stem: str) -> bool:
    return stem == FILE_NAME


def _is_schema_stem(stem: str) -> bool:
    return stem == SCHEMA_FILE


def _subdirs(directory: str) -> list[str]:
    """Names of the directories directly in a local `directory` (none when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _filesystem(root: str, storage_options: Mapping[str, Any] | None) -> tuple[pafs.FileSystem, str, Any]:
    """A pyarrow filesystem for the root (native for local paths, which is fast; fsspec-wrapped
    otherwise), the path inside it, and the fsspec filesystem itself."""
    if root.split("://", 1)[0] in ("s3", "s3a") and "://" in root:
        storage_options = with_defaults(storage_options)
    fs, path = fsspec.core.url_to_fs(root, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "file" in protocols or "local" in protocols:
        if storage_options:
            raise ValueError(f"parquet root {root!r} is a local path: storage options apply to URLs only")
        return pafs.LocalFileSystem(), path.rstrip("/"), fs
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path.rstrip("/"), fs


def _encode(table: pa.Table) -> bytes:
    """One partition file, complete, in memory (the S3 path PUTs it in one request)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=COMPRESSION, use_dictionary=USE_DICTIONARY)
    return sink.getvalue().to_pybytes()


class ParquetOptions(DestinationOptions):
    root: str | None = Field(None, description="Local path or fsspec URL; default storage.parquet_root")
    # s3:// roots only (S3-compatible servers: MinIO, moto, ...). Without a key: the AWS credential chain.
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:9000")
    key_id: SecretStr | None = Field(None, description="S3 access key id")
    secret: SecretStr | None = Field(None, description="S3 secret access key")
    region: str | None = Field(None, description="S3 region, e.g. us-east-1")

    @model_validator(mode="after")
    def _s3_only(self) -> ParquetOptions:
        s3 = [f for f in ("endpoint_url", "key_id", "secret", "region") if getattr(self, f) is not None]
        if s3 and not (self.root or "").startswith("s3://"):
            raise ValueError(f"{', '.join(s3)} apply to an s3:// root only; set root: s3://bucket/prefix")
        if (self.key_id is None) != (self.secret is None):
            raise ValueError("key_id and secret go together; set both, or neither for the AWS credential chain")
        if self.endpoint_url is not None and not re.match(r"^https?://[^\s/]+", self.endpoint_url):
            raise ValueError("endpoint_url must be http(s)://host[:port]")
        return self


class ParquetDestination:
    """Hive-partitioned Parquet (zstd), one file per symbol x UTC day."""

    name = "parquet"
    kind: ClassVar[DestinationKind] = "store"
    Options = ParquetOptions

    @classmethod
    def from_options(cls, options: ParquetOptions, storage: StorageConfig) -> ParquetDestination:
        if options.root is None:
            return cls(storage.parquet_location)
        root = options.root
        if not root.startswith("s3://"):
            return cls(root.rstrip("/") if "://" in root else str(Path(root).expanduser().absolute()))
        secret = options.secret.get_secret_value() if options.secret else None
        key_id = options.key_id.get_secret_value() if options.key_id else None
        return cls(root.rstrip("/"), storage_options=s3_storage_options(options.endpoint_url, key_id, secret, options.region))

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None):
        """`storage_options` go to fsspec for URL roots; for `s3://` they are s3fs's (`endpoint_url`,
        `key`, `secret`, `client_kwargs={"region_name": ...}`, ...; build them with
        s3_objects.s3_storage_options). They are never shown: errors, metadata and repr name the root
        without its user-info, and the keys are scrubbed from S3 error messages."""
        self.root = root
        self.fs, self.base, fsspec_fs = _filesystem(root, storage_options)
        self._s3: S3Lake | None = None
        if is_s3(fsspec_fs):
            if not self.base.strip("/"):
                raise ValueError(
                    f"parquet root {redact_url(root)!r} names no bucket; use s3://<bucket>/<prefix>"
                )
            so = storage_options or {}
            secrets = [str(so[k]) for k in ("key", "secret", "token") if so.get(k)]
            self._s3 = S3Lake(
                S3Objects(fsspec_fs),
                root,
                secrets,
                symbol_dir=SYMBOL_DIR,
                date_dir=DATE_DIR,
                file_name=FILE_NAME,
            )

    def __repr__(self) -> str:
        return f"ParquetDestination({redact_url(self.root)!r})"

    # ------------------------------------------------------------------------------------- paths
    def table_dir(self, table: TableRef) -> str:
        return f"{self.base}/{table.feed}/{table.name}"

    def partition_file(self, table: TableRef, key: str, day: date) -> str:
        return f"{self.table_dir(table)}/{SYMBOL_DIR}={key}/{DATE_DIR}={day.isoformat()}/{FILE_NAME}"

    def glob(self, table: TableRef) -> str:
        """The pattern analysts pass to duckdb.read_parquet (a URL for URL roots)."""
        if "://" in self.root:
            return f"{self.root.split('://', 1)[0]}://{self.table_dir(table).lstrip('/')}/**/*.parquet"
        return f"{self.table_dir(table)}/**/*.parquet"

    # ------------------------------------------------------------------------------------- write
    def write(self, table: TableRef, df: pd.DataFrame, part: PartitionSlice) -> dict[str, Any]:
        df = check_frame(table, df, part)
        arrow = to_arrow(df)  # once for the whole frame (shared with the other destinations of a write)
        # Keep pandas' own metadata (pd.read_parquet restores Int64/string from it) and add ours.
        meta = {**(arrow.schema.metadata or {}), DTYPES_KEY: json.dumps(dtype_map(df)).encode()}
        arrow = arrow.replace_schema_metadata(meta)
        self._check_schema(table, arrow.schema)

        order, ranges = partition_ranges(df, part)
        if order is not None:  # rows not grouped by partition: gather them once, then slice
            arrow = arrow.take(pa.array(order))
        if self._s3 is not None:
            return self._write_s3(table, len(df), arrow, ranges, part)
        # One listing of the slice's existing partition directories, which sweeps them of stale temp
        # files too: a day never written before needs no sweep, no existence check and no delete.
        present, swept = self._scan_slice(table, part)
        token = staging_token()
        staged: list[tuple[str, str]] = []  # appended by stage() once its temp file is complete

        def stage(key: str, day: date, start: int, stop: int) -> None:
            final = self.partition_file(table, key, day)
            directory = final.rsplit("/", 1)[0]
            tmp = f"{directory}/.{FILE_NAME}.{token}.tmp"
            if (key, day) not in present:
                self.fs.create_dir(directory, recursive=True)
            try:
                pq.write_table(
                    arrow.slice(start, stop - start),
                    tmp,
                    filesystem=self.fs,
                    compression=COMPRESSION,
                    use_dictionary=USE_DICTIONARY,
                )
            except BaseException:
                self._delete_quietly(tmp)  # a half-written temp file is debris too
                raise
            staged.append((tmp, final))

        # Day files are small (1,440 rows of 1m), so a backfill is mostly per-file overhead: encode and
        # write them on a few threads (pyarrow releases the GIL). Every file is staged before any move.
        workers = min(WRITE_THREADS, len(ranges))
        try:
            if workers <= 1:
                for r in ranges:
                    stage(*r)
            else:
                ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parquet-write")
                try:
                    futures = [ex.submit(stage, *r) for r in ranges]
                    wait(futures, return_when=FIRST_EXCEPTION)
                finally:
                    # Also when interrupted (a Dagster termination raises here): drop the queued files
                    # and let the started ones finish, so `staged` lists every temp file to delete.
                    ex.shutdown(wait=True, cancel_futures=True)
                errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
                if errors:
                    raise errors[0]  # type: ignore[misc]
        except BaseException:
            for tmp, _ in staged:
                self._delete_quietly(tmp)
            raise
        for tmp, final in staged:
            self.fs.move(tmp, final)
        # Listed again after the moves, as a write that ends last must leave exactly its own rows in
        # the slice even when another writer added a day meanwhile.
        emptied = 0
        for path in self._slice_files(table, part, skip={(key, day) for key, day, _, _ in ranges}):
            if self._delete_quietly(path):
                emptied += 1
        return {
            "rows": len(df),
            "files": len(staged),
            "emptied_partitions": emptied,
            "stale_temp_removed": swept,
            "location": redact_url(f"{self.root.rstrip('/')}/{table.feed}/{table.name}"),
        }

    def _write_s3(
        self,
        table: TableRef,
        rows: int,
        arrow: pa.Table,
        ranges: list[tuple[str, date, int, int]],
        part: PartitionSlice,
    ) -> dict[str, Any]:
        """Encode every day file in memory (a failure here sends nothing), then replace them on S3."""
        assert self._s3 is not None

        def encode(r: tuple[str, date, int, int]) -> tuple[str, bytes]:
            key, day, start, stop = r
            return self.partition_file(table, key, day), _encode(arrow.slice(start, stop - start))

        with ThreadPoolExecutor(
            max(1, min(WRITE_THREADS, len(ranges))), thread_name_prefix="parquet-encode"
        ) as ex:
            blobs = list(ex.map(encode, ranges))
        written = {(key, day) for key, day, _, _ in ranges}
        md = self._s3.replace(self.table_dir(table), part, blobs, written, _is_partition_stem)
        return {
            "rows": rows,
            **md,
            "location": redact_url(f"{self.root.rstrip('/')}/{table.feed}/{table.name}"),
        }

    def _scan_slice(self, table: TableRef, part: PartitionSlice) -> tuple[set[tuple[str, date]], int]:
        """Sweep the slice's existing partition directories of stale temp files; return which
        (symbol key, day) directories exist and how many temp files were removed.

        Why one pass: a write of a year used to create, list and sweep 366 directories one by one, most
        of them absent on a first backfill (on an object store each of those is a request). Locally: one
        scandir of each symbol directory, then one of each existing day directory of the slice.
        Elsewhere: one recursive listing per symbol directory.
        """
        days = {f"{DATE_DIR}={d.isoformat()}": d for d in part.dates}
        present: set[tuple[str, date]] = set()
        removed = 0
        for key in part.keys:
            symbol_dir = f"{self.table_dir(table)}/{SYMBOL_DIR}={key}"
            if isinstance(self.fs, pafs.LocalFileSystem):
                for name in _subdirs(symbol_dir):
                    if name in days:
                        present.add((key, days[name]))
                        removed += sweep_local(Path(f"{symbol_dir}/{name}"), _is_partition_stem)
                continue
            prefix = symbol_dir.strip("/") + "/"
            for info in self.fs.get_file_info(
                pafs.FileSelector(symbol_dir, recursive=True, allow_not_found=True)
            ):
                rel = info.path.strip("/").removeprefix(prefix).split("/")
                if rel[0] not in days:
                    continue
                present.add((key, days[rel[0]]))
                mtime = info.mtime.timestamp() if info.mtime is not None else None
                if (
                    len(rel) == 2
                    and info.type == pafs.FileType.File
                    and is_stale_temp(rel[1], _is_partition_stem, mtime)
                ):
                    try:
                        self.fs.delete_file(info.path)
                    except FileNotFoundError:  # renamed by its writer or swept by another one meanwhile
                        continue
                    removed += 1
        return present, removed

    def _check_schema(self, table: TableRef, schema: pa.Schema) -> None:
        """Stable column types across partitions: the first write fixes the table's schema."""
        existing = self._read_schema(table)
        if existing is None:
            self._write_schema(table, schema)
            return
        have = {f.name: str(f.type) for f in existing}
        want = {f.name: str(f.type) for f in schema}
        if have != want:
            raise SchemaDriftError(drift_message(f"parquet (at {redact_url(self.root)})", table, have, want))
        if _dtypes_of(existing) != _dtypes_of(schema):
            # Same Arrow types, different pandas flavour (object vs string): the latest wins.
            self._write_schema(table, schema)

    def _write_schema(self, table: TableRef, schema: pa.Schema) -> None:
        if self._s3 is not None:  # one PUT of the complete file; no directories on S3
            sink = pa.BufferOutputStream()
            pq.write_metadata(schema, sink)
            self._s3.put(
                [(f"{self.table_dir(table)}/{SCHEMA_FILE}", sink.getvalue().to_pybytes())], "schema file"
            )
            self._s3.delete(self._s3.stale_in(self.table_dir(table), _is_schema_stem), "stale temp file")
            return
        self.fs.create_dir(self.table_dir(table), recursive=True)
        self._sweep(self.table_dir(table), _is_schema_stem)
        tmp = f"{self.table_dir(table)}/.{SCHEMA_FILE}.{staging_token()}.tmp"
        pq.write_metadata(schema, tmp, filesystem=self.fs)
        self.fs.move(tmp, f"{self.table_dir(table)}/{SCHEMA_FILE}")

    def _read_schema(self, table: TableRef) -> pa.Schema | None:
        path = f"{self.table_dir(table)}/{SCHEMA_FILE}"
        if self._s3 is not None:  # one GET, no HEAD first
            data = self._s3.get(path)
            return None if data is None else pq.read_schema(pa.BufferReader(data))
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        return pq.read_schema(path, filesystem=self.fs)

    def _sweep(self, directory: str, stem_ok: Callable[[str], bool]) -> int:
        """Delete the stale temp files directly in `directory` (see the module docstring for "stale")."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return sweep_local(Path(directory), stem_ok)  # one scandir, no per-file stat round trips
        removed = 0
        for info in self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True)):
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            if info.type == pafs.FileType.File and is_stale_temp(info.base_name, stem_ok, mtime):
                try:
                    self.fs.delete_file(info.path)
                except FileNotFoundError:  # renamed by its writer or swept by another one meanwhile
                    continue
                removed += 1
        return removed

    def _delete_quietly(self, path: str) -> bool:
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return False
        self.fs.delete_file(path)
        return True

    # -------------------------------------------------------------------------------------- read
    def read(self, table: TableRef, part: PartitionSlice) -> pd.DataFrame:
        """One multi-threaded dataset scan of the slice's existing day files (days without a file are
        simply absent, so a slice without any reads as an empty frame with the table's dtypes)."""
        schema = self._read_schema(table)
        if schema is None:
            return pd.DataFrame()
        dtypes = _dtypes_of(schema)
        if self._s3 is not None:
            stored, _ = self._s3.slice_objects(self.table_dir(table), part, _is_partition_stem)
            found = self._s3.read_tables([path for path, _ in stored.values()], schema, list(dtypes))
            if found is None or found.num_rows == 0:
                return empty_frame(dtypes)
            return restore_dtypes(arrow_to_pandas(found, dtypes), dtypes)
        files = self._slice_files(table, part)
        if not files:
            return empty_frame(dtypes)
        # The listed files and the table schema, given: no per-file existence check (a request each on
        # an object store), schema inspection or unification across the 366 files of a year.
        dataset = ds.FileSystemDataset.from_paths(
            files, schema=schema, format=ds.ParquetFileFormat(), filesystem=self.fs
        )
        arrow = dataset.to_table(columns=list(dtypes), use_threads=True)
        if arrow.num_rows == 0:
            return empty_frame(dtypes)
        return restore_dtypes(arrow_to_pandas(arrow, dtypes), dtypes)

    def _slice_files(
        self, table: TableRef, part: PartitionSlice, skip: Collection[tuple[str, date]] = ()
    ) -> list[str]:
        """The partition files of the slice that exist (but those of `skip`), in (symbol key, day)
        order, found by listing only the slice's symbol directories (not the whole table, which may hold
        years and symbols the slice does not touch). Locally one scandir per symbol directory and a stat
        per existing day directory; elsewhere one recursive listing per symbol directory."""
        files: list[str] = []
        for key in part.keys:
            days = {f"{DATE_DIR}={d.isoformat()}" for d in part.dates if (key, d) not in skip}
            symbol_dir = f"{self.table_dir(table)}/{SYMBOL_DIR}={key}"
            if isinstance(self.fs, pafs.LocalFileSystem):
                for name in sorted(days.intersection(_subdirs(symbol_dir))):
                    if os.path.isfile(path := f"{symbol_dir}/{name}/{FILE_NAME}"):
                        files.append(path)
                continue
            prefix = symbol_dir.strip("/") + "/"
            found = []
            for info in self.fs.get_file_info(
                pafs.FileSelector(symbol_dir, recursive=True, allow_not_found=True)
            ):
                rel = info.path.strip("/").removeprefix(prefix).split("/")
                if (
                    info.type == pafs.FileType.File
                    and len(rel) == 2
                    and rel[0] in days
                    and rel[1] == FILE_NAME
                ):
                    found.append(info.path)
            files.extend(sorted(found))
        return files


def _dtypes_of(schema: pa.Schema) -> dict[str, str]:
    meta = schema.metadata or {}
    if DTYPES_KEY in meta:
        return json.loads(meta[DTYPES_KEY])
    return {f.name: str(f.type.to_pandas_dtype()) for f in schema}  # pragma: no cover - foreign files
