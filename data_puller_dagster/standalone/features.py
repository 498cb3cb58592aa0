"""`enrich()` and `build_llm_dataset()` over any canonical frame: the enriched and dataset assets' code.

Why the day-anchored functions and not whole-history ones: the enriched asset computes each UTC day
from its own warm-up window (`compute_indicators_by_day`, lookback from `days_for_candles`), and the
dataset asset gates each day on its completeness (`window_examples`). Using the very same calls here
means a frame enriched in a notebook holds the same values, bit for bit, as the stored layer built from
the same candles, and the JSONL lines are the same lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationError

from data_puller_dagster.config import ConfigError, DatasetConfig, FeedConfig, IndicatorsConfig, render_errors
from data_puller_dagster.standalone.resolve import ConfigLike, base_config, infer_source
from data_puller_dagster.transform.dataset_window import window_examples
from data_puller_dagster.transform.indicators import READY_COLUMN, compute_indicators_by_day, warmup_candles
from data_puller_dagster.transform.llm_dataset import write_dataset
from data_puller_dagster.transform.llm_features import history_candles, resolve_features
from data_puller_dagster.transform.lookback import days_for_candles


def _model(model: type[BaseModel], value: Any, default: BaseModel, what: str) -> Any:
    """`value` as `model`: None -> default, a model as is, a mapping over the default's values."""
    if value is None:
        return default
    if isinstance(value, model):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a {model.__name__} or a mapping of its keys, got {type(value).__name__}")
    try:
        return model.model_validate({**default.model_dump(), **dict(value)})
    except ValidationError as e:
        raise ConfigError(render_errors(e, model), what) from None


def _single(df: pd.DataFrame, column: str, given: str | None, what: str) -> str:
    if given is not None:
        return given
    values = df[column].dropna().unique() if column in df.columns else []
    if len(values) != 1:
        raise ValueError(
            f"{what}: the frame's {column!r} column holds {list(values)[:5]}; pass {column}=... "
            "(one value per call: split the frame by it)"
        )
    return str(values[0])


def enrich(
    df: pd.DataFrame,
    indicators: IndicatorsConfig | Mapping[str, Any] | None = None,
    *,
    config: ConfigLike = None,
    asset_class: str | None = None,
    timeframe: str | None = None,
) -> pd.DataFrame:
    """Canonical candles (one or more symbols of one asset class and timeframe) plus indicator columns
    and `indicators_ready`, each UTC day computed from its own warm-up window as the enriched asset does.

    `indicators`: an IndicatorsConfig, a mapping of its keys over the defaults (e.g. `{"rsi_window":
    7, "macd": None}`), or None for the config's `indicators:`. `asset_class` / `timeframe` default to
    the frame's columns. The first `indicators.warmup_candles` candles of each symbol have no warm-up
    history: their values are null where an indicator needs more rows (`indicators_ready` False).
    Returns the rows sorted by (symbol, ts).
    """
    ind = _model(IndicatorsConfig, indicators, base_config(config).indicators, "indicators")
    if df.empty:
        return compute_indicators_by_day(df, ind, start=pd.Timestamp(0, tz="UTC"), end=pd.Timestamp(0, tz="UTC"),
                                         lookback_days=0)  # fmt: skip
    cls = _single(df, "asset_class", asset_class, "enrich")
    tf = _single(df, "timeframe", timeframe, "enrich")
    warm = warmup_candles(ind)
    ts = pd.DatetimeIndex(df["ts"])
    return compute_indicators_by_day(
        df, ind, start=ts.min().floor("D"), end=ts.max().floor("D") + pd.Timedelta(days=1),
        lookback_days=days_for_candles(cls, tf, warm), warmup=warm,
    )  # fmt: skip


def build_llm_dataset(
    df: pd.DataFrame,
    *,
    dataset: DatasetConfig | Mapping[str, Any] | None = None,
    indicators: IndicatorsConfig | Mapping[str, Any] | None = None,
    config: ConfigLike = None,
    asset_class: str | None = None,
    timeframe: str | None = None,
    price_decimals: int | None = None,
    out_dir: str | Path | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """One LLM example per eligible candle (seed or chat JSON lines), as the dataset asset builds them.

    `df`: canonical candles, enriched or not (without `indicators_ready` they are enriched first with
    `indicators`). `dataset`: a DatasetConfig or a mapping of its keys over the config's `dataset:`
    (format, context_window, stride, split, min_quality, ...). Days below `min_quality` completeness
    are left out, as in the pipeline. Returns a frame of ts, symbol, split and `line` (the JSON text).
    With `out_dir`, also writes `train/validation/test.jsonl` and `manifest.json` there (atomically,
    byte-identical for the same input), named `name` (default `<asset_class>_<timeframe>`).
    """
    cfg = base_config(config)
    ind = _model(IndicatorsConfig, indicators, cfg.indicators, "indicators")
    ds = _model(DatasetConfig, dataset, cfg.dataset, "dataset")
    enriched = df if READY_COLUMN in df.columns else enrich(df, ind, asset_class=asset_class, timeframe=timeframe)
    cls = _single(enriched, "asset_class", asset_class, "build_llm_dataset")
    tf = _single(enriched, "timeframe", timeframe, "build_llm_dataset")
    symbols = sorted(map(str, enriched["symbol"].dropna().unique()))
    if not symbols:
        raise ValueError("build_llm_dataset: the frame has no candles")
    ts = pd.DatetimeIndex(enriched["ts"])
    source, _ = infer_source(symbols[0], cfg)
    spec: dict[str, Any] = {"name": cls, "source": source, "asset_class": cls, "timeframe": tf, "symbols": symbols,
                            "start_date": ts.min().date(), "price_decimals": price_decimals}  # fmt: skip
    try:
        feed = FeedConfig.model_validate(spec)
    except ValidationError as e:
        raise ConfigError(render_errors(e, FeedConfig), "build_llm_dataset") from None
    examples, _excluded = window_examples(
        enriched, feed=feed, dataset=ds, indicators=ind,
        start=ts.min().floor("D"), end=ts.max().floor("D") + pd.Timedelta(days=1),
        lookback_days=days_for_candles(cls, tf, history_candles(resolve_features(feed, ds, ind), ds)),
        lookahead_days=1,
    )  # fmt: skip
    if out_dir is not None:
        from data_puller_dagster.assets.dataset import dataset_config_hash  # the manifest's hash, same rule

        content = cfg.model_copy(update={"indicators": ind, "dataset": ds, "feeds": [feed]})
        write_dataset(
            (rows for _, rows in examples.groupby("symbol", sort=True)),
            Path(out_dir),
            name=name or f"{cls}_{tf}",
            config_hash=dataset_config_hash(content, feed),
            dataset_format=ds.format,
        )
    return examples
