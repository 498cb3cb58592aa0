"""The user's pipeline configuration (`data_puller.yaml`) as validated pydantic models.

Why so strict: every name here becomes a partition key, a file path or an SQL identifier, and a typo
in a YAML key that is silently ignored costs a user a week of wrong data. So unknown keys are errors,
and every error names the key path, the bad value and what is allowed, before anything runs.

Environment:
- DATA_PULLER_CONFIG: config path (default ./data_puller.yaml)
- DATA_PULLER_HOME: data directory (default ./data)
- BINANCE_BASE_URL, BINANCE_ARCHIVE_URL, TWELVEDATA_BASE_URL, TWELVEDATA_API_KEY, DATA_PULLER_POSTGRES_URL
Values may use `${VAR}` (required) and `${VAR:-default}` interpolation; `$${` is a literal `${`.

One module per section of the file (sources, feeds, features, routes, storage, runs), the root model
(app), error rendering (errors) and reading the file (loading); everything is importable from
`data_puller_dagster.config` as before the split.
"""

from __future__ import annotations

from data_puller_dagster.config.app import (  # noqa: F401
    AppConfig,
    missing_credentials,
)
from data_puller_dagster.config.base import (  # noqa: F401
    DEFAULT_BINANCE_ARCHIVE_URL,
    DEFAULT_BINANCE_BASE_URL,
    DEFAULT_CONFIG_PATH,
    DEFAULT_PRICE_DECIMALS,
    DEFAULT_TWELVEDATA_BASE_URL,
    LAYERS,
    MIN_API_KEY_LENGTH,
    SOURCE_ASSET_CLASSES,
    TF,
    AssetClass,
    ConfigError,
    Layer,
    _check_api_key,
    _check_url,
    _installed_type,
    _join,
    _Model,
    _timeframe,
)
from data_puller_dagster.config.errors import (  # noqa: F401
    _KINDS,
    _is_secret,
    _loc_path,
    _model_at,
    _secret_problem,
    _unwrap,
    render_errors,
)
from data_puller_dagster.config.features import (  # noqa: F401
    DatasetConfig,
    DatasetSplitConfig,
    IndicatorsConfig,
)
from data_puller_dagster.config.feeds import (  # noqa: F401
    FeedConfig,
)
from data_puller_dagster.config.loading import (  # noqa: F401
    _VAR,
    _ConfigLoader,
    _timestamp_or_text,
    config_path,
    interpolate,
    load_config,
    parse_config,
)
from data_puller_dagster.config.routes import (  # noqa: F401
    DestinationSpec,
    RouteConfig,
    RouteMatch,
    RowFilter,
    TransformSpec,
    _default_routes,
)
from data_puller_dagster.config.runs import (  # noqa: F401
    AutomationConfig,
    GapSensorConfig,
    LiveSensorConfig,
    RunsConfig,
    ScheduleConfig,
    StreamConfig,
    ValidationConfig,
)
from data_puller_dagster.config.sources import (  # noqa: F401
    BinanceSourceConfig,
    SourcesConfig,
    TwelveDataSourceConfig,
)
from data_puller_dagster.config.storage import (  # noqa: F401
    StorageConfig,
)

__all__ = [
    "AppConfig",
    "AssetClass",
    "AutomationConfig",
    "BinanceSourceConfig",
    "ConfigError",
    "DEFAULT_BINANCE_ARCHIVE_URL",
    "DEFAULT_BINANCE_BASE_URL",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_PRICE_DECIMALS",
    "DEFAULT_TWELVEDATA_BASE_URL",
    "DatasetConfig",
    "DatasetSplitConfig",
    "DestinationSpec",
    "FeedConfig",
    "GapSensorConfig",
    "IndicatorsConfig",
    "LAYERS",
    "Layer",
    "LiveSensorConfig",
    "MIN_API_KEY_LENGTH",
    "RouteConfig",
    "RouteMatch",
    "RowFilter",
    "RunsConfig",
    "SOURCE_ASSET_CLASSES",
    "ScheduleConfig",
    "SourcesConfig",
    "StorageConfig",
    "StreamConfig",
    "TF",
    "TransformSpec",
    "TwelveDataSourceConfig",
    "ValidationConfig",
    "config_path",
    "interpolate",
    "load_config",
    "missing_credentials",
    "parse_config",
    "render_errors",
]
