"""The Dagster IO manager: turns asset metadata and partition keys into routed writes and reads.

Assets declare what they are with definition metadata (`data_puller/feed`, `data_puller/layer`,
`data_puller/asset_class`, `data_puller/timeframe`, `data_puller/table`, `data_puller/primary_key`;
see assets.naming.table_metadata); the partitions (date x symbol multi-partitions, keys like
`2024-01-05|BTCUSDT`) become a PartitionSlice. Outputs go through the Router to every matching route;
inputs are read from storage.primary in one query for the whole (possibly mapped, multi-day) range,
unless the upstream step of the same run just wrote exactly that slice in this process: then its
frame is handed over in memory (see `_Handoff`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from data_puller_dagster.config import AppConfig
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.frames import partition_of_rows, reads_back_as_is
from data_puller_dagster.io.router import Router, WriteSummary
from data_puller_dagster.io.tables import PartialOutput, PartitionSlice, TableRef
from data_puller_dagster.symbols import check_key

DATE_DIM = "date"
SYMBOL_DIM = "symbol"
_META = "data_puller/"

# Rows per routed write. Why: a store's write holds a copy of its rows besides the frame (the Arrow
# conversion, DuckDB's transaction-local copy and checkpoint: ~160 MB for a year of raw 1m), so a
# year of 1m rows is written as 5 writes of whole days (each still one transaction per store, every
# partition still replaced atomically). The CLI run of a year (raw + normalized) peaked at 553 instead
# of 615 MiB, at no measurable CPU cost; 32k-row pieces were slower and higher (620 MiB: DuckDB's
# checkpoint per write), 64k-row pieces the same as 128k.
WRITE_CHUNK_ROWS = 131_072


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


_LIBC = _load_libc()


def use_system_arrow_pool() -> None:
    """Allocate Arrow buffers with the system allocator (glibc malloc) unless ARROW_DEFAULT_MEMORY_POOL
    chooses one.

    Why: a range run's Arrow buffers are allocated on the page-fetch threads and freed on another;
    mimalloc, Arrow's default, keeps such pages in the allocating threads' heaps, out of reach of
    release_unused. The CLI run of a year of 1m (raw + normalized) peaked 553 instead of 564 MiB
    (medians of 5) with it; the pull, normalize and Parquet benchmarks took the same time with either
    pool. This switches the pool pyarrow's Python API allocates from; Arrow's C++ internals (Parquet
    encoding, dataset scans) keep the default chosen when pyarrow loads, which only the environment
    variable can change (exported before Python starts, ARROW_DEFAULT_MEMORY_POOL=system gave 529 MiB).
    Set on import of this module, i.e. in processes that load the Dagster definitions.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        pa.set_memory_pool(pa.system_memory_pool())


use_system_arrow_pool()


def release_freed_memory() -> None:
    """Give memory that is already freed back to the OS: the Arrow pool's cached pages and the top of
    glibc's heap.

    Why: Arrow's pools keep the pages of freed buffers mapped for reuse. After a year of 1m pages is
    fetched and concatenated, ~125 MB of freed page buffers stayed resident through the raw step's
    writes (the step's memory peak: the Arrow conversion plus DuckDB's copy of the rows), and Parquet
    decoding leaves ~30-60 MB after a read. Called after the fetch, before and after a step's output is
    written and after an input is read: a few milliseconds when there is something to free, ~2 ms
    otherwise; it frees nothing that is in use.
    """
    pool = pa.default_memory_pool()
    pool.release_unused()  # the system pool's is malloc_trim itself
    if _LIBC is not None and pool.backend_name != "system":
        _LIBC.malloc_trim(0)


# Frames that load_input handed to a step and that nothing else holds (no output capture of
# execute_in_process/materialize keeps them): release_input may empty them in place.
_RELEASABLE: weakref.WeakValueDictionary[int, pd.DataFrame] = weakref.WeakValueDictionary()


def owned_input(df: pd.DataFrame) -> bool:
    """Whether `df` is an input this IO manager loaded for the running step alone, which the step may
    therefore empty as it goes (release_input, or `normalize(..., consume_raw=True)`)."""
    return _RELEASABLE.get(id(df)) is df


def release_input(df: pd.DataFrame) -> bool:
    """Drop every column of an input frame in place, so its memory is freed before the step writes.

    Why in place: Dagster keeps a step's input values referenced until the step ends, so `del` in the
    asset frees nothing; the writes (Arrow conversion, DuckDB's copy of the rows) are the step's
    memory peak, and a year of raw 1m rows is ~150 MB. Only frames this IO manager loaded for the
    step are emptied (a frame the caller passed in, or one a run's output capture still holds, is
    left alone); returns whether it was emptied. Call it after the last use of the input.
    """
    if not owned_input(df):
        return False
    del _RELEASABLE[id(df)]
    df.drop(columns=list(df.columns), inplace=True)
    release_freed_memory()
    return True


@dataclass(frozen=True)
class _Handoff:
    """The frame an output was just written from, offered to the step of the same run that reads it.

    Why: with the in-process executor (the default) a range run's raw step writes a year of rows and
    the normalize step, in the same process, read them straight back: Parquet decoding of 366 files
    cost ~0.3 s and ~200 MB of resident memory for 150 MB of data. The frame is offered only when a
    read of the slice would return exactly it (see `frames.reads_back_as_is`): written whole (no
    PartialOutput, no failed route) to a Parquet primary by an unfiltered, untransformed route for all
    symbols. One slot: the next write replaces it and the consumer's load takes it out, so at most one
    frame is held beyond its step, and only while a step of the run still has to read it.
    """

    run_id: str
    step_key: str
    output: str
    table: TableRef
    part: PartitionSlice
    frame: pd.DataFrame
    releasable: bool  # no output capture holds the frame: the consumer may empty it (release_input)


class IOManagerContractError(StorageError, ValueError):
    """An asset handled by the router IO manager lacks the metadata or partitions it needs."""


def table_from_metadata(metadata: Mapping[str, Any], what: str) -> TableRef:
    """Build the TableRef an asset declared in its definition metadata."""

    def get(key: str, required: bool = True) -> str | None:
        raw = metadata.get(_META + key)
        value = getattr(raw, "value", raw)  # MetadataValue or plain str
        if required and not value:
            raise IOManagerContractError(
                f"{what}: definition metadata {_META + key!r} is missing; build the asset's metadata with "
                "assets.naming.table_metadata(feed, layer, timeframe)"
            )
        return None if value in (None, "") else str(value)

    pk = get("primary_key", required=False)
    return TableRef(
        feed=get("feed") or "",
        name=get("table") or "",
        layer=get("layer") or "",
        asset_class=get("asset_class") or "",
        timeframe=get("timeframe", required=False),
        primary_key=tuple(c.strip() for c in pk.split(",")) if pk else None,
    )


def slice_from_keys(
    cfg: AppConfig, feed: str, keys: Sequence[str], what: str, exact: bool = True
) -> PartitionSlice:
    """Collapse `date|symbol` keys into one slice.

    With `exact`, the keys must form a full rectangle (every symbol x every day in the range): a write
    replaces the whole rectangle, so a sparse key set would wipe partitions the run did not produce.
    """
    if not keys:
        raise IOManagerContractError(f"{what}: no partition keys; materialize it for a partition or a range")
    dates: set[str] = set()
    symbol_keys: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for k in keys:
        dims = k.keys_by_dimension if isinstance(k, dg.MultiPartitionKey) else None
        if dims is None:
            d, sep, s = str(k).partition("|")
            if not sep:
                raise IOManagerContractError(
                    f"{what}: partition key {k!r} is not a date|symbol multi-partition key; partition the asset "
                    "with assets.partitions.feed_partitions(feed)"
                )
            dims = {DATE_DIM: d, SYMBOL_DIM: s}
        dates.add(dims[DATE_DIM])
        symbol_keys.add(check_key(dims[SYMBOL_DIM]))
        pairs.add((dims[DATE_DIM], dims[SYMBOL_DIM]))
    days = sorted(date.fromisoformat(d) for d in dates)
    display = cfg.feed(feed).symbol_keys
    unknown = sorted(symbol_keys - set(display))
    if unknown:
        raise IOManagerContractError(
            f"{what}: symbol partition key(s) {unknown} are not symbols of feed {feed!r} ({sorted(display)}); "
            "check the feed's symbols in data_puller.yaml"
        )
    part = PartitionSlice({k: display[k] for k in symbol_keys}, days[0], days[-1])
    if exact and len(pairs) != part.days * len(symbol_keys):
        raise IOManagerContractError(
            f"{what}: the run's {len(pairs)} partitions do not form a full symbols x days range "
            f"({part.describe()}); launch backfills one symbol per run over contiguous dates"
        )
    return part


class RouterIOManager(dg.IOManager):
    """Routes asset outputs through the Router and loads inputs from the primary store."""

    def __init__(self, cfg: AppConfig, router: Router | None = None, write_chunk_rows: int = WRITE_CHUNK_ROWS):
        self.cfg = cfg
        self.router = router or Router(cfg)
        self.write_chunk_rows = write_chunk_rows
        self._handoff: _Handoff | None = None
        # How inputs were served ("memory": handed over, "storage": read), for tests and debugging.
        self.inputs_served: dict[str, int] = {"memory": 0, "storage": 0}

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # assets that write files themselves
            return
        self._handoff = None  # one slot: a new write replaces whatever was offered before
        release_freed_memory()  # what the step freed before its writes (see release_freed_memory)
        keep: frozenset = frozenset()
        if isinstance(obj, PartialOutput):
            keep, obj = obj.keep, obj.frame
        what = f"asset {context.asset_key.to_user_string() if context.has_asset_key else context.name}"
        if not isinstance(obj, pd.DataFrame):
            raise IOManagerContractError(
                f"{what}: returned {type(obj).__name__}; the router stores DataFrames"
            )
        table = table_from_metadata(context.definition_metadata or {}, what)
        if not context.has_asset_partitions:
            raise IOManagerContractError(
                f"{what}: not partitioned; routed tables are partitioned by date x symbol"
            )
        part = slice_from_keys(self.cfg, table.feed, list(context.asset_partition_keys), what)
        summaries = []
        # Only the accepted partitions are replaced, each contiguous run of days on its own; a large
        # frame is written in pieces of whole days (see WRITE_CHUNK_ROWS).
        for sub in part.without(keep) if keep else [part]:
            for piece, piece_part in _pieces(_restrict(obj, sub) if keep else obj, sub, self.write_chunk_rows):
                summaries.append(self.router.write(table, piece, piece_part))
        rows: dict[str, int] = {}
        md: dict[str, Any] = {"slice": dg.MetadataValue.text(part.describe())}
        warnings: list[str] = []
        for summary in summaries:
            for dest, n in summary.rows_by_destination.items():
                rows[dest] = rows.get(dest, 0) + n
            for r in summary.results:
                if r.ok and "location" in r.metadata:
                    md[f"location/{r.route}/{r.destination}"] = dg.MetadataValue.text(str(r.metadata["location"]))
            warnings += summary.warnings
        md["routed_rows"] = dg.MetadataValue.json(rows)
        if keep:
            md["kept_stored_partitions"] = dg.MetadataValue.json(sorted(f"{d}|{k}" for k, d in keep))
            context.log.warning(
                f"{what}: {len(keep)} partition(s) not replaced, their stored version stays: "
                + ", ".join(sorted(f"{d}|{k}" for k, d in keep))
            )
        if warnings:
            md["storage_warnings"] = dg.MetadataValue.json(warnings)
            for w in warnings:
                context.log.warning(f"{what}: storage route failed (on_error: warn): {w}")
        context.add_output_metadata(md)
        release_freed_memory()  # the writes' Arrow conversions, before the next step allocates
        if not keep and not warnings:
            self._offer(context, table, part, obj, summaries)

    def _offer(
        self, context: dg.OutputContext, table: TableRef, part: PartitionSlice, df: pd.DataFrame,
        summaries: list[WriteSummary],
    ) -> None:
        """Keep `df` in the slot if a later step of this run reads this output and a read of the slice
        would return exactly `df` (see _Handoff)."""
        try:
            step = context.step_context
            run_id, step_key, output = context.run_id, context.step_key, context.name
            consumed = any(
                (h.step_key, h.output_name) == (step_key, output)
                for s in step.execution_plan.get_steps_to_execute_in_topo_order()
                for i in s.step_inputs
                for h in i.get_step_output_handle_dependencies()
            )
            captured = step.output_capture is not None or step.step_output_capture is not None
        except (AttributeError, dg.DagsterInvariantViolationError):  # a context built outside a run
            return
        if not consumed:
            return
        primary = self.cfg.storage.primary
        whole = [
            r.id for r in self.router.routes_for(table)
            if primary in r.destinations and not r.filter and r.match.symbol is None
            and getattr(r, "transform", None) is None
        ]  # fmt: skip
        stored = sum(r.rows for s in summaries for r in s.results if r.ok and r.destination == primary and r.route in whole)
        if len(whole) != 1 or stored != len(df) or not _reads_files_in_order(self.router, primary):
            return
        if reads_back_as_is(df, part):
            self._handoff = _Handoff(run_id, step_key, output, table, part, df, releasable=not captured)

    def _take(self, context: dg.InputContext, table: TableRef, part: PartitionSlice) -> _Handoff | None:
        """The slot if it holds the output this input reads, for this very slice (then the slot is
        emptied); None otherwise (the slot stays for its own consumer unless it is of another run)."""
        slot = self._handoff
        if slot is None:
            return None
        up = context.upstream_output
        try:
            producer = (up.run_id, up.step_key, up.name) if up is not None else None
            run_id = context.step_context.run_id
        except (AttributeError, dg.DagsterInvariantViolationError):
            return None
        if run_id != slot.run_id:
            self._handoff = None  # a run that never read it: do not hold its frame any longer
            return None
        if producer != (slot.run_id, slot.step_key, slot.output):
            return None
        self._handoff = None
        if slot.table != table or slot.part != part:
            return None
        return slot

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        upstream = context.upstream_output
        what = f"input {context.name!r} of {context.asset_key.to_user_string() if context.has_asset_key else '?'}"
        if upstream is None:
            raise IOManagerContractError(f"{what}: has no upstream asset to read")
        table = table_from_metadata(upstream.definition_metadata or {}, what)
        if not context.has_asset_partitions:
            raise IOManagerContractError(
                f"{what}: upstream is not partitioned; routed tables are date x symbol"
            )
        keys = list(context.asset_partition_keys)
        if not keys:  # e.g. a warm-up window entirely before the feed's first day
            return self.router.read(table, PartitionSlice(self._any_symbol(table), date.min, date.min))
        part = slice_from_keys(self.cfg, table.feed, keys, what, exact=False)
        slot = self._take(context, table, part)
        if slot is not None:
            self.inputs_served["memory"] += 1
            context.log.debug(f"{what}: {part.describe()} handed over in memory by the upstream step (not re-read)")
            if slot.releasable:
                _RELEASABLE[id(slot.frame)] = slot.frame
            return slot.frame
        df = self.router.read(table, part)
        self.inputs_served["storage"] += 1
        release_freed_memory()  # the decoding buffers of the read
        _RELEASABLE[id(df)] = df  # this step's own copy
        return df

    def _any_symbol(self, table: TableRef) -> dict[str, str]:
        k, d = next(iter(self.cfg.feed(table.feed).symbol_keys.items()))
        return {k: d}


def _pieces(df: pd.DataFrame, part: PartitionSlice, rows: int) -> list[tuple[pd.DataFrame, PartitionSlice]]:
    """`df` (the rows of `part`) as (frame, slice) pieces of consecutive whole days, every symbol of
    the slice in each, of about `rows` rows (WRITE_CHUNK_ROWS); the whole frame when it is not larger.

    A piece whose rows are contiguous in `df` (one symbol, rows in day order: the usual range run) is
    a view of them, not a copy; a piece may be empty (its days are then cleared, as a whole write
    would). Rows without a timestamp (quarantine) belong to the slice's first day, as in the stores.
    """
    n = len(df)
    if n <= rows or part.days == 1:
        return [(df, part)]
    count = -(-n // rows)
    step = -(-part.days // count)
    _, days = partition_of_rows(df, part)
    out = []
    for first in range(0, part.days, step):
        sub = PartitionSlice(
            part.symbols, part.start + timedelta(days=first),
            min(part.end, part.start + timedelta(days=first + step - 1)),
        )  # fmt: skip
        rows = np.flatnonzero((days >= np.datetime64(sub.start)) & (days <= np.datetime64(sub.end)))
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            piece = df.iloc[rows[0] : rows[-1] + 1]
            piece.index = pd.RangeIndex(len(piece))  # the piece's own index; its columns stay views
        else:
            piece = df.take(rows).reset_index(drop=True)
        out.append((piece, sub))
    return out


def _reads_files_in_order(router: Router, primary: str) -> bool:
    """Whether the primary store's read returns a slice's rows in the order they were written, per
    (symbol key, day): true of the Parquet store (one file per partition, read in that order); a SQL
    store's SELECT has no defined order, so its inputs are always read."""
    from data_puller_dagster.io.destinations.parquet_store import ParquetDestination

    try:
        return type(router.store(primary)) is ParquetDestination
    except StorageError:
        return False


def _restrict(df: pd.DataFrame, part: PartitionSlice) -> pd.DataFrame:
    """The rows of `df` that belong to `part` (its symbols, its days)."""
    ts = df["ts"]
    inside = df["symbol"].isin(part.displays) & (ts >= part.start_ts) & (ts < part.end_ts)
    return df[inside.to_numpy(dtype=bool)].reset_index(drop=True)


def build_io_manager(cfg: AppConfig) -> dg.IOManagerDefinition:
    """The `io_manager` resource for dg.Definitions."""
    return dg.IOManagerDefinition.hardcoded_io_manager(RouterIOManager(cfg))
