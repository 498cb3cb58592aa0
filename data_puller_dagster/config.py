"""The user's pipeline configuration (`data_puller.yaml`) as validated pydantic models.

Why so strict: every name here becomes a partition key, a file path or an SQL identifier, and a typo
in a YAML key that is silently ignored costs a user a week of wrong data. So unknown keys are errors,
and every error names the key path, the bad value and what is allowed, before anything runs.

Environment:
- DATA_PULLER_CONFIG: config path (default ./data_puller.yaml)
- DATA_PULLER_HOME: data directory (default ./data)
- BINANCE_BASE_URL, BINANCE_ARCHIVE_URL, TWELVEDATA_BASE_URL, TWELVEDATA_API_KEY, DATA_PULLER_POSTGRES_URL
Values may use `${VAR}` (required) and `${VAR:-default}` interpolation; `$${` is a literal `${`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
import typing
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from data_puller_dagster import plugins, timeframes
from data_puller_dagster.symbols import check_name, check_symbol, partition_key

DEFAULT_CONFIG_PATH = "data_puller.yaml"
DEFAULT_BINANCE_BASE_URL = "https://api.binance.com"
DEFAULT_BINANCE_ARCHIVE_URL = "https://data.binance.vision"
DEFAULT_TWELVEDATA_BASE_URL = "https://api.twelvedata.com"

AssetClass = Literal["crypto", "forex", "equity", "commodity", "index"]
Layer = Literal["raw", "normalized", "quarantine", "derived", "enriched", "dataset", "live"]
LAYERS: tuple[str, ...] = typing.get_args(Layer)

# Which asset classes each built-in provider serves (a plug-in source declares its own `asset_classes`).
SOURCE_ASSET_CLASSES: dict[str, tuple[str, ...]] = {
    "binance": ("crypto",),
    "twelvedata": ("forex", "equity", "commodity", "index"),
}
# Decimal places kept for prices in datasets when a feed does not say (instrument precision).
DEFAULT_PRICE_DECIMALS: dict[str, int] = {"crypto": 8, "forex": 5, "equity": 4, "commodity": 4, "index": 4}


class ConfigError(Exception):
    """The configuration is invalid. The message lists every problem as `path: problem`."""

    def __init__(self, problems: list[str], source: str = "configuration"):
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid {source} ({len(problems)} problem(s)):\n{lines}")


def _timeframe(v: str) -> str:
    return timeframes.check_timeframe(v)


TF = Annotated[str, AfterValidator(_timeframe)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------------------------- sources
class BinanceSourceConfig(_Model):
    """Binance spot REST and the data.binance.vision archive."""

    base_url: str = Field(default_factory=lambda: os.environ.get("BINANCE_BASE_URL") or DEFAULT_BINANCE_BASE_URL)
    archive_url: str = Field(
        default_factory=lambda: os.environ.get("BINANCE_ARCHIVE_URL") or DEFAULT_BINANCE_ARCHIVE_URL
    )
    use_archive: bool = Field(True, description="Use the public archive for days it has published.")
    weight_budget_per_minute: int = Field(6000, ge=10, description="IP request-weight budget (6000 today).")
    weight_safety_fraction: float = Field(0.8, gt=0, le=1, description="Slow down above this share of it.")
    shared_budget: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db: one weight budget and ban state for every process and "
        "worker of the deployment (Binance counts per IP); default: each process counts alone.",
    )
    budget_window_seconds: float = Field(
        60.0, ge=1, le=60, description="Window the weight budget is counted over (Binance: 60); shorter only for stand-ins."
    )
    max_concurrency: int = Field(8, ge=1, le=64, description="Pages fetched at once.")
    timeout_seconds: float = Field(30.0, gt=0, description="Read timeout of one request (seconds).")
    connect_timeout_seconds: float = Field(5.0, gt=0, description="TCP connect timeout of one request.")
    max_retries: int = Field(5, ge=0, le=20)
    max_retry_seconds: float = Field(
        120.0, gt=0, description="Give up retrying one request (retryable) after this much time."
    )
    # The live half (`data-puller stream`, data_puller_dagster/sources/binance_ws.py): kline websockets.
    ws_url: str = Field(
        default_factory=lambda: os.environ.get("BINANCE_WS_URL") or "wss://stream.binance.com:9443",
        description="Websocket base (BINANCE_WS_URL); wss://data-stream.binance.vision is market data only.",
    )
    ws_streams_per_connection: int = Field(1024, ge=1, le=1024, description="Streams per connection (Binance: 1024).")
    ws_watchdog_seconds: float = Field(30.0, gt=0, description="No message for this long: the connection is dead.")
    ws_max_connection_seconds: float = Field(
        23.5 * 3600, gt=0, le=86400, description="Reconnect before Binance drops a connection at 24 h."
    )
    ws_reconnect_base_seconds: float = Field(1.0, gt=0, description="First reconnect delay (doubles, with jitter).")
    ws_reconnect_max_seconds: float = Field(60.0, gt=0, description="Longest reconnect delay.")
    ws_connect_attempts_per_5min: int = Field(
        300, ge=1, le=300, description="Connection attempts per 5 minutes (Binance: 300 per IP)."
    )
    ws_open_timeout_seconds: float = Field(10.0, gt=0, description="Websocket handshake timeout.")

    @field_validator("base_url", "archive_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    @field_validator("shared_budget", mode="before")
    @classmethod
    def _shared_budget(cls, v: Any) -> Any:
        """Empty means off; only Redis is a shared-budget backend. The message never shows the URL."""
        text = v.get_secret_value() if isinstance(v, SecretStr) else v
        if text in ("", None):
            return None
        if not isinstance(text, str) or not re.match(r"^rediss?://[^\s/]+(/\d{1,2})?/?$", text):
            raise ValueError("is not a Redis URL; use redis://[:password@]host:port/db (or rediss:// for TLS)")
        return text

    @field_validator("ws_url")
    @classmethod
    def _ws_url(cls, v: str) -> str:
        if not re.match(r"^wss?://[^\s/?#]+/?$", v):
            raise ValueError(f"{v!r} is not a websocket base URL; use wss://host[:port] (no path)")
        return v.rstrip("/")


class TwelveDataSourceConfig(_Model):
    """Twelve Data REST, for forex, US equities, commodities and indices."""

    base_url: str = Field(
        default_factory=lambda: os.environ.get("TWELVEDATA_BASE_URL") or DEFAULT_TWELVEDATA_BASE_URL
    )
    api_key: SecretStr | None = Field(
        default_factory=lambda: SecretStr(os.environ["TWELVEDATA_API_KEY"])
        if os.environ.get("TWELVEDATA_API_KEY")
        else None
    )
    credits_per_minute: int = Field(8, ge=1, description="8 on the free plan; raise for paid plans.")
    shared_budget: SecretStr | None = Field(
        None,
        description="redis://[:password@]host:port/db: one credit budget for every process and worker using this "
        "API key (Twelve Data counts per key); default: each process counts alone.",
    )
    max_concurrency: int = Field(4, ge=1, le=64)
    outputsize: int = Field(5000, ge=1, le=5000)
    live_poll_delay_seconds: float = Field(
        5.0, ge=0, le=3600, description="`data-puller stream`: poll /time_series this long after each candle close."
    )
    timeout_seconds: float = Field(30.0, gt=0, description="Read timeout of one request (seconds).")
    connect_timeout_seconds: float = Field(5.0, gt=0, description="TCP connect timeout of one request.")
    max_retries: int = Field(5, ge=0, le=20)
    max_retry_seconds: float = Field(
        120.0, gt=0, description="Give up retrying one request (retryable) after this much time."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)

    _shared_budget = field_validator("shared_budget", mode="before")(
        BinanceSourceConfig._shared_budget.__func__  # type: ignore[attr-defined]
    )

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("api_key")
    @classmethod
    def _plausible_key(cls, v: SecretStr | None) -> SecretStr | None:
        # Messages never include the key: config errors are printed and logged.
        return _check_api_key(v)


class SourcesConfig(_Model):
    """Options per source type. Plug-in sources take theirs under their own name (`sources.<type>`),
    validated by the type's `Options` model once it is imported (io/registry.py)."""

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)
    # Defaults are validated from {} (not built by a factory) so errors in values taken from the
    # environment (TWELVEDATA_API_KEY, ...) carry their full key path.
    binance: BinanceSourceConfig = Field(default_factory=dict)
    twelvedata: TwelveDataSourceConfig = Field(default_factory=dict)

    def options_for(self, source: str) -> Any:
        """The built-in source's validated model, or a plug-in source's raw options mapping."""
        if source in type(self).model_fields:
            return getattr(self, source)
        extra = (self.model_extra or {}).get(source, {})
        return extra if extra is not None else {}


def _check_url(v: str) -> str:
    if not re.match(r"^(https?|file)://[^\s]+$", v):
        raise ValueError(f"{v!r} is not a URL; use http(s)://host[:port][/path] or file:///path")
    return v.rstrip("/")


MIN_API_KEY_LENGTH = 8  # Twelve Data keys are 32 characters; "demo" is their public demo key


def _check_api_key(v: SecretStr | None) -> SecretStr | None:
    """Catch the usual paste mistakes (truncated key, stray spaces) before a run fails on them."""
    if v is None:
        return v
    key = v.get_secret_value()
    if key != key.strip() or any(c.isspace() for c in key):
        raise ValueError("contains whitespace; paste the key alone, without spaces or newlines")
    if len(key) < MIN_API_KEY_LENGTH and key != "demo":
        raise ValueError(
            f"is too short (under {MIN_API_KEY_LENGTH} characters); paste the whole key from your "
            "Twelve Data dashboard"
        )
    return v


def missing_credentials(cfg: AppConfig, feed: FeedConfig) -> str | None:
    """Why a feed's source cannot authenticate (None when it can), e.g. 'TWELVEDATA_API_KEY not set'.

    Twelve Data over http(s) needs a key; a file:// base_url (recorded bodies, the demo) does not,
    and Binance's public market data needs none. Sensors and schedules skip such feeds instead of
    launching runs that can only fail on authentication."""
    td = cfg.sources.twelvedata
    if feed.source == "twelvedata" and td.api_key is None and not td.base_url.startswith("file://"):
        return "TWELVEDATA_API_KEY not set"
    return None


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


# -------------------------------------------------------------------------------------------- routes
class RowFilter(_Model):
    """A declarative row condition (never evaluated as code)."""

    column: str
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "notnull", "isnull"]
    value: Any = None

    @field_validator("column")
    @classmethod
    def _col(cls, v: str) -> str:
        return check_name(v, "column name")

    @model_validator(mode="after")
    def _value(self) -> RowFilter:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value, got {self.value!r}")
        if self.op not in ("notnull", "isnull", "in", "not_in") and self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        return self


class RouteMatch(_Model):
    """Which asset outputs a route takes. Omitted fields match everything."""

    layer: list[Layer] | None = None
    feed: list[str] | None = None
    asset_class: list[AssetClass] | None = None
    timeframe: list[TF] | None = None
    symbol: list[str] | None = None
    realtime: bool | None = Field(
        None, description="true: only live (streamed) tables (layer live); false: only batch tables."
    )

    @field_validator("symbol")
    @classmethod
    def _symbols(cls, v: list[str] | None) -> list[str] | None:
        for s in v or []:
            check_symbol(s)
        return v


class TransformSpec(BaseModel):
    """A route's named transform (registered in `data_puller_dagster.transforms`) and its options.

    Written `transform: backtest_ohlcv` or `transform: {type: columns, keep: [open, close]}`; the
    options are validated by the transform type's own model (never code in YAML)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        return {"type": v} if isinstance(v, str) else v

    @field_validator("type")
    @classmethod
    def _installed(cls, v: str) -> str:
        return _installed_type(plugins.TRANSFORM_GROUP, v)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RouteConfig(_Model):
    id: str
    match: RouteMatch = Field(default_factory=RouteMatch)
    destinations: list[str] = Field(
        min_length=1, description="Destination instances (names under destinations:) or type names."
    )
    filter: list[RowFilter] = Field(default_factory=list)
    transform: TransformSpec | None = Field(None, description="A registered transform applied before writing.")
    batch_size: int | None = Field(None, ge=1, description="Rows per message batch for stream destinations.")
    in_progress: bool = Field(
        False,
        description="Live tables only: also send in-progress (is_final false) candle updates to this route's "
        "stream destinations. Stores never get them.",
    )
    enabled: bool = True
    on_error: Literal["fail", "warn"] = "fail"

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_name(v, "route id")

    @field_validator("destinations")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [check_name(d, "destination name") for d in v]


def _default_routes() -> list[RouteConfig]:
    return [RouteConfig(id="default", destinations=["parquet", "duckdb"])]


def _installed_type(group: str, name: str) -> str:
    check_name(name, f"{plugins._KIND_WORD[group]} type")
    if not plugins.is_installed(group, name):
        raise ValueError(
            f"{name!r} is not an installed {plugins._KIND_WORD[group]} type; "
            f"installed: {plugins.describe_installed(group)}"
        )
    return name


class DestinationSpec(BaseModel):
    """One named destination instance: its `type` and that type's options.

    The options are validated by the type's own pydantic model (see io/registry.py) once the type's
    module is imported, with the same `path: value: what is allowed` errors as the rest of the file."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    @field_validator("type")
    @classmethod
    def _installed(cls, v: str) -> str:
        return _installed_type(plugins.DESTINATION_GROUP, v)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# ------------------------------------------------------------------------------------------- storage
class StorageConfig(_Model):
    """Where each destination keeps its data. Relative paths are relative to the working directory."""

    data_dir: Path = Field(default_factory=lambda: Path(os.environ.get("DATA_PULLER_HOME") or "data"))
    parquet_root: str | None = Field(None, description="Local path or fsspec URL; default <data_dir>/parquet")
    duckdb_path: Path | None = Field(None, description="Default <data_dir>/warehouse.duckdb")
    postgres_url: SecretStr | None = Field(
        default_factory=lambda: SecretStr(os.environ["DATA_PULLER_POSTGRES_URL"])
        if os.environ.get("DATA_PULLER_POSTGRES_URL")
        else None
    )
    postgres_schema_prefix: str = Field("", description="Prefix for Postgres schema names (one per feed).")
    csv_dir: Path | None = Field(None, description="Default <data_dir>/csv")
    jsonl_dir: Path | None = Field(None, description="Default <data_dir>/jsonl")
    datasets_dir: Path | None = Field(None, description="Default <data_dir>/datasets")
    primary: str = Field(
        "parquet", description="The store inputs are read from: a destination instance or store type name."
    )

    @field_validator("postgres_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("postgres_schema_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return check_name(v, "postgres_schema_prefix") if v else v

    def _under(self, p: Path | None, default: str) -> Path:
        return (p if p is not None else self.data_dir / default).expanduser().absolute()

    @property
    def parquet_location(self) -> str:
        if self.parquet_root and "://" in self.parquet_root:
            return self.parquet_root.rstrip("/")
        return str(self._under(Path(self.parquet_root) if self.parquet_root else None, "parquet"))

    @property
    def duckdb_file(self) -> Path:
        return self._under(self.duckdb_path, "warehouse.duckdb")

    @property
    def csv_location(self) -> Path:
        return self._under(self.csv_dir, "csv")

    @property
    def jsonl_location(self) -> Path:
        return self._under(self.jsonl_dir, "jsonl")

    @property
    def datasets_location(self) -> Path:
        return self._under(self.datasets_dir, "datasets")


# ------------------------------------------------------------------------------------ runs, automation
class RunsConfig(_Model):
    max_partitions_per_run: int = Field(31, ge=1, le=400, description="Date partitions per backfill run.")
    backfill_policy: Literal["multi_run", "single_run"] = Field(
        "multi_run",
        description="multi_run: backfills split into runs of max_partitions_per_run days (bounded memory). "
        "single_run: one run per range, needed by `dagster asset materialize --partition-range`.",
    )
    retry_max: int = Field(3, ge=0, le=10)
    retry_delay_seconds: float = Field(30, ge=0)
    executor: Literal["in_process", "multiprocess", "celery"] = Field(
        "in_process",
        description="in_process: a run's steps run one after another in the run's own process (no process "
        "start-up and re-import per step). multiprocess: one process per step (Dagster's default; "
        "independent steps such as several derived timeframes run in parallel). celery: each step is a task "
        "on dagster-celery workers (deploy/dagster.celery.yaml; the workers may run on other hosts).",
    )
    celery_broker: SecretStr = Field(
        default_factory=lambda: SecretStr(
            os.environ.get("DATA_PULLER_CELERY_BROKER") or "amqp://guest:guest@127.0.0.1:5672//"
        ),
        description="executor celery: the broker the workers listen on (DATA_PULLER_CELERY_BROKER).",
    )
    celery_backend: SecretStr = Field(
        default_factory=lambda: SecretStr("rpc://"),
        description="executor celery: where step results come back (rpc:// = replies through the broker).",
    )


class ValidationConfig(_Model):
    """When a partition's data is too broken to build on."""

    max_quarantined_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Above this share of quarantined rows the blocking schema check fails: a response "
        "that is mostly broken (wrong interval, wrong clock, corrupt page) is not trusted downstream.",
    )


class ScheduleConfig(_Model):
    enabled: bool = True
    minutes_after_midnight: int = Field(15, ge=0, lt=24 * 60, description="UTC offset of the daily run.")
    run_per: Literal["feed", "symbol"] = Field(
        "feed",
        description="feed: one run per feed for yesterday, all its symbols (one process, one fetch of all "
        "symbols, one batch of events). symbol: one run per symbol (a symbol's failure leaves the others' "
        "runs alone; the gap sensor refetches failed days either way).",
    )


class GapSensorConfig(_Model):
    enabled: bool = True
    interval_seconds: int = Field(300, ge=30)
    max_runs_in_flight: int = Field(4, ge=1)
    settle_hours: int = Field(36, ge=0, description="Age before a day's data is treated as final.")
    max_attempts: int = Field(3, ge=1, description="Refetches of an incomplete day before it is confirmed.")
    failure_backoff_seconds: float = Field(
        300,
        ge=0,
        description=(
            "Wait after a symbol's failed sensor run before its days are requested again; doubles per "
            "consecutive failure (capped at 6 h)."
        ),
    )


class LiveSensorConfig(_Model):
    """`<feed>__live_progress`: records what `data-puller stream` wrote to the live tables."""

    enabled: bool = Field(False, description="Start the live progress sensors RUNNING (only useful with a stream).")
    interval_seconds: int = Field(60, ge=10, description="How often the live tables of the day are read back.")


class AutomationConfig(_Model):
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    gap_sensor: GapSensorConfig = Field(default_factory=GapSensorConfig)
    live_sensor: LiveSensorConfig = Field(default_factory=LiveSensorConfig)


class StreamConfig(_Model):
    """`data-puller stream`: live candles in micro-batches through the same normalize, validation and routes."""

    max_batch_rows: int = Field(20000, ge=1, description="Most events normalized and routed as one micro-batch.")
    store_flush_seconds: float = Field(
        10.0, gt=0, description="Stores get the current day's closed live candles at most this often."
    )
    log_interval_seconds: float = Field(60.0, gt=0, description="One progress line per connection this often.")
    initial_backfill: Literal["day", "none"] = Field(
        "day", description="At start, fetch the day's closed candles over REST (day) or start with the stream (none)."
    )
    backfill_give_up_seconds: float = Field(
        300.0, gt=0, description="Stop retrying a REST gap fill after this long (the batch pipeline fills it)."
    )
    shutdown_timeout_seconds: float = Field(5.0, gt=0, description="SIGTERM/SIGINT: time to flush and exit.")


FeedConfig.model_rebuild()


# ---------------------------------------------------------------------------------------------- root
class AppConfig(_Model):
    """Root of data_puller.yaml."""

    version: Literal[1] = 1
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sources: SourcesConfig = Field(default_factory=dict)  # validated: full key paths
    feeds: list[FeedConfig] = Field(min_length=1)
    indicators: IndicatorsConfig = Field(default_factory=IndicatorsConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    destinations: dict[str, DestinationSpec] = Field(
        default_factory=dict, description="Named destination instances with options; routes refer to them."
    )
    routes: list[RouteConfig] = Field(default_factory=_default_routes)
    runs: RunsConfig = Field(default_factory=RunsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)

    @model_validator(mode="after")
    def _cross_refs(self) -> AppConfig:
        names = [f.name for f in self.feeds]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feed names must be unique; duplicated: {', '.join(dupes)}")
        ids = [r.id for r in self.routes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"route ids must be unique; duplicated: {', '.join(dupes)}")
        for name in self.destinations:
            check_name(name, "destination name")
        for i, r in enumerate(self.routes):
            for f in r.match.feed or []:
                if f not in names:
                    raise ValueError(
                        f"routes[{i}].match.feed: {f!r} is not a feed; use one of {', '.join(names)}"
                    )
            for j, d in enumerate(r.destinations):
                self._check_destination_name(d, f"routes[{i}].destinations[{j}]")
            if r.enabled and self._postgres_without_url(r.destinations):
                raise ValueError(
                    f"routes[{i}] ({r.id}) sends to postgres but storage.postgres_url is not set; "
                    "set DATA_PULLER_POSTGRES_URL or storage.postgres_url (or url: on the destination)"
                )
        self._check_destination_name(self.storage.primary, "storage.primary")
        if self._postgres_without_url([self.storage.primary]):
            raise ValueError("storage.primary is 'postgres' but storage.postgres_url is not set")
        return self

    def _check_destination_name(self, name: str, where: str) -> None:
        if name in self.destinations or plugins.is_installed(plugins.DESTINATION_GROUP, name):
            return
        declared = ", ".join(self.destinations) or "none"
        raise ValueError(
            f"{where}: {name!r} is neither a destination declared under destinations: ({declared}) nor an "
            f"installed destination type ({plugins.describe_installed(plugins.DESTINATION_GROUP)})"
        )

    def _postgres_without_url(self, dests: list[str]) -> bool:
        return self.storage.postgres_url is None and any(
            self.destination_type(d) == "postgres"
            and not (d in self.destinations and self.destinations[d].options.get("url"))
            for d in dests
        )

    def destination_type(self, name: str) -> str:
        """The type of a destination instance (a name not declared under destinations: is its type)."""
        spec = self.destinations.get(name)
        return spec.type if spec is not None else name

    def destination_spec(self, name: str) -> DestinationSpec:
        return self.destinations.get(name) or DestinationSpec(type=name)

    def dataset_for(self, feed: FeedConfig) -> DatasetConfig:
        """Dataset options as they apply to one feed (its own split dates, if it has them)."""
        if feed.dataset_split is None:
            return self.dataset
        return self.dataset.model_copy(update={"split": feed.dataset_split})

    def feed(self, name: str) -> FeedConfig:
        for f in self.feeds:
            if f.name == name:
                return f
        raise KeyError(f"no feed named {name!r}; feeds: {', '.join(f.name for f in self.feeds)}")

    def fingerprint(self) -> str:
        """Stable hash of the effective config (secrets excluded) for manifests and code versions."""
        data = self.model_dump(mode="json", exclude={"storage": {"postgres_url"}, "sources": True})
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- interpolation
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(node: Any, env: typing.Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(node, dict):
        return {k: interpolate(v, env, _join(path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        name, default = m.group(1), m.group(2)
        value = env.get(name)
        if value not in (None, ""):
            return value
        if default is not None:
            return default
        raise ConfigError(
            [f"{path or '<root>'}: environment variable {name} is not set; export it or write ${{{name}:-default}}"]
        )

    return _VAR.sub(repl, node)


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# ----------------------------------------------------------------------------------- error rendering
def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-", "tagged-union")):
            continue
        else:
            out = _join(out, part)
    return out or "<root>"


def _unwrap(tp: Any) -> list[Any]:
    """Candidate inner types of an annotation (through Optional, list, dict, Annotated)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin in (list, tuple, set):
        return [t for a in typing.get_args(tp) for t in _unwrap(a)]
    if origin is dict:
        return _unwrap(typing.get_args(tp)[1])
    return [tp]


def _model_at(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root or AppConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        inner = [t for t in _unwrap(model.model_fields[part].annotation) if isinstance(t, type)]
        models = [t for t in inner if issubclass(t, BaseModel)]
        model = models[0] if models else None
    return model


def _is_secret(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> bool:
    """Is this location (or a key above it) a SecretStr field? Its value must never be printed."""
    for i, part in enumerate(loc):
        model = _model_at(loc[:i], root)
        if model is not None and isinstance(part, str) and part in model.model_fields:
            if SecretStr in _unwrap(model.model_fields[part].annotation):
                return True
    return False


_KINDS = {bool: "a boolean", int: "a number", float: "a number", dict: "a mapping", list: "a list"}


def _secret_problem(path: str, e: Any, msg: str) -> str:
    """`path: problem` for a secret field: the kind of value, never the value itself."""
    if e["type"] == "value_error":  # our own validators, which never echo the key
        return f"{path}: (secret, not shown) {msg}"
    kind = _KINDS.get(type(e.get("input")), f"a {type(e.get('input')).__name__}")
    return (
        f"{path}: (secret, not shown) {kind} is invalid: a secret must be a string; quote it in YAML, "
        "or better, take it from the environment with ${VAR}"
    )


def render_errors(
    err: ValidationError, root: type[BaseModel] | None = None, prefix: tuple[Any, ...] = ()
) -> list[str]:
    """`path: problem` lines for a validation error of AppConfig, or of `root` (a plug-in's options
    model) found at `prefix` in the file (e.g. ("destinations", "live"))."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = _loc_path(prefix + loc)
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] not in ("extra_forbidden", "missing") and _is_secret(loc, root):
            problems.append(_secret_problem(path, e, msg))
        elif e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1], root)
            allowed = f"; allowed keys here: {', '.join(parent.model_fields)}" if parent else ""
            problems.append(f"{path}: unknown key (check its spelling){allowed}")
        elif e["type"] == "missing":
            problems.append(f"{path}: required key is missing")
        elif e["type"] == "value_error":
            problems.append(msg if path == "<root>" else f"{path}: {msg}")
        elif e["type"].startswith("date_"):
            problems.append(f"{path}: {e.get('input')!r} is invalid: {msg}; write a real calendar day as YYYY-MM-DD")
        else:
            problems.append(f"{path}: {e.get('input')!r} is invalid: {msg}")
    return problems


# -------------------------------------------------------------------------------------------- loading
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose impossible dates (2024-02-30) stay strings, so validation reports them with
    their key path like any other bad value, instead of PyYAML raising a bare ValueError."""


def _timestamp_or_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
    try:
        return loader.construct_yaml_timestamp(node)
    except ValueError:
        return loader.construct_scalar(node)


_ConfigLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def config_path() -> Path:
    return Path(os.environ.get("DATA_PULLER_CONFIG") or DEFAULT_CONFIG_PATH)


def parse_config(data: Any, source: str = "configuration", env: typing.Mapping[str, str] | None = None) -> AppConfig:
    """Validate an already-parsed YAML mapping. Raises ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of keys, got {type(data).__name__}"], source)
    try:
        data = interpolate(data, env)
    except ConfigError as e:
        raise ConfigError(e.problems, source) from None
    try:
        cfg = AppConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(render_errors(e), source) from None
    # Plug-in options are validated by each type's own model, which needs its module imported.
    from data_puller_dagster.io.registry import plugin_problems
    from data_puller_dagster.transform.llm_features import feature_problems

    problems = plugin_problems(cfg) + feature_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_config(path: str | Path | None = None) -> AppConfig:
    """Read and validate the config file (DATA_PULLER_CONFIG or ./data_puller.yaml)."""
    p = Path(path) if path is not None else config_path()
    if not p.exists():
        raise ConfigError(
            [f"{p}: file not found; create it (see README) or point DATA_PULLER_CONFIG at your config"],
            str(p),
        )
    try:
        data = yaml.load(p.read_text(), Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(p)) from None
    return parse_config(data, str(p))
