"""The dataset card: README.md beside the split files, and the facts it shares with manifest.json.

Why a card: a JSONL directory says nothing about where its numbers came from or what they may be used
for. The card is rendered from the configuration and the manifest only (no clock, no paths), so it
is as deterministic as the files: the same examples give the same card.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from data_puller_dagster.config import DatasetConfig, FeedConfig
from data_puller_dagster.transform.llm_features import FeatureSet, profile_lookback
from data_puller_dagster.transform.volume_profile import VALUE_AREA

PROVIDER_TERMS = {
    "binance": "Binance market data (api.binance.com / data.binance.vision), under Binance's Terms of Use",
    "twelvedata": "Twelve Data (api.twelvedata.com), under Twelve Data's Terms of Service and your plan's "
    "redistribution rights",
}


@dataclass(frozen=True)
class DatasetCard:
    """What the card and the manifest say about a feed's dataset beyond rows and hashes."""

    feed: FeedConfig
    dataset: DatasetConfig
    features: FeatureSet

    def manifest_fields(self) -> dict[str, Any]:
        f, d, fs = self.feed, self.dataset, self.features
        return {
            "feed": f.name,
            "source": f.source,
            "asset_class": f.asset_class,
            "timeframe": f.llm_timeframe,
            "target": f"next_{d.target_column}",
            "context_window": d.context_window,
            "stride": d.stride,
            "encoding": {"price_encoding": d.price_encoding, "context_layout": d.context_layout},
            "features": {
                "groups": list(fs.groups),
                "fields": fs.fields,
                "pattern_columns": list(fs.patterns),
                "volume_profile": {
                    "included": fs.volume_profile,
                    "available": fs.volume_profile and fs.profile_null_reason is None,
                    "null_reason": fs.profile_null_reason
                    if fs.profile_null_reason
                    else ("null for windows whose volume is 0 or unknown" if fs.volume_profile else None),
                    "buckets": d.volume_profile_buckets,
                    "lookback_candles": profile_lookback(d),
                    "value_area": VALUE_AREA,
                },
            },
            "split": {
                "validation_start": d.split.validation_start.isoformat() if d.split.validation_start else None,
                "test_start": d.split.test_start.isoformat() if d.split.test_start else None,
                "embargo": "examples whose history or successor lies in another split are dropped",
            },
            "quality_filter": {"min_quality": d.min_quality, "measure": "completeness of the candle's UTC day"},
            "max_tokens_per_example": d.max_tokens_per_example,
        }


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_card(card: DatasetCard, manifest: dict[str, Any]) -> str:
    """Markdown for README.md from the card and the finished manifest."""
    f, d, fs = card.feed, card.dataset, card.features
    m = card.manifest_fields()
    files = manifest["files"]
    split_rows = [["split", "examples", "bytes", "estimated tokens", "max per example", "first", "last"]]
    for s, info in files.items():
        split_rows.append(
            [s, f"{info['rows']:,}", f"{info['bytes']:,}", f"{info.get('estimated_tokens', 0):,}",
             f"{info.get('max_estimated_tokens_per_example', 0):,}", info["first_ts"] or "-", info["last_ts"] or "-"]
        )  # fmt: skip
    vp = m["features"]["volume_profile"]
    if not fs.volume_profile:
        vp_text = "not included"
    elif not vp["available"]:
        vp_text = f"null in every example: {vp['null_reason']}"
    else:
        vp_text = (
            f"{vp['buckets']} price buckets over the last {vp['lookback_candles']} candles (current included), "
            f"point of control, {int(VALUE_AREA * 100)} % value area; null where the window has no volume"
        )
    split = m["split"]
    rng = manifest.get("date_range", {})
    terms = PROVIDER_TERMS.get(f.source, f"the terms of the `{f.source}` data provider")
    parts = [
        f"# {manifest['name']}",
        "",
        f"LLM training examples built by data-puller-dagster from {f.asset_class} {f.llm_timeframe} candles of "
        f"`{f.source}` (feed `{f.name}`): one example per candle with the previous {d.context_window} "
        f"candles as context and the next candle's {d.target_column} as the target (`next_{d.target_column}`, "
        "`next_return`, `direction`).",
        "",
        f"- **Symbols**: {', '.join(manifest['symbols']) or '-'}",
        f"- **Period**: {rng.get('start') or '-'} to {rng.get('end') or '-'} (candle open times, UTC)",
        f"- **Format**: `{d.format}` lines; prices `{d.price_encoding}`; context layout `{d.context_layout}`; "
        f"stride {d.stride}",
        f"- **Features**: groups {', '.join(fs.groups)}; fields {', '.join(fs.fields)}",
        f"- **Candlestick patterns**: {', '.join(c[4:] for c in fs.patterns) or 'not included'} "
        + ("(TA-Lib; `+` bullish, `-` bearish in each row's `patterns` cell)" if fs.patterns else ""),
        f"- **Volume profile**: {vp_text}",
        f"- **Splits** (by candle time, UTC midnight): validation from {split['validation_start'] or '-'}, "
        f"test from {split['test_start'] or '-'}; embargo: {split['embargo']}",
        f"- **Quality filter**: examples of UTC days whose candle completeness is below {d.min_quality} are "
        "dropped",
        f"- **Token budget**: {d.max_tokens_per_example or 'none'} estimated tokens per example; estimate: "
        f"{manifest['token_estimate']}",
        f"- **Config hash**: `{manifest['config_hash']}`, schema version {manifest['schema_version']}",
        "",
        _table(split_rows),
        "",
        "Integrity: `manifest.json` lists the sha256 of every split file.",
        "",
        "## License and terms",
        "",
        f"The market data comes from {terms}. This dataset is a derived work of that data: its use and "
        "redistribution are governed by the provider's terms, not by this project's license. Check them "
        "before sharing the files or training a model others will use.",
        "",
    ]
    return "\n".join(parts)
