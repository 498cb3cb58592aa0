"""Keyword options of an adapter built directly (`BinanceAdapter(base_url=...)`), read by its config model.

Why through the model: a notebook's `BinanceAdapter(weight_budget_per_minute=1200)` must get the same
defaults (environment variables for base URLs included) and the same checks, with the same
`key: value: what is allowed` messages, as `sources.binance` in data_puller.yaml.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from data_puller_dagster.config import ConfigError, render_errors

M = TypeVar("M", bound=BaseModel)


def split_options(model: type[M], options: dict[str, Any], what: str) -> tuple[M, dict[str, Any]]:
    """(the model validated from the options it has fields for, the other options unchanged).

    Raises ConfigError naming `what` (e.g. "BinanceAdapter options") and every bad option.
    """
    known = {k: v for k, v in options.items() if k in model.model_fields}
    rest = {k: v for k, v in options.items() if k not in model.model_fields}
    try:
        return model.model_validate(known), rest
    except ValidationError as e:
        raise ConfigError(render_errors(e, model), what) from None
