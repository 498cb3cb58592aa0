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

from data_puller_dagster.assets.catalog import catalog_metadata, catalog_tags, storage_kinds
from data_puller_dagster.assets.live import has_live_table, live_check_result, live_check_spec
from data_puller_dagster.assets.metadata import sample_rows
from data_puller_dagster.assets.naming import asset_key
from data_puller_dagster.assets.normalized_metadata import (
    MISSING_BY_DAY,
    missing_table,
    partition_metadata,
)
from data_puller_dagster.assets.partition_metadata import add_partition_metadata, partition_groups, sig
from data_puller_dagster.assets.partitions import (
    backfill_policy,
    context_window,
    feed_partitions,
)
from data_puller_dagster.config import AppConfig, FeedConfig
from data_puller_dagster.io.io_manager import owned_input, release_input
from data_puller_dagster.io.tables import PartialOutput

# Moved to transform/gap_figures.py (the library reports them too); the old names stay importable here.
from data_puller_dagster.transform.gap_figures import missing_by_day
from data_puller_dagster.transform.gap_figures import symbol_completeness as _completeness  # noqa: F401
from data_puller_dagster.transform.normalize_window import normalize_window

CODE_VERSION = "normalized-1"

CHECK_SCHEMA = "schema_valid"
CHECK_DUPLICATES = "no_duplicate_conflicts"
CHECK_QUARANTINE = "no_ohlc_violations"
CHECK_COMPLETENESS = "complete_against_calendar"
CHECK_FRESHNESS = "fresh"

__all__ = ["MISSING_BY_DAY", "build_normalized_assets", "missing_by_day"]


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
    live = has_live_table(cfg, feed)  # live_matches_batch: only where the stream's table can be read back
    if live:
        checks.append(live_check_spec(feed, norm_key))

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
        # Normalize, judge each (symbol, day) on its own rows (a rejected day keeps its stored version;
        # the other days of the run are still stored), validate and measure: transform/normalize_window,
        # the same code the library and `data-puller pull` run.
        w = normalize_window(
            raw,
            feed,
            window,
            max_quarantined_fraction=cfg.validation.max_quarantined_fraction,
            consume_raw=owned_input(raw),
        )
        data, quarantine, report, rejections, keep = w.data, w.quarantine, w.report, w.rejections, w.keep
        outside, summary, storable, schema_ok = w.outside, w.summary, w.storable, w.schema_ok
        quarantined_fraction, data_groups, per_symbol, figures = w.quarantined_fraction, w.groups, w.per_symbol, w.figures
        missing, segments, completeness, score = w.missing, w.segments, w.completeness, w.score
        # Each partition's own figures go to that partition's materialization; the Output (copied onto
        # every partition by Dagster) keeps only what is about the run as a whole.
        # The raw frame is not used past this point: free it before the outputs are written (their
        # Arrow conversions and DuckDB's copy of the rows are the step's memory peak).
        release_input(raw)
        del raw
        run_report = _scalar_metadata(report.as_metadata())
        context.log.info(
            f"normalized {feed.name} {tf} {window.describe()}: run totals quality_score={sig(score)}, "
            f"missing_candles={missing}, gap_segments={segments}, quarantined_rows={len(quarantine)}"
        )

        for r in rejections.itertuples():
            context.log.error(f"normalized {feed.name} {tf}: {r.detail}")
        # Compared before the output is written: the IO manager may hand `data` on and empty it.
        live_result = live_check_result(cfg, feed, norm_key, data, window) if live else None
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
        if live_result is not None:
            yield live_result

    return normalize_asset


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
