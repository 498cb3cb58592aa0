"""Provider adapters: (symbol, timeframe, UTC range) -> raw DataFrame exactly as the provider sent it."""

from data_puller_dagster.sources.base import (
    BINANCE_RAW_DTYPES,
    RAW_DTYPES,
    TWELVEDATA_RAW_DTYPES,
    SourceAdapter,
    build_adapter,
    raw_empty,
    raw_layout,
    source_class,
)
from data_puller_dagster.sources.errors import (
    AuthenticationError,
    ChecksumMismatchError,
    InvalidRequestError,
    IpBannedError,
    LocalDataMissingError,
    MalformedResponseError,
    RateLimitedError,
    SourceError,
    TransientSourceError,
    UnreachableError,
)

__all__ = [
    "BINANCE_RAW_DTYPES",
    "RAW_DTYPES",
    "TWELVEDATA_RAW_DTYPES",
    "AuthenticationError",
    "ChecksumMismatchError",
    "InvalidRequestError",
    "IpBannedError",
    "LocalDataMissingError",
    "MalformedResponseError",
    "RateLimitedError",
    "SourceError",
    "SourceAdapter",
    "TransientSourceError",
    "UnreachableError",
    "build_adapter",
    "raw_empty",
    "raw_layout",
    "source_class",
]
