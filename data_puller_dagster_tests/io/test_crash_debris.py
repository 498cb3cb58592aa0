"""Crash debris of staged writes. A writer killed with SIGKILL mid-write leaves dot-prefixed temp files
(`.part-0.parquet.<token>.tmp`) that readers skip; the next write of those partitions must remove them,
so repeated crashes never accumulate files, yet it must never remove the temp file of a writer that is
still alive (another process, another thread, or a process on another machine sharing the lake).

The writers run in real subprocesses through the real ParquetDestination / CSVDestination and are
killed with `kill -9` while their temp files exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from data_puller_dagster.io.destinations import staging
from data_puller_dagster.io.destinations.files_store import DTYPES_FILE, CSVDestination
from data_puller_dagster.io.destinations.parquet_store import FILE_NAME, SCHEMA_FILE, ParquetDestination
from data_puller_dagster.io.tables import PartitionSlice, TableRef
from data_puller_dagster_tests.io.conftest import candles, sort_rows

TABLE = TableRef("forex", "normalized_ohlcv_1h", "normalized", "forex", "1h", ("symbol", "ts"))
SYMBOLS = {"AUDUSD": "AUD/USD", "EURUSD": "EUR/USD", "GBPUSD": "GBP/USD", "USDJPY": "USD/JPY"}
START, DAYS = date(2024, 1, 1), 60
PART = PartitionSlice(SYMBOLS, START, START + timedelta(days=DAYS - 1))
ROOT = Path(__file__).parents[2]

# The writer process: imports, waits for a line on stdin (so the test can start every writer up front and
# overlap their imports), then does one real write of the whole slice (~170 day files) and is killed while
# it stages them. One staging thread keeps that window long without slowing the store down artificially.
WRITER = """
import sys
from data_puller_dagster.io.destinations import parquet_store
from data_puller_dagster.io.destinations.files_store import CSVDestination
from data_puller_dagster_tests.io.test_crash_debris import PART, TABLE, frame
parquet_store.WRITE_THREADS = 1
cls = {"parquet": parquet_store.ParquetDestination, "csv": CSVDestination}[sys.argv[1]]
df = frame(int(sys.argv[3]))
sys.stdin.readline()
cls(sys.argv[2]).write(TABLE, df, PART)
"""


def frame(offset: int) -> pd.DataFrame:
    """Real hourly candles for every symbol of the slice; another offset gives other values and gaps."""
    return pd.concat(
        [candles(s, START, DAYS, seed_offset=offset + 5 * i) for i, s in enumerate(SYMBOLS.values())],
        ignore_index=True,
    )


def destination(kind: str, root: Path) -> ParquetDestination | CSVDestination:
    return ParquetDestination(str(root)) if kind == "parquet" else CSVDestination(root)


def temps(table_dir: Path) -> list[Path]:
    return sorted(table_dir.rglob(".*.tmp"))


def files(table_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(table_dir)) for p in table_dir.rglob("*") if p.is_file())


def start_writer(kind: str, root: Path, offset: int) -> subprocess.Popen:
    """A writer process, ready to write once `go(proc)` is called."""
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, kind, str(root), str(offset)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def go(proc: subprocess.Popen) -> None:
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def wait_for_temps(table_dir: Path, proc: subprocess.Popen) -> None:
    """Return as soon as the writer has a partition temp file on disk (it is then mid-staging)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(p.name.startswith(".") and not p.name.startswith(f".{SCHEMA_FILE}") for p in temps(table_dir)):
            return
        if proc.poll() is not None:
            pytest.fail(f"writer exited ({proc.returncode}) before staging: {proc.stderr.read().decode()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail("writer never staged a temp file")


def wait_until_zombie(pid: int) -> None:
    """A SIGKILLed child stays a zombie until its parent reaps it: its pid still exists meanwhile."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rindex(")") + 2] == "Z":
            return
        time.sleep(0.005)
    pytest.fail(f"killed writer {pid} never became a zombie")


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(sort_rows(got), sort_rows(want), check_exact=True)


@pytest.mark.parametrize(("kind", "cycles"), [("parquet", 3), ("csv", 2)])
def test_killed_writer_debris_is_removed_by_next_write_and_never_accumulates(
    tmp_path: Path, kind: str, cycles: int
) -> None:
    root = tmp_path / "lake"
    dest = destination(kind, root)
    table_dir = Path(dest.table_dir(TABLE))
    meta_file = SCHEMA_FILE if kind == "parquet" else DTYPES_FILE
    writers = [start_writer(kind, root, offset=10 + cycle) for cycle in range(cycles)]
    for cycle, proc in enumerate(writers):
        go(proc)
        wait_for_temps(table_dir, proc)
        os.kill(proc.pid, signal.SIGKILL)
        # Cycle 1 writes again while the killed writer is an unreaped zombie (its pid still exists);
        # the others after its parent reaped it, as a Dagster run worker does.
        if cycle == 1:
            wait_until_zombie(proc.pid)
        else:
            assert proc.wait(20) == -signal.SIGKILL
        debris = temps(table_dir)
        assert debris, "the killed writer left no temp file: it was not killed mid-write"

        want = frame(cycle)
        dest.write(TABLE, want, PART)
        if cycle == 1:
            assert proc.wait(20) == -signal.SIGKILL
        assert temps(table_dir) == [], f"cycle {cycle}: crash debris survived the next write"
        assert_same(dest.read(TABLE, PART), want)
        # Exactly one file per partition with rows plus the schema (dtypes) file: nothing accumulates.
        days = want.groupby([want["symbol"].str.replace("/", ""), want["ts"].dt.date]).size().index
        expected = [Path(dest.partition_file(TABLE, key, day)).relative_to(table_dir) for key, day in days]
        assert files(table_dir) == sorted([*map(str, expected), meta_file])


def test_live_writer_temp_files_survive_another_write(tmp_path: Path) -> None:
    """A writer frozen mid-staging (SIGSTOP: alive, pid exists) keeps its temp files while another
    process writes the same partitions; resumed, it completes and its rows win (it moved last)."""
    root = tmp_path / "lake"
    dest = ParquetDestination(str(root))
    table_dir = Path(dest.table_dir(TABLE))
    proc = start_writer("parquet", root, offset=7)
    try:
        go(proc)
        wait_for_temps(table_dir, proc)
        os.kill(proc.pid, signal.SIGSTOP)
        frozen = temps(table_dir)
        dest.write(TABLE, frame(1), PART)
        missing = [p for p in frozen if not p.exists()]
        assert missing == [], "a live writer's temp files were removed mid-flight"
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert proc.wait(60) == 0, proc.stderr.read().decode()
    assert temps(table_dir) == []
    assert_same(dest.read(TABLE, PART), frame(7))


def _dead_pid() -> str:
    """`<pid>-<start ticks>` of a writer that has exited and been reaped (a reused pid has other ticks)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    stat = Path(f"/proc/{proc.pid}/stat").read_text()
    start = stat[stat.rindex(")") + 2 :].split()[19]
    proc.communicate(b"")
    return f"{proc.pid}-{start}"


def _token(*, namespace: str | None = None, pid: int | str | None = None, age: float = 0.0) -> str:
    """A staging token like a real writer's, optionally from another machine, pid or time."""
    ns, own_pid, start, stamp, rand = staging.staging_token().split("-")
    writer = f"{own_pid}-{start}" if pid is None else str(pid) if isinstance(pid, str) else f"{pid}-0"
    return "-".join([namespace or ns, writer, str(int(stamp) - int(age)), rand])


def test_which_temp_files_a_write_removes(tmp_path: Path) -> None:
    """Dead local writer: removed at once. Another machine's writer (pid cannot be checked): kept while
    younger than STALE_TEMP_AFTER, removed after. Pre-token names: judged by their mtime. Files that are
    not this store's temp files are never touched."""
    dest = ParquetDestination(str(tmp_path / "lake"))
    part = PartitionSlice({"EURUSD": "EUR/USD"}, START, START)
    df = candles("EUR/USD", START, 1)
    dest.write(TABLE, df, part)
    pdir = Path(dest.partition_file(TABLE, "EURUSD", START)).parent
    tdir = Path(dest.table_dir(TABLE))
    old = time.time() - staging.STALE_TEMP_AFTER - 60

    def make(directory: Path, stem: str, token: str, mtime: float | None = None) -> Path:
        p = directory / f".{stem}.{token}.tmp"
        p.write_bytes(b"half a file")
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        return p

    removed = [
        make(pdir, FILE_NAME, _token(pid=_dead_pid())),
        make(
            pdir, FILE_NAME, _token(namespace="0badc0de", pid=4242, age=staging.STALE_TEMP_AFTER + 60)
        ),
        make(pdir, FILE_NAME, "0123456789ab", mtime=old),  # written before tokens named their writer
    ]
    kept = [
        make(pdir, FILE_NAME, _token()),  # this very process: alive
        make(pdir, FILE_NAME, _token(namespace="0badc0de", pid=4242)),  # another machine, fresh
        make(pdir, FILE_NAME, "fedcba987654"),  # pre-token name, fresh mtime
        make(pdir, "notes.txt", _token(pid=_dead_pid())),  # not a partition temp file
        pdir / ".keep.me",
    ]
    kept[-1].write_text("a user's file")
    info = dest.write(TABLE, df, part)
    assert info["stale_temp_removed"] == len(removed)
    assert [p for p in removed if p.exists()] == []
    assert [p for p in kept if not p.exists()] == []

    # The schema file's temp files are swept when the schema is written (here: a dtype flavour change).
    schema_debris = make(tdir, SCHEMA_FILE, _token(pid=_dead_pid()))
    dest.write(TABLE, df.assign(source=df["source"].astype(object)), part)
    assert not schema_debris.exists()
    assert_same(dest.read(TABLE, part), df.assign(source=df["source"].astype(object)))


def test_csv_dtypes_temp_of_dead_writer_is_removed(tmp_path: Path) -> None:
    dest = CSVDestination(tmp_path / "csv")
    part = PartitionSlice({"EURUSD": "EUR/USD"}, START, START)
    df = candles("EUR/USD", START, 1)
    dest.write(TABLE, df, part)
    debris = dest.table_dir(TABLE) / f"._dtypes.json.{_token(pid=_dead_pid())}.tmp"
    debris.write_text("{")
    dest.write(TABLE, df.assign(source=df["source"].astype(object)), part)
    assert not debris.exists()


def test_object_store_root_sweeps_dead_writer_temps(tmp_path: Path) -> None:
    """The same sweep through fsspec (memory:// standing in for s3://): a dead writer's temp file goes,
    another machine's fresh one stays."""
    import fsspec

    dest = ParquetDestination(f"memory://lake_{tmp_path.name}")
    mem = fsspec.filesystem("memory")
    part = PartitionSlice({"EURUSD": "EUR/USD"}, START, START)
    df = candles("EUR/USD", START, 1)
    try:
        dest.write(TABLE, df, part)
        pdir = dest.partition_file(TABLE, "EURUSD", START).rsplit("/", 1)[0]
        dead = f"{pdir}/.{FILE_NAME}.{_token(pid=_dead_pid())}.tmp"
        foreign = f"{pdir}/.{FILE_NAME}.{_token(namespace='0badc0de', pid=4242)}.tmp"
        mem.pipe(dead, b"half a file")
        mem.pipe(foreign, b"in flight elsewhere")
        info = dest.write(TABLE, df, part)
        assert info["stale_temp_removed"] == 1
        assert not mem.exists(dead) and mem.exists(foreign)
        assert_same(dest.read(TABLE, part), df)
    finally:
        mem.rm(f"/lake_{tmp_path.name}", recursive=True)
