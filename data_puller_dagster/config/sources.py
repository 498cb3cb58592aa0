"""`sources:`: the providers' options (Binance REST/archive/websockets, Twelve Data; plug-in sources' own)."""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
)

from data_puller_dagster.config.base import (
    DEFAULT_BINANCE_ARCHIVE_URL,
    DEFAULT_BINANCE_BASE_URL,
    DEFAULT_TWELVEDATA_BASE_URL,
    _check_api_key,
    _check_url,
    _Model,
)


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
