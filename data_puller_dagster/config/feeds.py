"""`feeds:`: one feed per asset class: where candles come from, which symbols, from when."""

from __future__ import annotations

from datetime import UTC, date, datetime

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from data_puller_dagster import plugins, timeframes
from data_puller_dagster.config.base import (
    DEFAULT_PRICE_DECIMALS,
    SOURCE_ASSET_CLASSES,
    TF,
    AssetClass,
    _installed_type,
    _Model,
)
from data_puller_dagster.config.features import DatasetSplitConfig
from data_puller_dagster.symbols import check_name, check_symbol, partition_key


# ----------------------------------------------------------------------------------------------- feeds
class FeedConfig(_Model):
    """One feed per asset class: where candles come from, which symbols, from when."""

    name: str
    source: str = Field(description="A source type: binance, twelvedata or an installed plug-in source.")
    asset_class: AssetClass
    timeframe: TF = Field(description="Base timeframe pulled from the provider.")
    derived_timeframes: list[TF] = Field(default_factory=list, description="Built by resampling the base.")
    symbols: list[str] = Field(min_length=1)
    start_date: date = Field(description="First UTC day of history (partition start).")
    end_date: date | None = Field(None, description="Last UTC day; open-ended when omitted.")
    enrich_timeframes: list[TF] | None = Field(
        None, description="Timeframes that get indicators; default: base + derived."
    )
    dataset_timeframe: TF | None = Field(None, description="Timeframe of LLM examples; default: base.")
    price_decimals: int | None = Field(None, ge=0, le=12, description="Instrument precision for datasets.")
    dataset_split: DatasetSplitConfig | None = Field(
        None, description="Time split for this feed's examples; default: dataset.split."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "feed name")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _installed_type(plugins.SOURCE_GROUP, v)

    @field_validator("start_date")
    @classmethod
    def _not_future(cls, v: date) -> date:
        today = datetime.now(UTC).date()
        if v > today:
            raise ValueError(f"{v} is in the future; use a day up to today ({today}, UTC)")
        return v

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, v: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for s in v:
            check_symbol(s)
            key = partition_key(s)
            if key in seen:
                raise ValueError(f"symbols {seen[key]!r} and {s!r} share the partition key {key!r}; keep one")
            seen[key] = s
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FeedConfig:
        allowed = SOURCE_ASSET_CLASSES.get(self.source)  # plug-in sources: checked once imported
        if allowed is not None and self.asset_class not in allowed:
            raise ValueError(
                f"asset_class {self.asset_class!r} is not served by source {self.source!r}; "
                f"use one of {', '.join(allowed)}"
            )
        for tf in self.derived_timeframes:
            if not timeframes.is_finer_or_equal(self.timeframe, tf) or tf == self.timeframe:
                raise ValueError(
                    f"derived timeframe {tf!r} cannot be built from base {self.timeframe!r}; "
                    "use a larger whole multiple of the base timeframe"
                )
            if timeframes.seconds(tf) > 86400:  # pragma: no cover - no such timeframe yet
                raise ValueError(f"derived timeframe {tf!r} is longer than a day partition")
        if len(set(self.derived_timeframes)) != len(self.derived_timeframes):
            raise ValueError(f"derived_timeframes has duplicates: {self.derived_timeframes}")
        for tf in self.enrich_timeframes or []:
            if tf not in self.all_timeframes:
                raise ValueError(
                    f"enrich timeframe {tf!r} is not produced by this feed; use one of "
                    f"{', '.join(self.all_timeframes)}"
                )
        if self.dataset_timeframe and self.dataset_timeframe not in self.enriched_timeframes:
            raise ValueError(
                f"dataset_timeframe {self.dataset_timeframe!r} is not enriched; use one of "
                f"{', '.join(self.enriched_timeframes)}"
            )
        if self.end_date and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date} is before start_date {self.start_date}")
        return self

    @property
    def all_timeframes(self) -> list[str]:
        return [self.timeframe, *self.derived_timeframes]

    @property
    def enriched_timeframes(self) -> list[str]:
        return list(self.enrich_timeframes) if self.enrich_timeframes is not None else self.all_timeframes

    @property
    def llm_timeframe(self) -> str:
        return self.dataset_timeframe or self.timeframe

    @property
    def decimals(self) -> int:
        return self.price_decimals if self.price_decimals is not None else DEFAULT_PRICE_DECIMALS[self.asset_class]

    @property
    def symbol_keys(self) -> dict[str, str]:
        """Partition key -> display symbol."""
        return {partition_key(s): s for s in self.symbols}
