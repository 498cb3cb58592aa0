"""The S3 half of the Parquet destination: which objects a slice has, replacing them, reading them.

parquet_store.py keeps the layout, the schema rules and the local-disk path; this module holds what
differs on S3, where a rename is copy + delete and so cannot swap a file in atomically.

Writes: every day file of the write is encoded completely in memory first (parquet_store; a failure
there changes nothing in the bucket); then each goes to its one fixed key (`.../part-0.parquet`) in a
single PUT, which S3 applies whole or not at all; then the slice's days without rows are deleted
(listed after the PUTs, like the local path after its moves, so a day another writer added meanwhile
goes too). At every moment each partition key holds its previous or its new file, whole, and a listing
shows at most one file per day, so `**/*.parquet` globs never count a day twice. A write that fails
midway (a refused or lost PUT) leaves each partition old or new, not the slice as a whole: the error
says how many PUTs failed, and running the write again (writes are idempotent) completes it. A day
whose stored file already has the new bytes (ETag = MD5 of a single PUT) is not sent again, so
re-running unchanged data replaces nothing and disturbs no reader.

Why one fixed key, not a new name per write plus a pointer object: glob readers (the analysts'
DuckDB and pyarrow) would then see the old and the new file of a day together, or a dead writer's
file for good, and double-count the day.

Reads: our read() fetches each file whole in one GET (one response is one version), so it sees each
day old or new even while a write replaces it. Readers that list, then fetch a file in several range
requests (pyarrow's S3FileSystem, DuckDB over s3fs) can fail when a day is replaced or deleted between
their requests (s3fs pins the ETag and raises FileExpired; pyarrow reports a corrupt footer or page);
test_parquet_s3 measures that and has never seen one return a mixed day, but pyarrow does not pin
versions, so that is measured, not guaranteed.

Crash debris: a killed writer leaves nothing, as an interrupted PUT stores no object and no write
uses multipart uploads. The listing after the PUTs also removes stale temp files that writers before
this scheme left (staging.py decides which are stale). Errors name the root without credentials and
with the fix, and never carry a key or secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_puller_dagster.io.destinations.s3_objects import S3Objects
from data_puller_dagster.io.destinations.staging import is_stale_temp
from data_puller_dagster.io.frames import redact_url
from data_puller_dagster.io.tables import PartitionSlice

Key = tuple[str, date]  # (symbol key, UTC day)


class S3Lake:
    """The slice-level operations of one `s3://` Parquet root."""

    def __init__(
        self,
        objects: S3Objects,
        root: str,
        secrets: list[str],
        *,
        symbol_dir: str,
        date_dir: str,
        file_name: str,
    ):
        self.objects = objects
        self.root = redact_url(root)
        self._secrets = [s for s in secrets if len(s) >= 6]  # shorter ones would mangle every message
        self.symbol_dir, self.date_dir, self.file_name = symbol_dir, date_dir, file_name

    # ----------------------------------------------------------------------------------- errors
    def error(self, action: str, e: BaseException, hint: str | None = None) -> OSError:
        """`e` with the root, the action and the fix in its message, as an OSError of the same kind
        (PermissionError stays PermissionError), with any configured key or secret scrubbed."""
        name = type(e).__name__
        if hint is None:
            if isinstance(e, PermissionError):
                hint = "check the key id / secret and the bucket's policy for this prefix"
            elif isinstance(e, FileNotFoundError):
                hint = "check that the bucket in the parquet root exists"
            elif "Connect" in name or "Endpoint" in name:
                hint = "check endpoint_url and that the S3 server is reachable"
            elif "Credentials" in name:
                hint = "set the key id and secret, or AWS credentials in the environment"
            else:
                hint = "run the write again (writes are idempotent)"
        message = f"parquet at {self.root}: {action}: {name}: {e}; {hint}"
        for secret in self._secrets:
            message = message.replace(secret, "***")
        cls = type(e) if isinstance(e, OSError) else OSError
        try:
            return cls(message)
        except TypeError:  # an OSError subclass with another constructor
            return OSError(message)

    # ---------------------------------------------------------------------------------- listing
    def slice_objects(
        self, table_dir: str, part: PartitionSlice, stem_ok: Callable[[str], bool]
    ) -> tuple[dict[Key, tuple[str, str]], list[str]]:
        """The slice's partition files ((key, day) -> (path, ETag), in (slice key order, day) order)
        and the stale temp files of writers before this scheme, from one listing per symbol key bounded to the
        slice's days (`date=` keys sort by day, so a year of history costs nothing to a day's read)."""
        prefixes = [f"{table_dir}/{self.symbol_dir}={key}" for key in part.keys]
        first, last = f"{self.date_dir}={part.start.isoformat()}", f"{self.date_dir}={part.end.isoformat()}"
        try:
            listings = self.objects.list_all(prefixes, start_after=first, stop_at=last + "0")
        except Exception as e:
            raise self.error("listing the slice", e) from e
        days = {f"{self.date_dir}={d.isoformat()}": d for d in part.dates}
        files: dict[Key, tuple[str, str]] = {}
        stale: list[str] = []
        for key, prefix, listing in zip(part.keys, prefixes, listings, strict=True):
            found = []
            for path, mtime, etag in listing:
                rel = path.removeprefix(prefix.strip("/") + "/").split("/")
                if len(rel) != 2 or rel[0] not in days:
                    continue
                if rel[1] == self.file_name:
                    found.append((days[rel[0]], (path, etag)))
                elif is_stale_temp(rel[1], stem_ok, mtime):
                    stale.append(path)
            files.update({(key, day): path for day, path in sorted(found)})
        return files, stale

    def stale_in(self, directory: str, stem_ok: Callable[[str], bool]) -> list[str]:
        """Stale temp files directly in `directory` (one listing, no recursion)."""
        try:
            listing = self.objects.list_flat(directory)
        except Exception as e:
            raise self.error("listing the table directory", e) from e
        return [p for p, mtime, _ in listing if is_stale_temp(p.rsplit("/", 1)[-1], stem_ok, mtime)]

    # ---------------------------------------------------------------------------------- writing
    def replace(
        self,
        table_dir: str,
        part: PartitionSlice,
        blobs: list[tuple[str, bytes]],
        written: set[Key],
        stem_ok: Callable[[str], bool],
    ) -> dict[str, Any]:
        """Make the slice hold exactly `blobs` (complete day files at their keys; `written` are their
        (key, day)s): PUT the changed ones, then delete the slice's other days and stale temp files."""
        before, _ = self.slice_objects(table_dir, part, stem_ok)
        etags = dict(before.values())
        changed = [(p, b) for p, b in blobs if etags.get(p) != hashlib.md5(b).hexdigest()]  # noqa: S324
        self.put(changed, "partition file")
        stored, stale = self.slice_objects(table_dir, part, stem_ok)
        emptied = [path for kd, (path, _) in stored.items() if kd not in written]
        self.delete(emptied + stale, "emptied partition or stale temp file")
        return {
            "files": len(changed),
            "unchanged_files": len(blobs) - len(changed),
            "emptied_partitions": len(emptied),
            "stale_temp_removed": len(stale),
        }

    def put(self, blobs: list[tuple[str, bytes]], what: str) -> None:
        """PUT every complete file (one request each); on failure, say which partitions hold what."""
        try:
            failed = self.objects.put_all(blobs)
        except Exception as e:  # the loop itself failed: nothing is known to be half done per key
            raise self.error(f"writing {len(blobs)} {what}(s)", e) from e
        if failed and len(blobs) == 1:
            path, e = failed[0]
            raise self.error(f"PUT of s3://{path} failed (its previous version stays)", e) from e
        if failed:
            path, e = failed[0]
            raise self.error(
                f"{len(failed)} of {len(blobs)} {what} PUT(s) failed (first s3://{path}): those keep "
                f"their previous version, the other {len(blobs) - len(failed)} hold the new one",
                e,
            ) from e

    def delete(self, paths: list[str], what: str) -> None:
        if not paths:
            return
        try:
            self.objects.delete(paths)
        except Exception as e:
            raise self.error(f"deleting {len(paths)} {what}(s)", e) from e

    # ---------------------------------------------------------------------------------- reading
    def get(self, path: str) -> bytes | None:
        try:
            return self.objects.get(path)
        except Exception as e:
            raise self.error(f"reading s3://{path}", e) from e

    def read_tables(self, paths: list[str], schema: pa.Schema, columns: list[str]) -> pa.Table | None:
        """The files' rows in the table's schema, each file fetched whole in one GET (concurrently), so
        each partition is one version even while a write replaces it; a file deleted since the
        listing (its day was emptied) is skipped. None when no file is left."""
        try:
            blobs = self.objects.get_all(paths)
        except Exception as e:
            raise self.error(f"reading {len(paths)} partition file(s)", e) from e
        target = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
        tables = [
            pq.ParquetFile(pa.BufferReader(b)).read(columns=columns, use_threads=False).cast(target)
            for b in blobs.values()
            if b is not None
        ]
        return pa.concat_tables(tables) if tables else None
