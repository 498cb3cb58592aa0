"""Per-partition materialization metadata for range runs.

Why: a run over several (day, symbol) partitions emits one materialization per partition, and Dagster
copies a step's `Output(metadata=...)` onto every one of them, so a 5-day run would show the 5-day totals
on each day. `context.add_asset_metadata(..., partition_key=k)` (Dagster 1.13) attaches metadata to the
materialization of partition `k` only and overrides the Output's keys of the same name there. Assets
therefore split their output by partition key (`date|symbol`, dims sorted by name) and attach each
partition's own figures; run-level totals go to the step's log.

The splitting (transform/partition_layout.py) uses integer day numbers and contiguous slices, so a year
of 1m candles (366 partitions) is grouped without formatting a string per row. Frame metadata for all
partitions is computed together (`metadata.slices_metadata`) and handed to the step in one batch
(`attach_partition_metadata`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster.assets.metadata import frame_metadata, slices_metadata

# The grouping itself is plain pandas/numpy in transform/partition_layout.py (the library's gap and
# quality figures use it too); its names are re-exported here for the asset modules and their tests.
from data_puller_dagster.transform.partition_layout import (  # noqa: F401 - re-exported
    EPOCH,
    FEW_SYMBOLS,
    NAT,
    SIGNIFICANT_DIGITS,
    TICKS_PER_DAY,
    PartitionGroups,
    PartitionLayout,
    group_ids,
    partition_counts,
    partition_groups,
    partition_key_of,
    partition_layout,
    sig,
    symbol_index,
    utc_ts,
    window_partition_keys,
)

try:  # Dagster's per-step metadata store; see attach_partition_metadata for why it is used directly.
    from dagster._core.execution.context.metadata_logging import (
        AssetMetadataHandle,
        OutputMetadataAccumulator,
    )
except ImportError:  # pragma: no cover - another Dagster layout: the public call is used instead
    AssetMetadataHandle = OutputMetadataAccumulator = None  # type: ignore[assignment,misc]


def add_partition_metadata(
    context: AssetExecutionContext,
    asset_key: dg.AssetKey,
    groups: Mapping[str, pd.DataFrame],
    extra: Callable[[str, pd.DataFrame], Mapping[str, Any]] | None = None,
) -> None:
    """Attach each partition's own frame metadata (+ `extra(key, rows)`) to that partition only."""
    if isinstance(groups, PartitionGroups):
        # Every partition's frame metadata in one pass over the layout they were cut from.
        layout = groups.layout
        by_group = slices_metadata(layout.frame, layout.starts, layout.counts, layout.order)
        base = {key: by_group[groups.group_of[key]] for key in groups}
    else:
        base = {key: frame_metadata(rows) for key, rows in groups.items()}
    per_key = {key: {**base[key], **(extra(key, groups[key]) if extra else {})} for key in groups}
    attach_partition_metadata(context, asset_key, per_key)


def attach_partition_metadata(
    context: AssetExecutionContext, asset_key: dg.AssetKey, per_key: Mapping[str, Mapping[str, Any]]
) -> None:
    """`context.add_asset_metadata(md, asset_key=asset_key, partition_key=k)` for every (k, md), at once.

    Why not simply that call in a loop: Dagster 1.13 recomputes the run's whole partition-key list to
    validate each call and copies its per-step metadata dict on each one, so n partitions cost O(n^2)
    (over a second for the normalized and quarantine days of a year). Here the keys are validated once
    against `context.partition_keys` and the step's accumulator gets the same entries (merged with what
    is already there, as Dagster merges them) in one copy. With another Dagster layout, or anything
    unexpected, the public call is used, which also raises Dagster's own errors.
    """
    step = _step_with_accumulator(context, asset_key, per_key)
    if step is None:
        for key, md in per_key.items():
            context.add_asset_metadata(md, asset_key=asset_key, partition_key=key)
        return
    current = step._metadata_accumulator.per_output_metadata
    merged = dict(current)
    for key, md in per_key.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=key)
        merged[handle] = {**current.get(handle, {}), **md}
    step._metadata_accumulator = OutputMetadataAccumulator(per_output_metadata=merged)


def _step_with_accumulator(
    context: AssetExecutionContext, asset_key: dg.AssetKey, keys: Iterable[str]
) -> Any | None:
    """The step context whose metadata accumulator may take these partition keys directly, or None
    (another Dagster layout, not an asset step, an asset or a key the step does not materialize)."""
    if OutputMetadataAccumulator is None:
        return None
    try:
        step = context.op_execution_context._step_execution_context
        if not isinstance(step._metadata_accumulator, OutputMetadataAccumulator):
            return None
        assets_def = context.assets_def
        if assets_def.partitions_def is None or asset_key not in assets_def.keys:
            return None
        targeted = {str(k) for k in context.partition_keys}
    except Exception:  # anything unexpected: the public call says what is wrong
        return None
    return step if all(k and k in targeted for k in keys) else None


def log_run_totals(context: AssetExecutionContext, what: str, totals: Mapping[str, Any]) -> None:
    """Run-level totals belong to the step, not to each partition: they go to the run's log."""
    context.log.info(f"{what}: run totals " + ", ".join(f"{k}={v}" for k, v in totals.items()))
