"""`indicators:` and `dataset:`: the enriched layer's indicators and patterns, the LLM dataset's options."""

from __future__ import annotations

import re
import typing
from datetime import date
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from data_puller_dagster.config.base import _Model


# ---------------------------------------------------------------------------------------- indicators
class IndicatorsConfig(_Model):
    """Technical indicators computed with `ta`. Set a block to null to turn it off."""

    rsi_window: int | None = Field(14, ge=2)
    macd: tuple[int, int, int] | None = Field((12, 26, 9), description="fast, slow, signal")
    bollinger: tuple[int, float] | None = Field((20, 2.0), description="window, number of std")
    ema_windows: list[int] = Field(default_factory=lambda: [12, 26, 50])
    sma_windows: list[int] = Field(default_factory=lambda: [20, 50])
    atr_window: int | None = Field(14, ge=2)
    obv: bool = True
    stochastic: tuple[int, int] | None = Field((14, 3), description="window, smoothing")
    vwap_window: int | None = Field(14, ge=1)
    warmup_candles: int = Field(
        300, ge=0, description="Earlier candles read before each partition so values do not depend on it."
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="TA-Lib candlestick patterns (CDL<NAME> lower-cased without CDL: engulfing, doji, ...); "
        "each becomes the enriched column cdl_<name>. Default: none.",
    )
    # TA-Lib 0.6+'s 61 `CDL*` functions (talib.get_function_groups()["Pattern Recognition"]; a test keeps
    # this list equal to the installed library's), so the config loads without importing TA-Lib.
    TALIB_PATTERNS: typing.ClassVar[tuple[str, ...]] = tuple(
        "2crows 3blackcrows 3inside 3linestrike 3outside 3starsinsouth 3whitesoldiers abandonedbaby advanceblock "
        "belthold breakaway closingmarubozu concealbabyswall counterattack darkcloudcover doji dojistar "
        "dragonflydoji engulfing eveningdojistar eveningstar gapsidesidewhite gravestonedoji hammer hangingman "
        "harami haramicross highwave hikkake hikkakemod homingpigeon identical3crows inneck invertedhammer "
        "kicking kickingbylength ladderbottom longleggeddoji longline marubozu matchinglow mathold "
        "morningdojistar morningstar onneck piercing rickshawman risefall3methods separatinglines shootingstar "
        "shortline spinningtop stalledpattern sticksandwich takuri tasukigap thrusting tristar unique3river "
        "upsidegap2crows xsidegap3methods".split()
    )

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if name not in cls.TALIB_PATTERNS:
                raise ValueError(
                    f"{name!r} (item {i}) is not a TA-Lib candlestick pattern; use names of "
                    f"talib's CDL* functions without CDL, lower case: {', '.join(cls.TALIB_PATTERNS)}"
                )
        return list(dict.fromkeys(v))

    @field_validator("ema_windows", "sma_windows")
    @classmethod
    def _windows(cls, v: list[int]) -> list[int]:
        bad = [w for w in v if w < 1]
        if bad:
            raise ValueError(f"windows must be >= 1, got {bad}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _macd(self) -> IndicatorsConfig:
        if self.macd and self.macd[0] >= self.macd[1]:
            raise ValueError(f"macd fast window {self.macd[0]} must be below slow window {self.macd[1]}")
        return self


# ------------------------------------------------------------------------------------------- dataset
class DatasetSplitConfig(_Model):
    """Time-based split: examples whose candle is on/after a date belong to the later split."""

    validation_start: date | None = None
    test_start: date | None = None

    @model_validator(mode="after")
    def _order(self) -> DatasetSplitConfig:
        if self.validation_start and self.test_start and self.test_start <= self.validation_start:
            raise ValueError(
                f"test_start {self.test_start} must be after validation_start {self.validation_start}"
            )
        return self


class DatasetConfig(_Model):
    """LLM training dataset (JSONL) options, from the seed design."""

    enabled: bool = True
    format: Literal["seed", "chat"] = "seed"
    context_window: int = Field(100, ge=1, le=5000)
    stride: int = Field(1, ge=1)
    include_features: list[str] | None = Field(
        None,
        description="Feature groups (ohlcv, technical_indicators, volume_profile, price_action_patterns) and/or "
        "columns (close, rsi_14, cdl_engulfing, ...); ohlcv is implied unless an OHLCV name is listed. "
        "Default: ohlcv + technical_indicators.",
    )
    target_column: Literal["close", "open", "high", "low"] = "close"
    min_quality: float = Field(0.9, ge=0, le=1, description="Skip partitions scoring below this.")
    split: DatasetSplitConfig = Field(default_factory=DatasetSplitConfig)
    system_prompt: str = (
        "You are a market analyst. Given recent OHLCV candles and indicators, predict the next close."
    )
    volume_profile_buckets: int = Field(24, ge=2, le=200, description="Price buckets of the volume profile.")
    volume_profile_lookback: int | None = Field(
        None, ge=2, le=5000, description="Candles of the profile, ending with the current one; default: context_window."
    )
    price_encoding: Literal["absolute", "bps"] = Field(
        "absolute", description="bps: prices as basis points (vs the previous close / the candle's own close)."
    )
    context_layout: Literal["rows", "csv"] = Field(
        "rows", description="csv: the context as one CSV text block without per-candle timestamps."
    )
    max_tokens_per_example: int | None = Field(
        None, ge=1, description="Drop (and count) examples whose estimated token count is above this."
    )
    FEATURE_GROUPS: typing.ClassVar[tuple[str, ...]] = (
        "ohlcv", "technical_indicators", "volume_profile", "price_action_patterns",
    )  # fmt: skip
    # Column names the indicators config can produce (its windows are free, so match the name's shape).
    FEATURE_COLUMN: typing.ClassVar[re.Pattern[str]] = re.compile(
        r"(open|high|low|close|volume|macd_hist|macd_\d+_\d+|"
        r"(rsi|macd_signal|bb_(upper|middle|lower|pctb|width)|ema|sma|atr|obv|stoch_k|stoch_d|vwap)_\d+)"
    )

    @field_validator("include_features")
    @classmethod
    def _features(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("[] selects nothing; list feature groups or columns, or omit the key for the default")
        patterns = IndicatorsConfig.TALIB_PATTERNS
        for i, name in enumerate(v):
            ok = name in cls.FEATURE_GROUPS or cls.FEATURE_COLUMN.fullmatch(name)
            if not ok and not (name.startswith("cdl_") and name[4:] in patterns):
                raise ValueError(
                    f"{name!r} (item {i}) is not a feature group or column; use a group ("
                    f"{', '.join(cls.FEATURE_GROUPS)}) or a column: open, high, low, close, volume, an indicator "
                    "column such as rsi_14 or macd_12_26, or cdl_<pattern> for a pattern in indicators.patterns"
                )
        return list(dict.fromkeys(v))
