"""What every part of the configuration shares: the error type, name checks, literals, the strict base model."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    SecretStr,
)

from data_puller_dagster import plugins, timeframes
from data_puller_dagster.symbols import check_name

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



def _installed_type(group: str, name: str) -> str:
    check_name(name, f"{plugins._KIND_WORD[group]} type")
    if not plugins.is_installed(group, name):
        raise ValueError(
            f"{name!r} is not an installed {plugins._KIND_WORD[group]} type; "
            f"installed: {plugins.describe_installed(group)}"
        )
    return name


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
