"""`<feed>/normalized_ohlcv_<tf>` and `<feed>/quarantine_ohlcv_<tf>`, with their checks.

Validation runs inside the asset and reports through check specs, so results land on the Checks tab.
The schema check is blocking: when it fails the normalized output is not stored at all (the previous
version stays), offending rows go to quarantine, and downstream layers do not run.
"""


import json
from typing import Any

import dagster as dg
import pandas as pd
from dagster import AssetExecutionContext

from data_puller_dagster import timeframes
from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.metadata import sample_rows
from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.normalized_metadata import (
    MISSING_BY_DAY,
    WindowGrid,
    missing_table,
    partition_figures,
    partition_metadata,
    window_grid,
)
from data_puller_dagster.assets.partition_metadata import (
    add_partition_metadata,
    partition_groups,
    partition_layout,
    sig,
    symbol_index,
)
from data_puller_dagster.assets.partitions import (
    backfill_policy,
    context_window,
    feed_partitions,
)
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.tables import PartialOutput, PartitionSlice
from data_puller_dagster.transform.acceptance import drop_rejected, judge_days
from data_puller_dagster.transform.gaps import segments_of
from data_puller_dagster.transform.normalize import normalize
from data_puller_dagster.transform.quality import data_quality_score
from data_puller_dagster.transform.schemas import validate_normalized

CODE_VERSION = "normalized-1"

CHECK_SCHEMA = "schema_valid"
CHECK_DUPLICATES = "no_duplicate_conflicts"
CHECK_QUARANTINE = "no_ohlc_violations"
CHECK_COMPLETENESS = "complete_against_calendar"
CHECK_FRESHNESS = "fresh"

__all__ = ["MISSING_BY_DAY", "build_normalized_assets", "missing_by_day"]


def missing_by_day(missing: pd.DatetimeIndex, key: str) -> dict[str, dict[str, int]]:
    """Missing candles per UTC day for one symbol (one vectorized group count)."""
    if missing.empty:
        return {}
    counts = pd.Series(1, index=missing).groupby(missing.strftime("%Y-%m-%d")).sum()
    return {day: {key: int(n)} for day, n in counts.items()}


def build_normalized_assets(cfg: AppConfig, feed: FeedConfig) -> dg.AssetsDefinition:
    tf = feed.timeframe
    raw_key = asset_key(feed, "raw", tf)
    norm_key = asset_key(feed, "normalized", tf)
    quar_key = asset_key(feed, "quarantine", tf)
    partitions = feed_partitions(feed)

    checks = [
        dg.AssetCheckSpec(
            CHECK_SCHEMA,
            asset=norm_key,
            blocking=True,
            description=(
                "Canonical schema (pandera, lazy), every candle inside the requested days, and every "
                "(symbol, day) accepted on its own rows: the provider's interval is the one asked for and "
                "at most validation.max_quarantined_fraction of the day's rows are quarantined. A rejected "
                "day keeps its stored version (listed in rejected_partitions); the run's other days are stored."
            ),
        ),
        dg.AssetCheckSpec(CHECK_DUPLICATES, asset=norm_key, description="No conflicting duplicate candles."),
        dg.AssetCheckSpec(
            CHECK_QUARANTINE, asset=norm_key, description="No rows broke OHLC integrity (those are quarantined)."
        ),
        dg.AssetCheckSpec(
            CHECK_COMPLETENESS, asset=norm_key, description="Every candle the market calendar expects is present."
        ),
        dg.AssetCheckSpec(
            CHECK_FRESHNESS, asset=norm_key, description="Per symbol: the last closed candle is present."
        ),
    ]

    @dg.multi_asset(
        name=f"{feed.name}__normalize_{tf}",
        outs={
            "normalized": dg.AssetOut(
                key=norm_key,
                is_required=False,
                group_name=feed.name,
                kinds={"pandas", "pandera", *storage_kinds(cfg, feed, "normalized", tf)},
                tags=catalog_tags(feed, "normalized", tf),
                code_version=CODE_VERSION,
                description=(
                    f"Canonical {tf} OHLCV: UTC grid-aligned, deduplicated, validated; still-open candles "
                    "flagged is_final=False. Schema version in transform.canonical."
                ),
                metadata=catalog_metadata(cfg, feed, "normalized", tf),
            ),
            "quarantine": dg.AssetOut(
                key=quar_key,
                is_required=False,
                group_name=feed.name,
                kinds={"pandas", *storage_kinds(cfg, feed, "quarantine", tf)},
                tags=catalog_tags(feed, "quarantine", tf),
                code_version=CODE_VERSION,
                description="Rows that broke a rule (OHLC integrity, bad timestamps, ...), with the rule.",
                metadata=catalog_metadata(cfg, feed, "quarantine", tf),
            ),
        },
        ins={"raw": dg.AssetIn(raw_key)},
        check_specs=checks,
        partitions_def=partitions,
        backfill_policy=backfill_policy(cfg),
    )
    def normalize_asset(context: AssetExecutionContext, raw: pd.DataFrame):
        window = context_window(context, cfg, feed)
        now = pd.Timestamp.now(tz="UTC")
        result = normalize(raw, asset_class=feed.asset_class, timeframe=tf, now=now)
        quarantine, report = result.quarantine, result.report
        # Each (symbol, day) partition is judged on its own rows: a rejected day (wrong interval, too much
        # quarantined) keeps its stored version; the other days of the run are still stored.
        rejections = judge_days(
            raw, result, timeframe=tf, symbols=window.displays, days=window.dates,
            max_quarantined_fraction=cfg.validation.max_quarantined_fraction,
        )  # fmt: skip
        data = drop_rejected(result.data, rejections)
        key_of = {d: k for k, d in window.symbols.items()}
        keep = frozenset((key_of[r.symbol], r.day) for r in rejections.itertuples())

        outside = data[(data["ts"] < window.start_ts) | (data["ts"] >= window.end_ts)]
        summary = validate_normalized(data)
        quarantined_fraction = len(quarantine) / report.rows_in if report.rows_in else 0.0
        storable = summary.ok and outside.empty and len(keep) < len(window.keys) * window.days
        schema_ok = summary.ok and outside.empty and rejections.empty

        # The data's partitions and the calendar grid of the window, computed once for every figure below.
        data_groups = partition_groups(data, window)
        grid = window_grid(feed, window, data_groups.layout, now)
        per_symbol = _completeness(feed, window, data, now, grid)
        missing = sum(s["missing"] for s in per_symbol.values())
        segments = sum(s["segments"] for s in per_symbol.values())
        expected = sum(s["expected"] for s in per_symbol.values())
        present = sum(s["present"] for s in per_symbol.values())
        completeness = present / expected if expected else 1.0
        score = data_quality_score(completeness=completeness, rows_in=report.rows_in, quarantined=len(quarantine))
        # Each partition's own figures go to that partition's materialization; the Output (copied onto
        # every partition by Dagster) keeps only what is about the run as a whole.
        figures = partition_figures(
            feed, window, data=data, raw=raw, quarantine=quarantine, rejections=rejections, now=now,
            groups=data_groups, grid=grid,
        )  # fmt: skip
        run_report = _scalar_metadata(report.as_metadata())
        context.log.info(
            f"normalized {feed.name} {tf} {window.describe()}: run totals quality_score={sig(score)}, "
            f"missing_candles={missing}, gap_segments={segments}, quarantined_rows={len(quarantine)}"
        )

        for r in rejections.itertuples():
            context.log.error(f"normalized {feed.name} {tf}: {r.detail}")
        if storable:
            value = PartialOutput(data, keep) if keep else data
            add_partition_metadata(
                context, norm_key, data_groups, lambda k, _rows: partition_metadata(figures[k])
            )
            md: dict[str, Any] = {}
            if keep:
                md["rejected_partitions"] = _rejections_table(rejections)
            yield dg.Output(value, output_name="normalized", metadata=md)
        else:
            context.log.error(
                f"normalized data for {window.describe()} is not stored (every partition keeps its stored "
                f"version): schema failures: {summary.failures}; rows outside the requested days: "
                f"{len(outside)}; rejected partitions: {len(keep)} of {len(window.keys) * window.days}"
            )
        add_partition_metadata(context, quar_key, partition_groups(quarantine, window))
        yield dg.Output(quarantine, output_name="quarantine")

        yield dg.AssetCheckResult(
            asset_key=norm_key,
            check_name=CHECK_SCHEMA,
            passed=bool(schema_ok),
            severity=dg.AssetCheckSeverity.ERROR,
            description=(
                "; ".join(rejections["detail"].head(5)) if not rejections.empty else None
            ),
            metadata={
                "failures": dg.MetadataValue.json(_jsonable(summary.failures)),
                "rows_outside_window": dg.MetadataValue.int(len(outside)),
                "quarantined_fraction": dg.MetadataValue.float(sig(quarantined_fraction)),
                "quality_score": dg.MetadataValue.float(sig(score)),
                "rejected_partitions": _rejections_table(rejections),
                **{f"normalize/{k}": v for k, v in run_report.items()},
                "sample": sample_rows(
                    outside if not outside.empty else quarantine if not rejections.empty else summary.sample
                ),
            },
        )
        conflicts = int(report.duplicate_conflicts)
        yield dg.AssetCheckResult(
            asset_key=norm_key,
            check_name=CHECK_DUPLICATES,
            passed=conflicts == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "identical_duplicates": dg.MetadataValue.int(int(report.duplicates_identical)),
                "conflicting_duplicates": dg.MetadataValue.int(conflicts),
            },
        )
        yield dg.AssetCheckResult(
            asset_key=norm_key,
            check_name=CHECK_QUARANTINE,
            passed=quarantine.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "quarantined_rows": dg.MetadataValue.int(len(quarantine)),
                "by_rule": dg.MetadataValue.json(_jsonable(report.quarantined_by_rule)),
                "sample": sample_rows(quarantine),
            },
        )
        yield dg.AssetCheckResult(
            asset_key=norm_key,
            check_name=CHECK_COMPLETENESS,
            passed=missing == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "missing_candles": dg.MetadataValue.int(int(missing)),
                "gap_segments": dg.MetadataValue.int(int(segments)),
                "completeness": dg.MetadataValue.float(sig(completeness)),
                "missing_by_partition": missing_table(figures),
                "segments": dg.MetadataValue.json(
                    {k: v["segment_list"][:20] for k, v in per_symbol.items() if v["segment_list"]}
                ),
            },
        )
        stale = {k: v["stale"] for k, v in per_symbol.items() if v["stale"]}
        yield dg.AssetCheckResult(
            asset_key=norm_key,
            check_name=CHECK_FRESHNESS,
            passed=not stale,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "last_candle_by_symbol": dg.MetadataValue.json({k: v["last"] for k, v in per_symbol.items()}),
                "stale": dg.MetadataValue.json(stale),
            },
        )

    return normalize_asset


def _completeness(
    feed: FeedConfig, window: PartitionSlice, data: pd.DataFrame, now: pd.Timestamp, grid: WindowGrid | None = None
) -> dict[str, dict[str, Any]]:
    """Gaps and freshness per symbol against the market calendar, over candles that have closed by now.

    A symbol is stale when the calendar expected a candle after the last final one present. The gaps are
    those `find_gaps` reports over the window; they are read off the window's grid (`window_grid`, reused
    when given), which the per-partition figures share.
    """
    end = min(pd.Timestamp(window.end_ts), now.floor(timeframes.pandas_freq(feed.timeframe)))
    start = pd.Timestamp(window.start_ts)
    is_final = data["is_final"].astype(bool).to_numpy()
    displays = [feed.symbol_keys[key] for key in window.keys]
    # String columns: every symbol's rows from one pass (symbol_index compares as `==` does).
    index = symbol_index(data["symbol"], displays) if isinstance(data["symbol"].dtype, pd.StringDtype) else None
    if grid is None and end > start:
        grid = window_grid(feed, window, partition_layout(data, window), now)
    out: dict[str, dict[str, Any]] = {}
    for i, key in enumerate(window.keys):
        if index is not None:
            of_symbol = index == i
        else:
            of_symbol = (data["symbol"] == displays[i]).to_numpy(dtype=bool, na_value=False)
        present = data["ts"][is_final & of_symbol]
        last_present = present.max() if len(present) else None
        if end <= start or grid is None:
            out[key] = {"missing": 0, "segments": 0, "expected": 0, "present": 0, "by_day": {},
                        "segment_list": [], "last": None, "stale": None}
            continue
        mask = grid.present[key]
        missing_index = grid.grid[~mask]
        segments = segments_of(missing_index, grid.grid, feed.timeframe)
        last_missing = missing_index.max() if len(missing_index) else None
        stale = None
        if last_missing is not None and (last_present is None or last_missing > last_present):
            stale = {"last_expected": str(last_missing), "last_present": str(last_present)}
        out[key] = {
            "missing": int(len(grid.grid) - int(mask.sum())),
            "segments": len(segments),
            "expected": len(grid.grid),
            "present": int(mask.sum()),
            "by_day": missing_by_day(missing_index, key),
            "segment_list": [
                {"start": str(r.start), "end": str(r.end), "missing": int(r.missing)}
                for r in segments.itertuples()
            ],
            "last": str(last_present) if last_present is not None else None,
            "stale": stale,
        }
    return out


def _rejections_table(rejections: pd.DataFrame) -> dg.MetadataValue:
    """The rejected (day, symbol) partitions as a table the Checks tab shows."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("day", "string"), dg.TableColumn("symbol", "string"),
            dg.TableColumn("reason", "string"), dg.TableColumn("rows_in", "int"),
            dg.TableColumn("quarantined", "int"), dg.TableColumn("detail", "string"),
        ]
    )  # fmt: skip
    records = [
        dg.TableRecord({"day": str(r.day), "symbol": str(r.symbol), "reason": str(r.reason),
                        "rows_in": int(r.rows_in), "quarantined": int(r.quarantined), "detail": str(r.detail)})
        for r in rejections.itertuples()
    ]  # fmt: skip
    return dg.MetadataValue.table(records, schema=schema)


def _scalar_metadata(md: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in md.items():
        if isinstance(v, bool) or isinstance(v, int):
            out[k] = dg.MetadataValue.int(int(v))
        elif isinstance(v, float):
            out[k] = dg.MetadataValue.float(sig(v))
        elif isinstance(v, str):
            out[k] = dg.MetadataValue.text(v)
        else:
            out[k] = dg.MetadataValue.json(_jsonable(v))
    return out


def _jsonable(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))
