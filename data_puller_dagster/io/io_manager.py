"""The Dagster IO manager: turns asset metadata and partition keys into routed writes and reads.

Assets declare what they are with definition metadata (`data_puller/feed`, `data_puller/layer`,
`data_puller/asset_class`, `data_puller/timeframe`, `data_puller/table`, `data_puller/primary_key`;
see assets.naming.table_metadata); the partitions (date x symbol multi-partitions, keys like
`2024-01-05|BTCUSDT`) become a PartitionSlice. Outputs go through the Router to every matching route;
inputs are read from storage.primary in one query for the whole (possibly mapped, multi-day) range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

import dagster as dg
import pandas as pd

from data_puller_dagster.config import AppConfig
from data_puller_dagster.io.errors import StorageError
from data_puller_dagster.io.router import Router
from data_puller_dagster.io.tables import PartialOutput, PartitionSlice, TableRef
from data_puller_dagster.symbols import check_key

DATE_DIM = "date"
SYMBOL_DIM = "symbol"
_META = "data_puller/"


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

    def __init__(self, cfg: AppConfig, router: Router | None = None):
        self.cfg = cfg
        self.router = router or Router(cfg)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # assets that write files themselves
            return
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
        if keep:
            # Only the accepted partitions are replaced, each contiguous run of days on its own.
            summaries = [self.router.write(table, _restrict(obj, sub), sub) for sub in part.without(keep)]
        else:
            summaries = [self.router.write(table, obj, part)]
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
        return self.router.read(table, part)

    def _any_symbol(self, table: TableRef) -> dict[str, str]:
        k, d = next(iter(self.cfg.feed(table.feed).symbol_keys.items()))
        return {k: d}


def _restrict(df: pd.DataFrame, part: PartitionSlice) -> pd.DataFrame:
    """The rows of `df` that belong to `part` (its symbols, its days)."""
    ts = df["ts"]
    inside = df["symbol"].isin(part.displays) & (ts >= part.start_ts) & (ts < part.end_ts)
    return df[inside.to_numpy(dtype=bool)].reset_index(drop=True)


def build_io_manager(cfg: AppConfig) -> dg.IOManagerDefinition:
    """The `io_manager` resource for dg.Definitions."""
    return dg.IOManagerDefinition.hardcoded_io_manager(RouterIOManager(cfg))
