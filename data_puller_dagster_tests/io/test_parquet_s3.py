"""The Parquet lake on a real S3 server (moto's, started by servers/s3.py): what is stored, the
analysts' readers (the README snippets, run verbatim), a writer killed midway, readers racing a
rewrite, and credentials kept out of errors and metadata."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io import test_crash_debris as crash
from data_puller_dagster_tests.io.conftest import candles, sort_rows

TABLE = TableRef("forex", "ohlcv_1h", "derived", "forex", "1h", ("symbol", "ts"))
PAIRS = {"EURUSD": "EUR/USD", "GBPUSD": "GBP/USD"}
D1, D4 = date(2024, 1, 1), date(2024, 1, 4)
ROOT = Path(__file__).parents[2]


def frame(offset: int, days: int = 4, start: date = D1) -> pd.DataFrame:
    return pd.concat(
        [candles(s, start, days, seed_offset=offset + 3 * i) for i, s in enumerate(PAIRS.values())],
        ignore_index=True,
    )


def day_keys(df: pd.DataFrame, table: TableRef = TABLE) -> set[str]:
    """The object keys (below the bucket) of the day files holding `df`'s rows."""
    days = df.groupby([df["symbol"].str.replace("/", ""), df["ts"].dt.date]).size().index
    return {
        f"lake/{table.feed}/{table.name}/symbol_key={k}/date={d.isoformat()}/part-0.parquet" for k, d in days
    }


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(sort_rows(got), sort_rows(want), check_exact=True)


def test_one_object_per_day_plus_the_schema_and_nothing_else(s3_server, s3_bucket, tmp_path: Path) -> None:
    dest = ParquetDestination(f"s3://{s3_bucket}/lake", storage_options=s3_server.storage_options())
    part = PartitionSlice(PAIRS, D1, D4)
    df = frame(0)
    md = dest.write(TABLE, df, part)
    schema_key = f"lake/{TABLE.feed}/{TABLE.name}/_common_metadata"
    first = s3_server.keys(s3_bucket)
    assert set(first) == day_keys(df) | {schema_key}
    assert md["files"] == len(day_keys(df)) and md["location"] == f"s3://{s3_bucket}/lake/forex/ohlcv_1h"
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert dest.glob(TABLE) == f"s3://{s3_bucket}/lake/forex/ohlcv_1h/**/*.parquet"

    # Each object is byte-identical to the local path's file: one encoder, whatever the store.
    local = ParquetDestination(str(tmp_path / "lake"))
    local.write(TABLE, df, part)
    for key, etag in first.items():
        if key != schema_key:
            local_bytes = (tmp_path / key).read_bytes()
            assert etag.strip('"') == hashlib.md5(local_bytes).hexdigest(), key  # noqa: S324 - S3's ETag

    # Rewrite EURUSD's days 2..3 with other rows and none on day 3: day 3's object goes, GBPUSD and
    # EURUSD's other days are not touched (same ETag), nothing else appears.
    sub = PartitionSlice({"EURUSD": "EUR/USD"}, date(2024, 1, 2), date(2024, 1, 3))
    new = candles("EUR/USD", date(2024, 1, 2), 1, seed_offset=40)
    md = dest.write(TABLE, new, sub)
    after = s3_server.keys(s3_bucket)
    gone = "lake/forex/ohlcv_1h/symbol_key=EURUSD/date=2024-01-03/part-0.parquet"
    changed = "lake/forex/ohlcv_1h/symbol_key=EURUSD/date=2024-01-02/part-0.parquet"
    assert md["emptied_partitions"] == 1 and gone not in after
    assert set(after) == set(first) - {gone}
    assert {k for k in after if after[k] != first[k]} == {changed}
    inside = (df["symbol"] == "EUR/USD") & (df["ts"] >= sub.start_ts) & (df["ts"] < sub.end_ts)
    assert_same(dest.read(TABLE, part), pd.concat([df[~inside], new]))


# The README's analyst snippets for S3 (section "Parquet on S3"), taken from the README itself: the
# python block after the line "Reading the lake on S3", with the test's own ENDPOINT/KEY/SECRET/LAKE.
README = Path(__file__).parents[2] / "README.md"


def readme_snippets() -> str:
    text = README.read_text()
    block = text[text.index("Reading the lake on S3") :]
    block = block[block.index("```python\n") + len("```python\n") :]
    code = block[: block.index("```")]
    return code[code.index("import pyarrow.dataset") :]  # after the preamble that sets the four names


def test_readme_snippets_read_the_s3_lake(s3_server, s3_bucket) -> None:
    dest = ParquetDestination(f"s3://{s3_bucket}/lake", storage_options=s3_server.storage_options())
    df = frame(0)
    dest.write(TABLE, df, PartitionSlice(PAIRS, D1, D4))
    ns = {"ENDPOINT": s3_server.endpoint, "KEY": s3_server.key_id, "SECRET": s3_server.secret}
    ns["LAKE"] = f"s3://{s3_bucket}/lake"
    exec(readme_snippets(), ns)  # noqa: S102 - the README's own text

    eur = df[df["symbol"] == "EUR/USD"]
    recent = eur[eur["ts"] >= pd.Timestamp("2024-01-02", tz="UTC")]
    table = ns["table"].to_pandas()
    assert set(table["symbol"]) == {"EUR/USD"} and len(table) == len(recent) > 0
    assert table["close"].sum() == recent["close"].sum()
    duck = ns["recent"]
    assert list(duck["close"]) == list(recent.sort_values("ts")["close"])
    assert set(duck["symbol"]) == {"EUR/USD"} and set(duck["symbol_key"]) == {"EURUSD"}
    pdf = ns["df"]
    assert set(pdf["symbol"]) == {"EUR/USD"} and len(pdf) == len(eur)
    assert str(pdf["ts"].dtype) == "datetime64[ns, UTC]" and str(pdf["trades"].dtype) == "Int64"


# A writer process: reads its storage options as one JSON line on stdin (the go signal), then writes
# the crash suite's slice (4 symbols x 60 days, ~200 day files) with one PUT in flight at a time, so
# the test can kill it between two PUTs without slowing the store down artificially.
WRITER = """
import json, sys
from data_puller_dagster.io.destinations import s3_objects
from data_puller_dagster.io.destinations.parquet_store import ParquetDestination
from data_puller_dagster_tests.io.test_crash_debris import PART, TABLE, frame
s3_objects.CONCURRENCY = 1
df = frame(int(sys.argv[2]))
options = json.loads(sys.stdin.readline())
ParquetDestination(sys.argv[1], storage_options=options).write(TABLE, df, PART)
"""


def _local_md5s(tmp_path: Path, df: pd.DataFrame, name: str) -> dict[str, str]:
    """key below the bucket -> MD5 of the day file the store writes for `df` (via the local path)."""
    local = ParquetDestination(str(tmp_path / name / "lake"))
    local.write(crash.TABLE, df, crash.PART)
    base = tmp_path / name
    return {
        str(p.relative_to(base)): hashlib.md5(p.read_bytes()).hexdigest()  # noqa: S324 - S3's ETag
        for p in base.rglob("part-0.parquet")
    }


def test_killed_writer_leaves_each_day_whole_and_no_debris(s3_server, s3_bucket, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/lake"
    dest = ParquetDestination(root, storage_options=s3_server.storage_options())
    old, new, third = crash.frame(1), crash.frame(2), crash.frame(3)
    dest.write(crash.TABLE, old, crash.PART)
    old_md5, new_md5 = _local_md5s(tmp_path, old, "old"), _local_md5s(tmp_path, new, "new")
    before = s3_server.keys(s3_bucket)

    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, root, "2"], cwd=ROOT, stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdin.write((json.dumps(s3_server.storage_options()) + "\n").encode())
    proc.stdin.flush()
    deadline = time.monotonic() + 120
    while True:  # kill it as soon as one day file was replaced
        now = s3_server.keys(s3_bucket)
        if any(now.get(k) != e for k, e in before.items()) or set(now) - set(before):
            os.kill(proc.pid, signal.SIGKILL)
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"writer ended ({proc.returncode}) before replacing a file: {proc.stderr.read()!r}")
        time.sleep(0.005)
    assert proc.wait(20) == -signal.SIGKILL

    after = s3_server.keys(s3_bucket)
    schema_key = f"lake/{crash.TABLE.feed}/{crash.TABLE.name}/_common_metadata"
    days = {k: e.strip('"') for k, e in after.items() if k != schema_key}
    # No debris: every object is a day file of the old or the new version (or the schema) ...
    assert set(days) <= set(old_md5) | set(new_md5)
    assert s3_server.client().list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    # ... and each is whole: byte for byte the old version's file or the new one's.
    version = {
        k: "new" if e == new_md5.get(k) else "old" if e == old_md5.get(k) else "torn" for k, e in days.items()
    }
    assert "torn" not in version.values()
    assert 0 < list(version.values()).count("new") < len(new_md5), "not killed midway"
    # read() sees exactly that mix; the next write replaces all of it and leaves only its own days.
    parts = []
    for name, df in (("old", old), ("new", new)):
        rows_key = df["symbol"].str.replace("/", "").map(lambda k: f"symbol_key={k}/date=")
        rows_key = rows_key + df["ts"].dt.date.astype(str)
        mine = {key.split("/", 3)[3].rsplit("/", 1)[0] for key, v in version.items() if v == name}
        parts.append(df[rows_key.isin(mine)])
    assert_same(dest.read(crash.TABLE, crash.PART), pd.concat(parts))
    dest.write(crash.TABLE, third, crash.PART)
    assert set(s3_server.keys(s3_bucket)) == day_keys(third, crash.TABLE) | {schema_key}
    assert_same(dest.read(crash.TABLE, crash.PART), third)


def _fingerprints(df: pd.DataFrame) -> dict[tuple[str, str], tuple]:
    """(symbol, day) -> the partition's (ts, close) values, in ts order: equal only for the same rows."""
    df = df.assign(ts=pd.to_datetime(df["ts"], utc=True).dt.as_unit("ns")).sort_values(["symbol", "ts"])
    day = df["ts"].dt.strftime("%Y-%m-%d")
    return {
        (str(s), d): tuple(zip(g["ts"].astype("int64"), g["close"], strict=True))
        for (s, d), g in df.groupby([df["symbol"].astype(str), day], sort=False)
    }


REWRITES, PAUSE = 8, 0.5  # seconds between rewrites: readers get quiet windows as well as overlaps


def test_readers_racing_rewrites_see_each_day_old_or_new(s3_server, s3_bucket) -> None:
    """A writer flips the slice between two versions (whose day sets differ, so days also vanish and
    reappear) while three readers read it in a loop: ours, pyarrow's S3FileSystem dataset and DuckDB's
    glob over s3fs. No reader ever gets a day that is neither version's (or absent where that version
    has none), and read() never fails. The analysts' readers list, then fetch each file in several
    range requests: a day replaced or deleted in between makes their query fail (counted, printed)."""
    import duckdb
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    import s3fs

    root = f"s3://{s3_bucket}/lake"
    dest = ParquetDestination(root, storage_options=s3_server.storage_options())
    part = PartitionSlice(PAIRS, D1, D4)
    versions = [frame(0), frame(20)]
    fps = [_fingerprints(v) for v in versions]
    assert set(fps[0]) != set(fps[1])  # some day exists in one version only
    dest.write(TABLE, versions[0], part)

    arrow_fs = pafs.S3FileSystem(
        endpoint_override=s3_server.host_port,
        scheme="http",
        access_key=s3_server.key_id,
        secret_key=s3_server.secret,
        region="us-east-1",
    )
    con = duckdb.connect()
    con.register_filesystem(
        s3fs.S3FileSystem(
            endpoint_url=s3_server.endpoint,
            key=s3_server.key_id,
            secret=s3_server.secret,
            use_listings_cache=False,
        )
    )
    query = "SELECT ts, symbol, close FROM read_parquet(?, hive_partitioning=true)"
    readers = {
        "read()": lambda: dest.read(TABLE, part),
        "pyarrow": lambda: ds.dataset(f"{s3_bucket}/lake/forex/ohlcv_1h", filesystem=arrow_fs, format="parquet",
                                      partitioning="hive").to_table(columns=["ts", "symbol", "close"]).to_pandas(),
        "duckdb": lambda: con.cursor().execute(query, [dest.glob(TABLE)]).df(),
    }  # fmt: skip
    stop = threading.Event()
    stats: dict[str, dict[str, int]] = {}
    errors: dict[str, Counter] = {name: Counter() for name in readers}

    def loop(name: str) -> None:
        s = stats[name] = {"reads": 0, "failed": 0, "mixed_days": 0, "whole_old": 0, "whole_new": 0}
        while not stop.is_set():
            try:
                got = readers[name]()
            except Exception as e:  # noqa: BLE001 - counted; read() must have none
                s["failed"] += 1
                last = " | ".join(ln for ln in str(e).strip().splitlines() if "^^^" not in ln)[-300:]
                errors[name][f"{type(e).__name__}: {re.sub(r'dp-test-[^ ]+', '<file>', last)[:100]}"] += 1
                continue
            s["reads"] += 1
            seen = _fingerprints(got)
            for key in set(fps[0]) | set(fps[1]) | set(seen):
                if seen.get(key) not in (fps[0].get(key), fps[1].get(key)):
                    s["mixed_days"] += 1
            s["whole_old"] += seen == fps[0]
            s["whole_new"] += seen == fps[1]

    threads = [threading.Thread(target=loop, args=(n,)) for n in readers]
    for t in threads:
        t.start()
    started = time.monotonic()
    try:
        for i in range(REWRITES):
            dest.write(TABLE, versions[(i + 1) % 2], part)
            time.sleep(PAUSE)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print(f"\n{REWRITES} rewrites in {time.monotonic() - started:.1f} s; readers: {stats}")
    print({name: dict(c) for name, c in errors.items()})
    for name, s in stats.items():
        assert s["mixed_days"] == 0, (name, s)
        assert s["reads"] >= 1, (name, s, errors[name])  # else the check above proved nothing
    assert stats["read()"]["failed"] == 0, errors["read()"]
    assert stats["read()"]["whole_old"] > 0 and stats["read()"]["whole_new"] > 0


def test_credentials_stay_out_of_errors_metadata_and_repr(s3_server, s3_bucket) -> None:
    root = f"s3://{s3_bucket}/lake"
    df = candles("EUR/USD", D1, 1)
    part = PartitionSlice({"EURUSD": "EUR/USD"}, D1, D1)
    good = ParquetDestination(root, storage_options=s3_server.storage_options())
    md = good.write(TABLE, df, part)
    assert s3_server.secret not in repr(md) and s3_server.key_id not in repr(md)
    assert s3_server.secret not in repr(good)
    with s3_server.puts_denied(s3_bucket, "nothing/*") as options:
        unknown = ParquetDestination(root, storage_options=s3_server.storage_options())  # no such IAM key
        wrong = ParquetDestination(root, storage_options={**options, "secret": "wrong-" + options["secret"]})
        for dest, secrets in ((unknown, [s3_server.key_id, s3_server.secret]), (wrong, [options["secret"]])):
            for call in (lambda d=dest: d.write(TABLE, df, part), lambda d=dest: d.read(TABLE, part)):
                with pytest.raises(OSError) as info:
                    call()
                text = "".join(map(str, info.traceback)) + str(info.value) + repr(info.value.__cause__)
                assert f"parquet at {root}" in str(info.value)
                assert not [s for s in secrets if s in str(info.value)]
                assert "wrong-" not in text
    assert_same(good.read(TABLE, part), df)


def test_bad_roots_and_unreachable_servers_fail_fast_and_say_what_to_fix(s3_server) -> None:
    with pytest.raises(ValueError, match="names no bucket"):
        ParquetDestination("s3://", storage_options=s3_server.storage_options())
    missing = ParquetDestination("s3://dp-no-such-bucket/lake", storage_options=s3_server.storage_options())
    one_day = PartitionSlice({"EURUSD": "EUR/USD"}, D1, D1)
    for call in (
        lambda: missing.write(TABLE, candles("EUR/USD", D1, 1), one_day),
        lambda: missing.read(TABLE, one_day),
    ):
        with pytest.raises(
            FileNotFoundError, match="bucket does not exist; check that the bucket in the parquet root"
        ):
            call()  # a wrong bucket never reads as an empty table
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    down = ParquetDestination(
        "s3://dp-any/lake",
        storage_options={**s3_server.storage_options(), "endpoint_url": f"http://127.0.0.1:{port}"},
    )
    started = time.monotonic()
    with pytest.raises(OSError, match="check endpoint_url"):
        down.read(TABLE, PartitionSlice({"EURUSD": "EUR/USD"}, D1, D1))
    assert time.monotonic() - started < 30
