"""The S3 requests of the Parquet destination: whole-object PUTs, GETs, listings and batch deletes.

Why a module of its own, and why raw S3 calls instead of file handles: the Parquet destination's
atomicity on S3 rests on exactly which requests it sends. Every object is serialized completely in
memory first and then sent in ONE PutObject (S3 makes an object visible only when its PUT has been
received whole, so readers see the old object or the new one, never part of one); every object is
read back in ONE GetObject (one response is one version), so our own reads cannot tear either. A
file-handle API (s3fs/pyarrow output streams) may switch to a multipart upload or flush a half-written
file when an exception closes it, and a reader's range requests may span two versions.

The requests go through s3fs's client (`_call_s3`: its credentials chain, retries of throttling and
5xx, and translation of S3 error codes into OSError subclasses), run concurrently on its event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from fsspec.asyn import sync

# Requests in flight at once per call (PUTs, GETs, listings). Day files are small, so a write is
# latency-bound: concurrency, not bandwidth, sets its speed.
CONCURRENCY = 16
# A single PutObject takes up to 5 GiB; a Parquet day file is kilobytes to a few MiB.
MAX_SINGLE_PUT = 5 * 2**30
# Client defaults (each one can be overridden in storage_options["config_kwargs"]): an unreachable
# endpoint fails in seconds (not botocore's 60 s connect timeout, retried at two layers: ~8 s even for
# a refused connection); throttling, 5xx and dropped connections are still retried with backoff.
DEFAULT_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 30,
    "retries": {"max_attempts": 3, "mode": "standard"},
}

Listed = tuple[str, float | None, str]  # (bucket/key, mtime in unix seconds, ETag without quotes)


def s3_storage_options(
    endpoint_url: str | None = None,
    key_id: str | None = None,
    secret: str | None = None,
    region: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The `storage_options` of an `s3://` Parquet root from its parts (None: s3fs's default, i.e. the
    AWS credential chain and region). `extra` goes to s3fs verbatim (e.g. `config_kwargs`)."""
    opts: dict[str, Any] = dict(extra)
    if endpoint_url:
        opts["endpoint_url"] = endpoint_url
    if key_id is not None:
        opts["key"] = key_id
    if secret is not None:
        opts["secret"] = secret
    if region:
        opts["client_kwargs"] = {**opts.get("client_kwargs", {}), "region_name": region}
    return opts


def with_defaults(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """s3fs options with our defaults: no listings cache (another process may have written since the
    last listing; a stale one would miss or resurrect partitions) and short connect timeouts."""
    opts = dict(storage_options or {})
    opts.setdefault("use_listings_cache", False)
    opts["config_kwargs"] = {**DEFAULT_CONFIG, **opts.get("config_kwargs", {})}
    return opts


def _error_code(e: BaseException) -> str | None:
    """The S3 error code behind an exception s3fs translated (its cause is botocore's ClientError)."""
    response = getattr(e.__cause__, "response", None) or getattr(e, "response", None)
    return (response or {}).get("Error", {}).get("Code")


def is_s3(fs: Any) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocols


class S3Objects:
    """Whole-object requests on one s3fs filesystem. Paths are `bucket/key` (no scheme)."""

    def __init__(self, fs: Any):
        self.fs = fs

    def _run(self, coro_fn: Any, *args: Any) -> Any:
        return sync(self.fs.loop, coro_fn, *args)

    async def _bounded(self, coros: Iterable[Any]) -> list[Any]:
        """Run every coroutine (at most CONCURRENCY at once) and return results or exceptions: every
        request has finished when this returns, so nothing of a failed call lands afterwards."""
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(coro: Any) -> Any:
            async with gate:
                return await coro

        return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)

    # -------------------------------------------------------------------------------------- PUT
    async def _put(self, path: str, data: bytes) -> None:
        if len(data) >= MAX_SINGLE_PUT:  # pragma: no cover - a day file is never 5 GiB
            raise ValueError(f"{path}: {len(data)} bytes is beyond one S3 PUT (5 GiB)")
        bucket, key, _ = self.fs.split_path(path)
        await self.fs._call_s3("put_object", Bucket=bucket, Key=key, Body=data)

    def put_all(self, items: list[tuple[str, bytes]]) -> list[tuple[str, BaseException]]:
        """PUT every object (one request each, concurrently); return the (path, error) of those that
        failed. All are attempted even after one failed, so each key holds its old or its new object."""
        results = self._run(self._bounded, [self._put(p, d) for p, d in items])
        return [(p, r) for (p, _), r in zip(items, results, strict=True) if isinstance(r, BaseException)]

    # -------------------------------------------------------------------------------------- GET
    async def _get(self, path: str) -> bytes | None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError as e:
            if _error_code(e) == "NoSuchBucket":  # a wrong root must not read as an empty table
                raise
            return None
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    def get(self, path: str) -> bytes | None:
        """The whole object in one GET; None when there is none."""
        return self._run(self._get, path)

    def get_all(self, paths: list[str]) -> dict[str, bytes | None]:
        """Every object in one GET each, concurrently (None: deleted since it was listed)."""
        results = self._run(self._bounded, [self._get(p) for p in paths])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return dict(zip(paths, results, strict=True))

    # ------------------------------------------------------------------------------------- LIST
    async def _list(
        self, prefix: str, start_after: str | None, stop_at: str | None, flat: bool = False
    ) -> list[Listed]:
        """(path, mtime, ETag) of the objects under `prefix`/ whose rest is > `start_after` and <
        `stop_at` (S3 lists in key order, so paging stops at the first key past `stop_at`)."""
        bucket, key, _ = self.fs.split_path(prefix)
        base = key.rstrip("/") + "/"
        out: list[Listed] = []
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": base}
        if start_after:
            kwargs["StartAfter"] = base + start_after
        if flat:
            kwargs["Delimiter"] = "/"
        while True:
            page = await self.fs._call_s3("list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                if stop_at is not None and obj["Key"] >= base + stop_at:
                    return out
                modified = obj.get("LastModified")
                etag = str(obj.get("ETag", "")).strip('"')
                out.append((f"{bucket}/{obj['Key']}", modified.timestamp() if modified else None, etag))
            if not page.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list_all(
        self, prefixes: list[str], start_after: str | None = None, stop_at: str | None = None
    ) -> list[list[Listed]]:
        """(path, mtime, ETag) of every object under each prefix, recursively, between the bounds (one
        paginated listing per prefix, concurrently)."""
        results = self._run(self._bounded, [self._list(p, start_after, stop_at) for p in prefixes])
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results

    def list_flat(self, prefix: str) -> list[Listed]:
        """(path, mtime, ETag) of the objects directly under `prefix` (not below a further `/`)."""
        return self._run(self._list, prefix, None, None, True)

    # ----------------------------------------------------------------------------------- DELETE
    async def _delete_batch(self, bucket: str, keys: list[str]) -> None:
        out = await self.fs._call_s3(
            "delete_objects", Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
        )
        if out.get("Errors"):  # s3fs's own bulk delete ignores these; a kept "emptied" day is wrong
            first = out["Errors"][0]
            raise PermissionError(
                f"S3 refused to delete {len(out['Errors'])} object(s), first {bucket}/{first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message')}"
            )

    def delete(self, paths: list[str]) -> None:
        """Delete the objects (DeleteObjects, 1000 keys a request). Deleting a missing key is no error."""
        by_bucket: dict[str, list[str]] = {}
        for p in paths:
            bucket, key, _ = self.fs.split_path(p)
            by_bucket.setdefault(bucket, []).append(key)
        batches = [
            (b, keys[i : i + 1000]) for b, keys in by_bucket.items() for i in range(0, len(keys), 1000)
        ]
        results = self._run(self._bounded, [self._delete_batch(b, k) for b, k in batches])
        for r in results:
            if isinstance(r, BaseException):
                raise r
